"""launch.generate and launch.convert on a tiny checkpoint made in the test."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from launch import convert, generate
from tests.nvlabs_pickle import write_nvlabs_pickle
from trainer.model_io import load_checkpoint, save_checkpoint
from trainer.networks import Discriminator, Generator

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture
def ckpt(tmp_path):
    G = Generator(size=16, style_dim=8, n_mlp=2, channel_max=8)
    G.update_w_avg(256)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.3)
    return save_checkpoint(tmp_path / "g.pt", "rosinality", g_ema=G,
                           d=Discriminator(size=16, channel_max=8)), G


def test_generate_seeds_writes_pngs_grid_and_raw(tmp_path, ckpt):
    path, G = ckpt
    out = tmp_path / "out"
    assert generate.main(["--ckpt", str(path), "--seeds", "0-2,7", "--truncation", "0.5",
                          "--outdir", str(out), "--raw", str(tmp_path / "raw.npy"), "--batch", "3"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["grid.png", "seed0000.png", "seed0001.png", "seed0002.png", "seed0007.png"]
    assert Image.open(out / "grid.png").size == (32, 32)
    raw = np.load(tmp_path / "raw.npy")
    z = torch.from_numpy(np.stack([np.random.RandomState(s).randn(8) for s in (0, 1, 2, 7)])).float()
    with torch.no_grad():
        want = G(z, truncation_psi=0.5, noise_mode="const").numpy()
    assert raw.dtype == np.float32 and raw.shape == (4, 3, 16, 16)
    assert np.allclose(raw, want, atol=1e-6)
    png = np.asarray(Image.open(out / "seed0007.png"))
    assert np.array_equal(png, np.clip(want[3] * 127.5 + 128, 0, 255).astype(np.uint8).transpose(1, 2, 0))


def test_generate_from_z_file_and_nvlabs_pickle(tmp_path, ckpt):
    _, G = ckpt
    write_nvlabs_pickle(tmp_path / "g.pkl", G_ema=G)
    z = np.random.RandomState(5).randn(2, 8).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    generate.main(["--ckpt", str(tmp_path / "g.pkl"), "--z", str(tmp_path / "z.npy"),
                   "--outdir", str(tmp_path / "o"), "--raw", str(tmp_path / "r.npy")])
    with torch.no_grad():
        want = G(torch.from_numpy(z), noise_mode="const").numpy()
    assert np.allclose(np.load(tmp_path / "r.npy"), want, atol=1e-6)
    np.save(tmp_path / "bad.npy", z[:, :5])
    with pytest.raises(SystemExit, match="shape"):
        generate.main(["--ckpt", str(tmp_path / "g.pkl"), "--z", str(tmp_path / "bad.npy")])


def test_generate_reports_bad_checkpoints(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(SystemExit, match="truncated or corrupt"):
        generate.main(["--ckpt", str(tmp_path / "x.pt"), "--seeds", "0"])


def test_convert_between_formats(tmp_path, ckpt, capsys):
    path, G = ckpt
    convert.main(["--src", str(path), "--dst", str(tmp_path / "n.pt"), "--to", "toonmix"])
    assert "g_ema, d" in capsys.readouterr().out
    convert.main(["--src", str(tmp_path / "n.pt"), "--dst", str(tmp_path / "r.pt"), "--to", "rosinality"])
    back = load_checkpoint(tmp_path / "r.pt")
    z = torch.randn(2, 8)
    assert torch.equal(back.g_ema(z, noise_mode="const"), G(z, noise_mode="const"))
    with pytest.raises(SystemExit):
        convert.main(["--src", str(path), "--dst", str(tmp_path / "x.pkl"), "--to", "nvlabs"])


def test_generate_no_png_writes_only_the_raw_output(tmp_path, ckpt, monkeypatch):
    path, G = ckpt
    monkeypatch.chdir(tmp_path)  # where the default --outdir would land
    assert generate.main(["--ckpt", str(path), "--seeds", "3,4", "--no-png", "--raw", "raw.npy"]) == 0
    assert sorted(p.name for p in tmp_path.rglob("*") if p.name != "g.pt") == ["raw.npy"]
    z = torch.from_numpy(np.stack([np.random.RandomState(s).randn(8) for s in (3, 4)])).float()
    with torch.no_grad():
        assert np.allclose(np.load("raw.npy"), G(z, noise_mode="const").numpy(), atol=1e-6)
    with pytest.raises(SystemExit, match="--no-png without --raw would write nothing") as info:
        generate.main(["--ckpt", str(path), "--seeds", "0", "--no-png"])
    assert info.value.code == 2 and not (tmp_path / "generated").exists()


def test_convert_writes_args_only_when_the_source_had_them(tmp_path, ckpt):
    # torch >= 2.6 loads with weights_only=True by default, which refuses argparse.Namespace:
    # rosinality's own scripts call plain torch.load.
    _, G = ckpt
    sd = {k: v for k, v in G.state_dict().items() if k != "w_avg"}
    torch.save({"g_ema": sd, "latent_avg": G.w_avg}, tmp_path / "src.pt")
    write_nvlabs_pickle(tmp_path / "src.pkl", G_ema=G)
    convert.main(["--src", str(tmp_path / "src.pt"), "--dst", str(tmp_path / "mid.pt"), "--to", "toonmix"])
    for src in ("src.pt", "src.pkl", "mid.pt"):
        dst = tmp_path / f"from-{src}"
        convert.main(["--src", str(tmp_path / src), "--dst", str(dst), "--to", "rosinality"])
        for raw in (torch.load(dst), torch.load(dst, weights_only=True)):
            assert set(raw) == {"g_ema", "latent_avg"}, src
    torch.save({"g_ema": sd, "args": __import__("argparse").Namespace(size=16, n_mlp=2)}, tmp_path / "a.pt")
    convert.main(["--src", str(tmp_path / "a.pt"), "--dst", str(tmp_path / "b.pt"), "--to", "rosinality"])
    assert load_checkpoint(tmp_path / "b.pt").extra["args"] == {"size": 16, "n_mlp": 2}


def test_convert_to_rosinality_refuses_a_mbstd_group_change_unless_allowed(tmp_path, capsys):
    # NVlabs' paper256 configuration: minibatch-stddev group 8; rosinality's D always uses 4.
    D = Discriminator(size=16, channel_max=8, stddev_group=8)
    write_nvlabs_pickle(tmp_path / "d.pkl", D=D)
    argv = ["--src", str(tmp_path / "d.pkl"), "--dst", str(tmp_path / "r.pt"), "--to", "rosinality"]
    with pytest.raises(SystemExit) as info:
        convert.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "group size is 8" in err and "--allow-mbstd-change" in err
    assert not (tmp_path / "r.pt").exists()
    assert convert.main(argv + ["--allow-mbstd-change"]) == 0
    assert "warning: minibatch-stddev group size changed from 8 to 4" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "r.pt").d.cfg.stddev_group == 4
    convert.main(["--src", str(tmp_path / "d.pkl"), "--dst", str(tmp_path / "n.pt"), "--to", "toonmix"])
    assert load_checkpoint(tmp_path / "n.pt").d.cfg.stddev_group == 8 and capsys.readouterr().err == ""


@pytest.mark.parametrize("module", ["launch.generate", "launch.convert"])
def test_help(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "--" in out.stdout and "usage" in out.stdout
