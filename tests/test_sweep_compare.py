"""launch.swap_sweep and launch.compare: the right generators in the right rows, one FID table
against shared reference statistics, and bad input refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.imageio import save_png, to_uint8
from launch import compare, swap_sweep
from trainer.model_io import load_checkpoint, save_checkpoint
from trainer.networks import Generator, GeneratorConfig
from trainer.networks.swap import param_resolution

TINY_G = dict(style_dim=16, n_mlp=2, channel_multiplier=0.0625, channel_max=32)


def tiny(seed: int, size: int = 16) -> Generator:
    torch.manual_seed(seed)
    G = Generator(GeneratorConfig(size=size, **TINY_G))
    G.update_w_avg()
    return G.eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sweep")
    S, T = tiny(0), tiny(1)
    with torch.no_grad():  # the "target data": the target generator's own samples
        imgs = T(torch.randn(16, 16, generator=torch.Generator().manual_seed(5)), noise_mode="const")
    for i, im in enumerate(to_uint8(imgs)):
        save_png(im, root / "real" / f"{i:02d}.png")
    return {"s": str(save_checkpoint(root / "s.pt", "rosinality", g_ema=S)),
            "t": str(save_checkpoint(root / "t.pt", "rosinality", g_ema=T)),
            "big": str(save_checkpoint(root / "big.pt", "rosinality", g_ema=tiny(2, 32))),
            "real": str(root / "real")}


def test_sweep_generators_take_each_layer_from_the_right_parent(files):
    S, T = (load_checkpoint(files[k]).generator() for k in ("s", "t"))
    gens = swap_sweep.swapped_generators(S, T, [4, 8, 16])
    assert list(gens) == ["source", "swap4", "swap8", "swap16", "target"]
    src, tgt = S.state_dict(), T.state_dict()
    for r in (4, 8, 16):
        for name, value in gens[f"swap{r}"].state_dict().items():
            res = param_resolution(S, name)
            assert torch.equal(value, (src if res is None or res < r else tgt)[name]), (r, name)
    with pytest.raises(ValueError, match="power of two"):
        swap_sweep.swapped_generators(S, T, [12])


def test_sweep_sheet_has_a_row_per_generator_without_metrics(files, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    out = tmp_path / "sweep"
    assert swap_sweep.main(["--g-source", files["s"], "--g-target", files["t"], "--resolutions", "4,16",
                            "--seeds", "0-1", "--out", str(out)]) == 0
    rows = np.asarray(Image.open(out / "sheet.png")).reshape(4, 16, 32, 3)
    S, T = (load_checkpoint(files[k]).generator().eval() for k in ("s", "t"))
    z = torch.from_numpy(np.stack([np.random.RandomState(s).randn(16) for s in (0, 1)])).float()
    with torch.no_grad():  # the first and last rows are the parents themselves, seeds as launch.generate draws
        for row, G in ((rows[0], S), (rows[3], T)):
            img = to_uint8(G.synthesis(G.broadcast(G.mapping(z)), noise_mode="const").img)
            assert np.array_equal(row, np.concatenate(list(img), axis=1))
    assert not (out / "sweep.json").exists()


@pytest.mark.slow  # four 2048-d Frechet distances of rank-deficient covariances: ~30 s
def test_sweep_writes_the_sheet_and_one_table(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    out = tmp_path / "sweep"
    assert swap_sweep.main(["--g-source", files["s"], "--g-target", files["t"], "--resolutions", "8,16",
                            "--seeds", "0-2", "--real", files["real"], "--num-gen", "4", "--max-real", "8",
                            "--detector", "untrained",
                            "--kid", "--batch", "8", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    grid = np.asarray(Image.open(out / "sheet.png"))
    assert grid.shape == (4 * 16, 3 * 16, 3)
    rows = grid.reshape(4, 16, 48, 3)
    assert not np.array_equal(rows[0], rows[3]) and not np.array_equal(rows[1], rows[3])
    table = json.loads((out / "sweep.json").read_text())
    assert list(table["rows"]) == ["source", "swap8", "swap16", "target"]
    assert all(np.isfinite(r["fid"]) and r["n_fake"] == 4 and r["n_real"] == 8 for r in table["rows"].values())
    md = (out / "sweep.md").read_text()
    assert "| swap16 |" in md and table["detector_sha256"].startswith("untrained")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1  # the reference side was measured once


def test_compare_ranks_the_generator_of_the_data_first(files, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    out = tmp_path / "cmp"
    assert compare.main(["--gen", f"other={files['s']}", f"same={files['t']}", "--real", files["real"],
                         "--num-gen", "4", "--max-real", "4", "--detector", "untrained", "--kid", "--batch", "16",
                         "--seeds", "0-3",
                         "--cache-dir", "", "--out", str(out)]) == 0
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert list(rows) == ["other", "same"]
    assert rows["same"]["kid"] < rows["other"]["kid"]  # its own samples vs another random generator's
    assert np.asarray(Image.open(out / "sheet.png")).shape == (2 * 16, 4 * 16, 3)


@pytest.mark.parametrize("gens, message", [
    (["nameless.pt"], "NAME=CHECKPOINT"),
    (["a={s}", "a={t}"], "used twice"),
    (["a={s}", "b={big}"], "differ in size"),
    (["a={s}", "b=/nonexistent/g.pt"], "docs/weights.md"),
])
def test_compare_refuses_bad_generators(gens, message, files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    argv = ["--gen", *[g.format(**files) for g in gens], "--real", files["real"], "--detector", "untrained",
            "--out", str(tmp_path / "x")]
    assert compare.main(argv) == 2
    assert message in capsys.readouterr().err
