"""eval.style_mix and launch.style_mix on tiny 16 and 32 px generators."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.imageio import to_uint8
from eval.style_mix import grid, mixed, parse_entries
from launch import style_mix as cli
from launch._args import latents_from
from tests.test_sefa import TINY_G, tiny
from trainer.model_io import save_checkpoint
from trainer.networks import Generator, GeneratorConfig


def test_named_ranges_follow_the_layers_w_plus_entries_drive():
    # rosinality's wiring at 32 px, written out by hand: conv1 (4 px) w0, to_rgb1 w1;
    # 8 px convs w1, w2, tRGB w3; 16 px convs w3, w4, tRGB w5; 32 px convs w5, w6, tRGB w7.
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(size=32, **TINY_G))
    # Named ranges by an entry's lowest layer: no overlap (0-3 / 4-7 / 8-17 at 1024 px).
    assert parse_entries("coarse", G) == [0, 1, 2, 3]
    assert parse_entries("middle", G) == [4, 5, 6, 7]
    assert parse_entries("r16", G) == [3, 4, 5] and parse_entries("r8-16", G) == [1, 2, 3, 4, 5]
    assert parse_entries("0-2,6", G) == [0, 1, 2, 6] and parse_entries("Coarse", G) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"fine \(64-32 px\): no layer of this generator is there"):
        parse_entries("fine", G)
    torch.manual_seed(0)
    big = Generator(GeneratorConfig(size=1024, style_dim=8, n_mlp=1, channel_multiplier=0.0625, channel_max=8))
    assert [parse_entries(n, big) for n in ("coarse", "middle", "fine")] == [
        list(range(0, 4)), list(range(4, 8)), list(range(8, 18))]
    with pytest.raises(ValueError, match=r"W\+ entries \[8, 9\] are outside this 32 px generator's 0-7"):
        parse_entries("6-9", G)
    with pytest.raises(ValueError, match="unknown layer range 'eyes'"):
        parse_entries("eyes", G)


def test_grid_cells_equal_renders_of_hand_mixed_w_plus():
    G = tiny(0)
    w_rows, w_cols = latents_from(G, [1, 2], None, 1.0, "cpu"), latents_from(G, [3, 4, 5], None, 1.0, "cpu")
    entries = [0, 1, 2]
    out = grid(G, w_rows, w_cols, entries, batch=4)
    S = G.size
    assert out.shape == (3 * S, 4 * S, 3) and (out[:S, :S] == 255).all()  # blank corner
    for r in range(2):
        for c in range(3):
            w = w_rows[r].clone()
            w[0:3] = w_cols[c, 0:3]  # by hand: the first three entries from the column
            with torch.no_grad():
                want = to_uint8(G.synthesis(w[None], noise_mode="const").img)[0]
            assert np.array_equal(out[(r + 1) * S:(r + 2) * S, (c + 1) * S:(c + 2) * S], want), (r, c)
    with torch.no_grad():
        assert np.array_equal(out[:S, S:2 * S], to_uint8(G.synthesis(w_cols[:1], noise_mode="const").img)[0])
        assert np.array_equal(out[2 * S:, :S], to_uint8(G.synthesis(w_rows[1:], noise_mode="const").img)[0])
    # No entries mixed: every cell is its row; all mixed: every cell is its column.
    m = mixed(w_rows, w_cols, [])
    assert torch.equal(m[1, 2], w_rows[1])
    assert torch.equal(mixed(w_rows, w_cols, list(range(G.n_latent)))[1, 2], w_cols[2])


def test_command_writes_one_grid_per_range_and_refuses_bad_ranges(tmp_path, capsys):
    src = str(save_checkpoint(tmp_path / "s.pt", "rosinality", g_ema=tiny(0)))
    tgt = str(save_checkpoint(tmp_path / "t.pt", "rosinality", g_ema=tiny(1)))
    np.save(tmp_path / "w.npy", np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32))
    out = tmp_path / "mix"
    assert cli.main(["--ckpt", src, "--g-target", tgt, "--swap-res", "8", "--row-latents", str(tmp_path / "w.npy"),
                     "--cols", "0-2", "--layers", "coarse", "r16", "0,5", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"coarse": [0, 1, 2, 3], "r16": [3, 4, 5],
                                                                          "0,5": [0, 5]}
    report = json.loads((out / "report.json").read_text())
    # Entry 3 also drives the 8 px tRGB: the report names every resolution the entries reach.
    assert report["grids"]["r16"]["resolutions"] == [8, 16] and report["swap_res"] == 8
    for name in ("coarse", "r16", "0_5"):
        assert np.asarray(Image.open(out / f"style_mix_{name}.png")).shape == (3 * 16, 4 * 16, 3)
    for layers, message in ((["0-7"], "W+ entries [6, 7] are outside this 16 px generator's 0-5"),
                            (["fine"], "no layer of this generator is there"),
                            (["petals"], "unknown layer range 'petals'")):
        assert cli.main(["--ckpt", src, "--layers", *layers, "--out", str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    assert cli.main(["--ckpt", src, "--col-latents", str(tmp_path / "none.npy"), "--out", str(out)]) == 2
    assert "none.npy: cannot read a latent" in capsys.readouterr().err
    assert cli.main(["--ckpt", src, "--rows", "0", "--cols", "1", "--out", str(tmp_path / "named")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"coarse": [0, 1, 2, 3], "middle": [4, 5]}
