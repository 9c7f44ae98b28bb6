"""benchmarks/train_gan.py: one timed case through the real trainer gives positive, consistent figures."""

from __future__ import annotations

import benchmarks.train_gan as bench


def test_run_case_times_the_second_tick(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    tiny = ["model.channel_multiplier=0.0625", "model.channel_max=16", "model.style_dim=16", "model.n_mlp=1"]
    r = bench.run_case(tmp_path, 16, "cpu", 4, tiny, 8)
    assert r["s_per_kimg"] > 0 and abs(r["img_s"] * r["s_per_kimg"] - 1000) < 1
    assert r["ops"]["upfirdn2d/ref"] > 0 and r["gpu_mem_gib"] == 0.0
    rows = (tmp_path / "run16" / "stats.jsonl").read_text().splitlines()
    assert len(rows) == 2  # start-up tick, then the timed one
