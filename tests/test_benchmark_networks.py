"""benchmarks/networks.py: the cases run and the JSON line carries the named keys."""

from __future__ import annotations

import json

import torch

import benchmarks.networks as bench
from trainer.networks import Discriminator, Generator


def test_quick_run_reports_forward_and_train_step(monkeypatch, capsys):
    def tiny(res, device, arch=None):
        G = Generator(size=res, style_dim=8, n_mlp=1, channel_max=4).to(device)
        D = Discriminator(size=res, channel_max=4).to(device)
        return G, D, torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())

    monkeypatch.setattr(bench, "make_models", tiny)
    summary = bench.main(["--quick", "--device", "cpu", "--res", "16", "--reps", "1"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == summary
    for case in ("g_forward", "train_step", "train_step_reg"):
        assert summary[f"{case}_img_s_16_cpu"] > 0
        assert abs(summary[f"{case}_img_s_16_cpu"] - 2 / summary[f"{case}_ms_16_cpu"] * 1e3) < 1e-2 * summary[f"{case}_img_s_16_cpu"] + 1e-3
        assert summary[f"{case}_peak_mib_16_cpu"] > 0


def test_train_step_updates_both_networks():
    G = Generator(size=8, style_dim=8, n_mlp=1, channel_max=4)
    D = Discriminator(size=8, channel_max=4)
    g_opt, d_opt = torch.optim.Adam(G.parameters(), lr=0.01), torch.optim.Adam(D.parameters(), lr=0.01)
    g0 = G.conv1.conv.weight.clone()
    d0 = D.final_linear[1].weight.clone()
    bench.train_step(G, D, g_opt, d_opt, torch.randn(2, 3, 8, 8), reg=True)
    assert not torch.equal(g0, G.conv1.conv.weight) and not torch.equal(d0, D.final_linear[1].weight)
