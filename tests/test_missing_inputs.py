"""Every command given a missing input exits 2 naming it and saying how to get it."""

from __future__ import annotations

import importlib

import pytest

from tests.data_fixtures import face_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return face_shards(tmp_path_factory.mktemp("missing"), 8, 32)


CASES = {
    "generate": (["--ckpt", "{nx}/g.pt", "--seeds", "0-1", "--device", "cpu"], ["{nx}/g.pt", "docs/weights.md"]),
    "convert": (["--src", "{nx}/g.pkl", "--dst", "{tmp}/g.pt", "--to", "toonmix"], ["{nx}/g.pkl", "docs/weights.md"]),
    "export_gan": (["--ckpt", "{nx}/ckpt", "--out", "{tmp}/g.pt"], ["{nx}/ckpt", "checkpoint folder"]),
    "invert": (["--encoder", "{nx}/e.pt", "--images", "{tmp}", "--out", "{tmp}/w", "--device", "cpu"],
               ["{nx}/e.pt", "launch.train_encoder"]),
    "eval_encoder": (["--encoder", "{nx}/e.pt", "--images", "{tmp}", "--no-lpips", "--device", "cpu"],
                     ["{nx}/e.pt", "launch.train_encoder"]),
    "make_shards": (["--kind", "folder", "--input", "{nx}/in", "--out", "{tmp}/s"], ["{nx}/in", "does not exist"]),
    "fid": (["--real", "{tmp}", "--fake", "{tmp}"], ["pt_inception-2015-12-05-6726825d.pth", "https://",
                                                     "--detector untrained"]),
    "cartoonize": (["--photos", "{tmp}", "--character", "a", "--encoder-source", "{nx}/e.pt", "--encoder-target",
                    "{nx}/e.pt", "--g-source", "{nx}/g.pt", "--g-target", "{nx}/g.pt", "--out", "{tmp}/c"],
                   ["{nx}/e.pt", "launch.train_encoder"]),
    "train_gan": (["loader.data={nx}/shards", "run.dir={tmp}/run"], ["{nx}/shards", "launch.make_shards"]),
    "train_gan-init": (["loader.data={shards}", "run.dir={tmp}/run", "model.init={nx}/ffhq.pt"],
                       ["{nx}/ffhq.pt", "docs/weights.md"]),
    "train_encoder": (["loader.data={shards}", "run.dir={tmp}/run", "decoder.source={nx}/g.pt"],
                      ["{nx}/g.pt", "docs/weights.md"]),
}
CONFIG = {"train_gan": "launch/configs/tiny.yaml", "train_encoder": "launch/configs/encoder_tiny.yaml"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_missing_input_is_named_with_how_to_get_it(case, shards, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    monkeypatch.delenv("TOONMIX_WEIGHTS", raising=False)
    command = case.split("-")[0]
    fill = {"nx": str(tmp_path / "missing"), "tmp": str(tmp_path), "shards": shards}
    argv, expected = CASES[case]
    argv = [a.format(**fill) for a in argv]
    if command in CONFIG:
        argv = ["--config", CONFIG[command], *argv]
    try:
        rc = importlib.import_module(f"launch.{command}").main(argv)
    except SystemExit as e:  # some commands end through SystemExit rather than a return value
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    for text in expected:
        assert text.format(**fill) in err, err
