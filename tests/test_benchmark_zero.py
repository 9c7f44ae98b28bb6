"""benchmarks/zero.py: stage 0 and stage 2 through the real trainer on 2 processes, side by side."""

from __future__ import annotations

import pytest

import benchmarks.zero as bench
from benchmarks.train_gan import make_shards


@pytest.mark.slow  # two torchrun launches of 2 processes importing DeepSpeed: about 16 s
def test_compare_measures_half_the_optimizer_state_under_zero2(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "STEPS_PER_TICK", 2)
    tiny = ["model.channel_multiplier=0.0625", "model.channel_max=16", "model.style_dim=16", "model.n_mlp=1"]
    r = bench.compare(tmp_path, "t", make_shards(tmp_path, 16, 8), 2, "cpu", 4, tiny)
    # Measured by each rank on its own Adam tensors: ZeRO-2 holds its half (plus a few bytes of
    # partition padding and one step tensor per group instead of per parameter).
    assert 0.45 <= r["opt_state_bytes_ratio_t"] <= 0.55
    assert r["opt_state_bytes_stage0_t"] > r["opt_state_bytes_stage2_t"] > 0
    assert r["s_per_step_stage0_t"] > 0 and r["s_per_step_stage2_t"] > 0
    for stage in (0, 2):
        rows = (tmp_path / f"run-cpu-zero{stage}" / "stats.jsonl").read_text().splitlines()
        assert len(rows) == 2  # start-up tick, then the timed one
