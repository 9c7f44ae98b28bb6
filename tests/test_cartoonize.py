"""launch.cartoonize end to end on tiny networks: outputs, the table, metrics, bad input, two ranks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval.cdsm import LookUpTable, MixConfig, cartoonize, generator_fingerprint
from launch import cartoonize as cli
from tests.data_fixtures import face
from tests.run_fixtures import torchrun
from tests.test_fid import detector_file
from trainer.encoder.formats import load_encoder, save_restyle
from trainer.model_io import load_checkpoint, save_checkpoint
from trainer.networks import Generator, GeneratorConfig
from trainer.networks.encoders import Encoder, EncoderConfig
from trainer.networks.irse import IRSEBackbone
from trainer.networks.restyle import ReStyle
from trainer.networks.swap import g_swap
from trainer.networks.weights import PUBLIC

TINY_G = dict(style_dim=32, n_mlp=2, channel_multiplier=0.0625, channel_max=32)


def generator(seed: int) -> Generator:
    torch.manual_seed(seed)
    G = Generator(GeneratorConfig(size=32, **TINY_G))
    G.update_w_avg()
    return G.eval()


def encoder(G: Generator, seed: int) -> ReStyle:
    torch.manual_seed(seed)
    return ReStyle(Encoder(EncoderConfig(n_styles=8, style_dim=32, input_size=32, width=0.125,
                                         units=[1, 1, 1, 1])), G)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    return make_files(tmp_path_factory.mktemp("cartoonize"))


def make_files(root: Path) -> dict:
    """Tiny generators and encoders, photos (three of them refused) and two characters' images under ``root``."""
    g_src, g_tgt = generator(1), generator(2)
    out = {"g_src": str(save_checkpoint(root / "g_src.pt", "rosinality", g_ema=g_src)),
           "g_tgt": str(save_checkpoint(root / "g_tgt.pt", "rosinality", g_ema=g_tgt)),
           "enc_s": str(save_restyle(root / "enc_s.pt", encoder(g_src, 3))),
           "enc_t": str(save_restyle(root / "enc_t.pt", encoder(g_swap(g_src, g_tgt, 32), 4)))}
    photos = root / "photos"
    photos.mkdir()
    for i in range(5):
        face(100 + i, 72).save(photos / f"p{i}.png")
    Image.new("RGB", (40, 40)).save(photos / "small.png")        # below --min-side 64
    Image.new("RGB", (200, 80)).save(photos / "wide.png")        # not one face
    (photos / "broken.png").write_bytes(b"not an image")
    for name, n in (("hero", 6), ("villain", 4)):
        d = root / "chars" / name
        d.mkdir(parents=True)
        for i in range(n):
            face(200 + 10 * len(name) + i, 64, bg=(30, 60 + 20 * i, 200)).save(d / f"{i}.png")
    torch.manual_seed(5)
    w = root / "weights"
    w.mkdir()
    torch.save(IRSEBackbone(units=(1, 1, 1, 1), width=0.125).state_dict(), w / PUBLIC["ir_se50"].filename)
    out.update(photos=photos, chars=root / "chars", arcface=str(w / PUBLIC["ir_se50"].filename))
    return out


def args(files: dict, out: Path, *extra: str) -> list[str]:
    return ["--photos", str(files["photos"]), "--character", "hero", "--target-data", str(files["chars"]),
            "--encoder-source", files["enc_s"], "--encoder-target", files["enc_t"], "--g-source", files["g_src"],
            "--g-target", files["g_tgt"], "--out", str(out), "--k", "4", "--batch", "2", "--iters", "2", *extra]


def run(argv: list[str], monkeypatch) -> int:
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    return cli.main(argv)


def test_outputs_table_report_and_refused_photos(files, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run(args(files, out, "--arcface", files["arcface"]), monkeypatch) == 0
    captured = capsys.readouterr()
    for bad in ("small.png", "wide.png", "broken.png"):
        assert bad in captured.err
    assert "not a face-sized image" in captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["photos"] == 5 and len(report["refused"]) == 3
    assert report["character"] == "hero" and report["references"] == 4 and report["k"] == 4
    for method in cli.METHODS:
        assert sorted(p.name for p in (out / method).iterdir()) == [f"p{i}.png" for i in range(5)]
        assert -1 <= report["metrics"][method]["id_similarity"] <= 1
    # A sheet row: photo, reconstruction, three methods, three references, 32 px each.
    assert Image.open(out / "sheets" / "p0.png").size == (8 * 32, 32)
    # The written cartoon is CDSM of the photo's inversion with the table's latent.
    G = g_swap(load_checkpoint(files["g_src"]).generator(), load_checkpoint(files["g_tgt"]).generator(), 32)
    table = LookUpTable.load(out / "lut.pt", generator_fingerprint(G))
    entry = table.get("hero")
    assert len(entry.images) == 4 and entry.method == "encoder"
    x = torch.from_numpy(np.asarray(Image.open(files["photos"] / "p0.png").resize((32, 32), Image.Resampling.LANCZOS),
                                    np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    w = load_encoder(files["enc_s"]).invert(x, 2)[-1].latent
    expect = ((cartoonize(G, w, entry.latent[None], MixConfig()) * 127.5 + 128).clamp(0, 255).to(torch.uint8))
    got = torch.from_numpy(np.array(Image.open(out / "cdsm" / "p0.png"))).permute(2, 0, 1)
    assert (got.int() - expect[0].int()).abs().max() <= 1
    # A second run reuses the table as it is (same latent, no rebuild).
    before = (out / "lut.pt").stat().st_mtime_ns
    assert run(args(files, out), monkeypatch) == 0
    assert (out / "lut.pt").stat().st_mtime_ns == before


def test_fid_and_kid_of_each_method_against_the_character(files, tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        face(300 + i, 64).save(photos / f"q{i}.png")
    out = tmp_path / "out"
    argv = args(files, out, "--photos", str(photos), "--k", "2", "--detector", str(detector_file(tmp_path)), "--kid")
    assert run(argv, monkeypatch) == 0
    report = json.loads((out / "report.json").read_text())
    for method in cli.METHODS:
        m = report["metrics"][method]
        assert np.isfinite(m["fid"]) and m["fid"] > 0 and np.isfinite(m["kid"])
        assert (m["n_real"], m["n_fake"]) == (6, 2)  # every image of the character, every cartoon


def test_references_are_averaged_in_the_same_way_on_two_ranks(files, tmp_path, monkeypatch):
    one, two = tmp_path / "one", tmp_path / "two"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process: the same CPU kernels, so bit-equal results
    try:
        assert run(args(files, one, "--character", "villain"), monkeypatch) == 0
    finally:
        torch.set_num_threads(threads)
    torchrun("launch.cartoonize", 2, args(files, two, "--character", "villain"))
    a, b = LookUpTable.load(one / "lut.pt"), LookUpTable.load(two / "lut.pt")
    assert a.get("villain").images == b.get("villain").images
    assert torch.equal(a.get("villain").latent, b.get("villain").latent)
    for method in cli.METHODS:
        assert sorted(p.name for p in (two / method).iterdir()) == [f"p{i}.png" for i in range(5)]
        for p in (one / method).iterdir():
            assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(two / method / p.name)))


def test_unknown_character_and_a_table_of_another_generator_are_refused(files, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run(args(files, out, "--character", "nobody"), monkeypatch) == 2
    err = capsys.readouterr().err
    assert "unknown character 'nobody'" in err and "hero" in err and "villain" in err
    assert run(args(files, out, "--character", "villain", "--photos", str(tmp_path)), monkeypatch) == 2
    assert "no photos" in capsys.readouterr().err
    assert (out / "lut.pt").is_file()  # the table built before the failure is kept
    # Another swap resolution is another G_swap: the table's latents do not belong to it.
    assert run(args(files, out, "--character", "villain", "--swap-res", "16"), monkeypatch) == 2
    assert "built for another generator" in capsys.readouterr().err



def test_projection_builds_the_table_without_a_target_encoder(files, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    argv = args(files, out, "--character", "villain", "--invert", "projection", "--projection-steps", "3")
    argv[argv.index("--encoder-target"):argv.index("--encoder-target") + 2] = []
    assert run(argv, monkeypatch) == 0
    assert "L2 only" in capsys.readouterr().err  # no LPIPS weights were given
    entry = LookUpTable.load(out / "lut.pt").get("villain")
    assert entry.method == "projection" and len(entry.images) == 4
    # The encoder path needs the target encoder.
    argv = args(files, tmp_path / "o2", "--character", "villain")
    argv[argv.index("--encoder-target"):argv.index("--encoder-target") + 2] = []
    assert run(argv, monkeypatch) == 2
    assert "--encoder-target" in capsys.readouterr().err
