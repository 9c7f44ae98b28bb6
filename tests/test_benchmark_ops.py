"""benchmarks/ops.py: the table and the JSON line, on tiny stand-in shapes."""

from __future__ import annotations

import json

import benchmarks.ops as bench


def test_quick_run_prints_json_with_every_op_and_impl(monkeypatch, capsys):
    monkeypatch.setattr(bench, "UPFIRDN2D_SHAPES", [
        ("tiny blur", (2, 9, 9), bench.BINOMIAL, dict(padding=1)),
        ("tiny up", (2, 8, 8), bench.SYM6, dict(up=2, padding=(6, 5)))])
    monkeypatch.setattr(bench, "BIAS_ACT_SHAPES", [("tiny fc", (16,)), (bench.BANDWIDTH_SHAPE, (4, 8, 8))])
    summary = bench.main(["--quick", "--device", "cpu", "--reps", "2"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == summary
    assert summary["device"].startswith("CPU") and summary["batch"] == 1
    for op, shapes in (("upfirdn2d", ["tiny blur", "tiny up"]), ("bias_act", ["tiny fc", bench.BANDWIDTH_SHAPE])):
        assert sorted(summary["per_shape_ms"][op]) == sorted(shapes)
        total = summary["totals_ms"][op]["ref"]
        assert 0 < total["fwd_ms"] and 0 < total["fwd_bwd_ms"]
        per = summary["per_shape_ms"][op]
        assert abs(sum(v["ref"]["fwd_ms"] for v in per.values()) - total["fwd_ms"]) < 1e-2
    assert summary["bias_act_bandwidth"]["GBps"] > 0
