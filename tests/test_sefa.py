"""SeFa: directions are orthonormal eigenvectors of the stacked affine weights (checked against a
hand-built matrix), moving along one changes the output (only its W+ entries), and the command
factorizes, renders grids and videos, reads rosinality's factor files and refuses bad input."""

from __future__ import annotations

import json

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

from eval.sefa import Factors, factorize, move
from launch import sefa as cli
from trainer.model_io import save_checkpoint
from trainer.networks import Generator, GeneratorConfig
from trainer.networks.swap import g_swap

TINY_G = dict(style_dim=16, n_mlp=2, channel_multiplier=0.0625, channel_max=32)


def tiny(seed: int) -> Generator:
    torch.manual_seed(seed)
    G = Generator(GeneratorConfig(size=16, **TINY_G))
    G.update_w_avg()
    return G.eval()


def test_directions_are_the_eigenvectors_of_the_stacked_conv_affines():
    G = tiny(0)
    f = factorize(G)
    sd = G.state_dict()
    # By hand, from the rosinality key names: every conv's modulation, no tRGB, times the equalized-lr scale.
    keys = [k for k in sd if k.endswith("conv.modulation.weight") and "to_rgb" not in k]
    W = torch.cat([sd[k] for k in keys]).double() / np.sqrt(G.style_dim)
    values = torch.linalg.eigvalsh(W.t() @ W).flip(0)
    assert torch.allclose(f.values.double(), values, rtol=1e-5)
    D = f.directions.double()
    assert torch.allclose(D @ D.t(), torch.eye(G.style_dim, dtype=torch.float64), atol=1e-5)
    # Each direction is an eigenvector: W^T W d = lambda d.
    assert torch.allclose((W.t() @ W @ D.t()).t(), f.values.double()[:, None] * D, atol=1e-4)
    assert len(f.layers) == len(keys) and (f.values[:-1] >= f.values[1:]).all()


def test_moving_changes_the_output_and_only_the_chosen_entries():
    G = tiny(0)
    f = factorize(G, w_indices=[0, 1])
    ws = G.broadcast(G.mapping(torch.randn(2, G.style_dim)))
    moved = move(ws, f, 0, 3.0)
    changed = (moved != ws).any(dim=2).any(dim=0)
    assert changed.tolist() == [True, True] + [False] * (G.n_latent - 2)
    with torch.no_grad():
        a, b = G.synthesis(ws, noise_mode="const").img, G.synthesis(moved, noise_mode="const").img
        same = G.synthesis(move(ws, f, 0, 0.0), noise_mode="const").img
    assert (a - b).abs().mean() > 1e-3 and torch.equal(a, same)
    with pytest.raises(ValueError, match="out of range"):
        move(ws, f, G.style_dim, 1.0)


def test_the_swapped_generator_has_its_own_directions():
    S, T = tiny(0), tiny(1)
    swapped = factorize(g_swap(S, T, 8))
    assert not torch.allclose(swapped.values, factorize(S).values)
    assert not torch.allclose(swapped.values, factorize(T).values)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("sefa")
    return (str(save_checkpoint(root / "s.pt", "rosinality", g_ema=tiny(0))),
            str(save_checkpoint(root / "t.pt", "rosinality", g_ema=tiny(1))))


def test_command_factorizes_renders_a_grid_and_a_video(ckpts, tmp_path, capsys):
    fac = tmp_path / "f.pt"
    assert cli.main(["--ckpt", ckpts[0], "--g-target", ckpts[1], "--swap-res", "8", "--factors", str(fac),
                     "--layers", "0-2"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["w_indices"] == [0, 1, 2] and info["directions"] == 16
    assert cli.main(["--ckpt", ckpts[0], "--g-target", ckpts[1], "--swap-res", "8", "--factors", str(fac),
                     "--apply", "--index", "0,3", "--steps", "5", "--seeds", "1-3", "--video"]) == 0
    grid = np.asarray(Image.open(fac.with_suffix(".png")))
    assert grid.shape == (3 * 2 * 16, 5 * 16, 3)
    cols = grid.reshape(6, 16, 5, 16, 3)
    assert (cols[:, :, 0] != cols[:, :, 4]).any()  # -degree and +degree differ
    video = json.loads(capsys.readouterr().out)["video"]
    frames = imageio_ffmpeg.read_frames(video)
    meta = next(frames)
    assert video == str(fac.with_suffix(".mp4")) and meta["codec"] == "h264"
    assert sum(1 for _ in frames) == 8 and meta["size"] == (16, 6 * 16)  # 5 degrees there, 3 back
    assert cli.main(["--ckpt", ckpts[0], "--factors", str(fac), "--apply", "--index", "0", "--steps", "3",
                     "--seeds", "1", "--video", "--video-format", "gif", "--out", str(tmp_path / "g.png")]) == 0
    with Image.open(tmp_path / "g.gif") as gif:
        assert gif.n_frames == 4 and gif.size == (16, 16)  # 3 degrees there, 1 back


def test_rosinality_factor_files_and_projected_latents_are_read(ckpts, tmp_path):
    G = tiny(0)
    f = factorize(G)
    torch.save({"ckpt": "s.pt", "eigvec": f.directions.t().contiguous()}, tmp_path / "factor.pt")
    loaded = Factors.load(tmp_path / "factor.pt")
    assert torch.equal(loaded.directions, f.directions) and loaded.w_indices is None
    np.savez(tmp_path / "a.npz", w=np.zeros((G.n_latent, 16), np.float32))
    assert cli.main(["--ckpt", ckpts[0], "--factors", str(tmp_path / "factor.pt"), "--apply", "--index", "0",
                     "--steps", "3", "--latents", str(tmp_path / "a.npz"), "--out", str(tmp_path / "g.png")]) == 0
    assert np.asarray(Image.open(tmp_path / "g.png")).shape == (16, 48, 3)


@pytest.mark.parametrize("change, message", [
    (["--factors", "{tmp}/none.pt", "--apply"], "launch.sefa"),
    (["--factors", "{tmp}/bad.pt", "--apply"], "not a readable factor file"),
    (["--factors", "{tmp}/f.pt", "--layers", "40"], "no style layer"),
    (["--factors", "{tmp}/f.pt", "--ckpt", "{tmp}/none-g.pt"], "docs/weights.md"),
])
def test_bad_input_exits_2(change, message, ckpts, tmp_path, capsys):
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 truncated")
    argv = ["--ckpt", ckpts[0]] + [a.format(tmp=tmp_path) for a in change]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
