"""FID/KID end to end: world-size invariance, batch size, caching, sources, the command line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval.features import FolderSource, GeneratorSource, ShardSource, extract
from eval.fid_preprocess import FIDDetector
from eval.inception import InceptionV3
from launch import fid as cli
from tests.data_fixtures import face_shards
from tests.dist_fid_check import SmallDetector
from tests.run_fixtures import torchrun
from trainer.model_io import save_checkpoint
from trainer.networks import Generator, GeneratorConfig
from trainer.run.distributed import Dist

TINY_G = dict(style_dim=32, n_mlp=2, channel_multiplier=0.0625, channel_max=32)


def detector_file(folder: Path) -> Path:
    """Random Inception weights saved as pytorch-fid's file, named with its own hash prefix."""
    torch.manual_seed(0)
    net = InceptionV3()
    # Running statistics from one batch of noise keep activations at unit scale through the
    # 94 random layers (the default statistics let them fade to nothing).
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    net.train()
    with torch.no_grad():
        net(torch.rand(2, 3, 299, 299) * 2 - 1)
    tmp = folder / "tmp.pth"
    torch.save(net.state_dict(), tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    return tmp.rename(folder / f"pt_inception-2015-12-05-{digest}.pth")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fid")
    torch.manual_seed(1)
    G = Generator(GeneratorConfig(size=16, **TINY_G))
    G.update_w_avg()
    return {"g": str(save_checkpoint(root / "g.pt", "rosinality", g_ema=G)), "shards": face_shards(root / "s", 10, 16),
            "detector": str(detector_file(root))}


def run(argv: list[str], monkeypatch) -> int:
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    return cli.main(argv)


def base_args(files: dict, tmp: Path) -> list[str]:
    return ["--real", files["shards"], "--fake", files["g"], "--protocol", "custom", "--num-gen", "2", "--max-real", "2",
            "--batch", "2",
            "--detector", files["detector"], "--cache-dir", str(tmp / "cache")]


def test_statistics_are_bit_identical_on_1_and_3_ranks(files, tmp_path):
    # Shards, a generator and a folder with an unreadable file; batches of 3 over 10-11 items
    # leave the last of 3 ranks with fewer (or no) batches (2 ranks split them evenly and add
    # nothing to check but a launch).
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(8):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(
            folder / f"{i}.png")
    (folder / "5b.png").write_bytes(b"broken")
    outs = []
    for world in (1, 3):
        out = tmp_path / f"w{world}"
        out.mkdir()
        torchrun("tests.dist_fid_check", world, [str(out), files["shards"], files["g"], str(folder), "3"])
        outs.append({k: np.load(out / f"{k}.npz") for k in ("shards", "generator", "folder")})
    assert [len(outs[0][k]["features"]) for k in ("shards", "generator", "folder")] == [10, 11, 8]
    assert int(outs[0]["folder"]["skipped"]) == 1
    for other in outs[1:]:
        for k in ("shards", "generator", "folder"):
            for field in ("features", "mu", "sigma"):
                assert np.array_equal(other[k][field], outs[0][k][field]), (k, field)
            assert int(other[k]["skipped"]) == int(outs[0][k]["skipped"])
    assert outs[0]["generator"]["features"].std(0).mean() > 0  # distinct samples, not one image repeated


def dist_cpu(monkeypatch) -> Dist:
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    return Dist()


def detector(files: dict, mode: str = "tf") -> FIDDetector:
    from eval.inception import load_inception
    return FIDDetector(load_inception(files["detector"])[0], mode).eval()


def test_batch_size_changes_only_rounding(files, monkeypatch):
    dist, det = dist_cpu(monkeypatch), detector(files)
    G = cli.open_source(files["g"], None, cli.build_parser().parse_args(
        ["--real", "x", "--fake", files["g"]]), "cpu", 3)
    a = extract(G, det, dist, batch=1, progress=False)
    b = extract(G, det, dist, batch=3, progress=False)
    assert a.shape == (3, 2048) and a.std(0).mean() > 0
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # the stated tolerance (float32 batch rounding)
    # Samples do not depend on the batch they were drawn in: the same z and noise per index.
    src = GeneratorSource(G.G, 3, seed=0)
    first = [x for _, imgs in src.batches(1, 0, 1) for x in imgs]
    whole = [x for _, imgs in src.batches(3, 0, 1) for x in imgs]
    assert all(torch.equal(x, y) for x, y in zip(first, whole))


def test_folder_source_skips_and_counts_broken_files_and_mixed_sizes(files, tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        size = (32, 32) if i % 2 else (20, 28)
        Image.fromarray(np.full((*size, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    (folder / "9.png").write_bytes(b"not a png")
    src, det = FolderSource(str(folder)), SmallDetector().eval()
    with torch.no_grad():
        feats = extract(src, det, dist_cpu(monkeypatch), batch=4, progress=False)
        # Mixed sizes go through in groups but keep their order: equal to one image at a time.
        one = np.stack([extract(FolderSource(str(folder), files=[f]), det, dist_cpu(monkeypatch), 1,
                                progress=False)[0] for f in sorted(folder.glob("[0-4].png"))])
    assert feats.shape == (5, 64)
    assert src.skipped == {"unreadable image": 1}
    np.testing.assert_allclose(feats, one, rtol=1e-4, atol=1e-5)


def test_shard_source_reads_each_sample_once(files, monkeypatch):
    src = ShardSource(files["shards"], limit=7)
    seen = [i for idx, _ in src.batches(3, 0, 1) for i in idx]
    assert seen == list(range(7))


def test_cache_reuse_kid_tensorboard_and_json(files, tmp_path, monkeypatch, capsys):
    argv = base_args(files, tmp_path) + ["--kid", "--kid-subset-size", "2", "--kid-subsets", "10",
                                         "--tb", str(tmp_path / "tb"), "--step", "12"]
    assert run(argv, monkeypatch) == 0
    printed = capsys.readouterr()
    first = json.loads(printed.out.strip().splitlines()[-1])
    # 2 and 2 images in subsets of 2: every subset is the same set, so no spread.
    assert first["real_from"] == "extracted" and "kid" in first and first["kid_std"] is None
    assert "same set" in first["kid_std_note"] and "kid_std is null" in printed.err
    cached = list((tmp_path / "cache").glob("shards-*.npz"))
    assert len(cached) == 1 and set(np.load(cached[0]).files) >= {"mu", "sigma"}
    assert run(argv, monkeypatch) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["real_from"] == "cache" and second["fid"] == first["fid"] and second["kid"] == first["kid"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ev = EventAccumulator(str(tmp_path / "tb"))
    ev.Reload()
    assert [(s.step, s.value) for s in ev.Scalars("Metrics/custom")] == [(12, pytest.approx(first["fid"]))] * 2
    # Another preprocessing is another cache entry.
    assert run(base_args(files, tmp_path) + ["--preprocess", "clean"], monkeypatch) == 0
    assert len(list((tmp_path / "cache").glob("shards-*.npz"))) == 2
    capsys.readouterr()
    # Statistics in pytorch-fid's layout (mu, sigma only) stand in for the real images.
    st = np.load(cached[0])
    np.savez(tmp_path / "pytorch_fid.npz", mu=st["mu"], sigma=st["sigma"])
    assert run(["--real", str(tmp_path / "pytorch_fid.npz")] + base_args(files, tmp_path)[2:], monkeypatch) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["real_from"] == "npz" and res["fid"] == pytest.approx(first["fid"], rel=1e-12)


def test_untrained_detector_runs_and_says_so(files, tmp_path, monkeypatch, capsys):
    argv = base_args(files, tmp_path)
    argv[argv.index("--detector") + 1] = "untrained:3"
    assert run(argv, monkeypatch) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["detector_sha256"].startswith("untrained-seed3-torch") and np.isfinite(res["fid"])
    cached = list((tmp_path / "cache").glob("shards-*.npz"))
    assert len(cached) == 1 and "untrained-seed3" in str(np.load(cached[0])["detector_sha256"])


@pytest.mark.parametrize("change, message", [
    (["--detector", "/nonexistent/inception-2015-12-05.pt"], "inception-2015-12-05"),
    (["--fake", "/nonexistent/g.pt"], "no such file"),
    (["--num-gen", "1"], "--num-gen"),
])
def test_bad_input_exits_2_with_a_clear_message(change, message, files, tmp_path, monkeypatch, capsys):
    argv = base_args(files, tmp_path)
    for k in range(0, len(change), 2):
        argv[argv.index(change[k]) + 1] = change[k + 1]
    assert run(argv, monkeypatch) == 2
    assert message in capsys.readouterr().err



def _side(n: int, shift: float, seed: int):
    from eval.fid import Side
    from eval.frechet import feature_stats

    feats = np.random.default_rng(seed).standard_normal((n, 8)) + shift
    return Side(feature_stats(feats, 0), feats, "extracted")


def test_kid_without_a_spread_is_null_in_every_report(tmp_path, capsys):
    from eval.fid import MetricConfig, compare
    from eval.generator_table import write_table
    from launch._demo_report import _kid, collect

    result = compare(_side(6, 0.0, 0), _side(6, 0.5, 1), MetricConfig(kid=True, kid_subsets=20))
    assert result["kid_std"] is None and "all 6 real and 6 generated" in result["kid_std_note"]
    args = cli.build_parser().parse_args(["--real", "r", "--fake", "f", "--out", str(tmp_path / "fid.json")])
    cli.report(result, args)
    printed = capsys.readouterr()
    assert '"kid_std": null' in printed.out and json.loads((tmp_path / "fid.json").read_text())["kid_std"] is None
    assert "warning: kid_std is null: undefined: every KID subset held all 6 real" in printed.err

    write_table({"g": result}, tmp_path / "table", "t", "generator", {})
    assert f"| g | {result['fid']:.4g} | {result['kid']:.4g} | 6 / 6 |" in (tmp_path / "table.md").read_text()
    assert json.loads((tmp_path / "table.json").read_text())["rows"]["g"]["kid_std"] is None

    assert _kid(result) == f"{result['kid']:.4g}" and _kid({**result, "kid_std": 0.01}).endswith(" ± 0.01")
    (tmp_path / "demo" / "metrics").mkdir(parents=True)
    (tmp_path / "demo" / "metrics" / "fid_gan_target.json").write_text(json.dumps(result))
    m = collect(tmp_path / "demo", {}, "untrained")["fid_gan_target"]
    assert m["kid_std"] is None and m["kid_std_note"] == result["kid_std_note"]


def test_kid_std_is_a_number_when_the_subsets_differ():
    from eval.fid import MetricConfig, compare

    result = compare(_side(9, 0.0, 0), _side(6, 0.5, 1), MetricConfig(kid=True, kid_subsets=20))
    assert result["kid_std"] > 0 and "kid_std_note" not in result


def _parse(*extra: str):
    return cli.build_parser().parse_args(["--real", "r", "--fake", "f", *extra])


def test_weights_dir_finds_every_public_detector_file_name(tmp_path):
    from trainer.networks.weights import PUBLIC

    assert PUBLIC["inception_fidelity"].filename == "weights-inception-2015-12-05-6726825d.pth"
    assert set(cli.DETECTOR_FILES) == {"inception_nvidia", "inception_fid", "inception_fidelity"}
    for key in cli.DETECTOR_FILES:
        folder = tmp_path / key
        folder.mkdir()
        (folder / PUBLIC[key].filename).write_bytes(b"stand-in")
        assert cli.detector_path(_parse("--weights-dir", str(folder))) == str(folder / PUBLIC[key].filename)
    both = tmp_path / "inception_fid"
    (both / PUBLIC["inception_fidelity"].filename).write_bytes(b"stand-in")
    assert cli.detector_path(_parse("--weights-dir", str(both))).endswith(PUBLIC["inception_fid"].filename)
    (tmp_path / "none").mkdir()
    assert cli.detector_path(_parse("--weights-dir", str(tmp_path / "none"))) is None


def test_hash_mismatch_names_the_flags_that_get_past_it(tmp_path, monkeypatch, capsys):
    from trainer.networks.weights import PUBLIC

    path = tmp_path / PUBLIC["inception_fidelity"].filename  # a stand-in whose hash is not 6726825d...
    torch.save({"some.weight": torch.zeros(3)}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert not digest.startswith("6726825d")
    argv = ["--real", "r", "--fake", "f", "--protocol", "custom", "--num-gen", "2", "--weights-dir", str(tmp_path)]
    assert run(argv, monkeypatch) == 2
    err = capsys.readouterr().err
    assert "SHA-256" in err and f"--detector-sha256 {digest}" in err and "--no-check-hash" in err
    # Either flag gets past the check, to the file's contents (not an Inception: refused for that).
    for extra in (["--no-check-hash"], ["--detector-sha256", digest]):
        assert run(argv + extra, monkeypatch) == 2
        err = capsys.readouterr().err
        assert "SHA-256" not in err and "holds neither the Inception keys of pytorch-fid and torch-fidelity" in err


def test_every_preprocess_ddof_pair_in_the_docs_is_accepted():
    from eval.fid_preprocess import MODES
    from trainer.networks.weights import PUBLIC

    text = (Path(__file__).resolve().parents[1] / "docs" / "eval.md").read_text()
    table = text.split("### Reproducing another tool's FID", 1)[1].split("\n\n|", 1)[1]
    lines = ("|" + table).splitlines()
    lines = lines[:next((i for i, line in enumerate(lines) if not line.startswith("|")), len(lines))]  # this table only
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    header, rows = rows[0], rows[2:]
    assert header[:3] == ["tool (mode)", "`--preprocess`", "`--ddof`"]
    choices = {a.dest: a.choices for a in cli.build_parser()._actions}
    assert tuple(choices["preprocess"]) == MODES
    tools = set()
    for tool, prep, ddof, _, detector in rows:
        prep, ddof, detector = prep.strip("`"), ddof.strip("`"), detector.strip("`")
        assert prep in choices["preprocess"] and int(ddof) in choices["ddof"], tool
        args = _parse("--preprocess", prep, "--ddof", ddof)
        assert (args.preprocess, args.ddof) == (prep, int(ddof))
        assert detector in {w.filename for w in PUBLIC.values()}, tool
        tools.add(tool.split(",")[0].split(" ")[0])
    assert tools == {"pytorch-fid", "clean-fid", "torch-fidelity", "NVIDIA"}
