"""benchmarks/train_encoder.py: the timed cases run the real trainer and inversion and give consistent figures."""

from __future__ import annotations

import json

import benchmarks.train_encoder as bench
from benchmarks.train_gan import make_shards

TINY_G = dict(size=32, style_dim=32, n_mlp=2, channel_multiplier=0.0625, channel_max=32)
TINY_E = dict(input_size=32, width=0.125, units=[1, 1, 1, 1])


def test_train_and_invert_cases_time_the_real_code(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    weights = bench.make_weights(tmp_path, dict(units=(1, 1, 1, 1), width=0.125))
    shards = make_shards(tmp_path, 32, 6)
    g = bench.make_generator(tmp_path, TINY_G)
    r = bench.train_case(tmp_path, "cpu", 2, 1, g, shards, weights,
                         ("model.input_size=32", "model.width=0.125", "model.units=[1,1,1,1]", "optim.n_iters=2"))
    assert r["img_s"] > 0 and r["gpu_mem_gib"] == 0.0
    rows = [json.loads(line) for line in (tmp_path / "run-cpu" / "stats.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {"Loss/lpips/pass2", "Loss/id/pass2"} <= set(rows[1])  # every loss was on
    inv = bench.invert_case("cpu", TINY_G, 2, 2, TINY_E)
    assert inv["img_s"] > 0 and abs(inv["img_s"] * inv["s_per_img"] - 1) < 1e-2
