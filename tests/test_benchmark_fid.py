"""benchmarks/fid.py: the timed cases run the real detector, generator sampling and Fréchet distance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import benchmarks.fid as bench


class Tiny(nn.Module):
    """Stands in for Inception's cost (the case wraps whatever network it is given)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2:] == (299, 299)  # the detector's preprocessing ran
        return x.mean(dim=(2, 3)).repeat(1, 8)


def test_extract_case_times_the_detector():
    assert bench.extract_case("cpu", 64, 2, 2, Tiny()) > 0


def test_frechet_case_agrees_with_sqrtm():
    r = bench.frechet_case(dim=64, n=256, reps=2)
    assert r["frechet_s"] > 0 and r["sqrtm_s"] > 0
    assert r["fid"] == pytest.approx(r["fid_sqrtm"], rel=1e-9)


def test_generate_and_extract_case(monkeypatch):
    monkeypatch.setattr(bench, "InceptionV3", Tiny)
    arch = dict(size=16, style_dim=32, n_mlp=2, channel_multiplier=0.0625, channel_max=16)
    assert bench.generate_and_extract_case("cpu", arch, 2, 2) > 0
