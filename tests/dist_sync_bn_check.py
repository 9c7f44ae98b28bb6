"""Run by test_encoders under torchrun (2 processes, gloo): SyncBN on half batches vs BatchNorm2d on all.

Each rank normalises its half of a batch with GlobalBatchNorm2d; the outputs,
the input gradients, the averaged weight gradients and the running statistics
must equal plain BatchNorm2d applied to the whole batch in one process.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from trainer.encoder.sync_bn import convert_batchnorm


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, 4, 4, generator=g) * 3 + 1
    w = torch.randn(6, 5, 4, 4, generator=g)  # a non-uniform upstream gradient
    ref = nn.Sequential(nn.BatchNorm2d(5))
    with torch.no_grad():
        ref[0].weight.uniform_(0.5, 1.5, generator=g)
        ref[0].bias.uniform_(-1, 1, generator=g)
    mine = convert_batchnorm(nn.Sequential(nn.BatchNorm2d(5)))
    mine.load_state_dict(ref.state_dict())
    assert type(mine[0]).__name__ == "GlobalBatchNorm2d"

    xr = x.clone().requires_grad_(True)
    yr = ref(xr)  # once: every forward in training mode moves the running statistics
    (yr * w).sum().div(6).backward()  # the global-batch mean of a per-sample loss

    part = slice(rank * 3, rank * 3 + 3)
    xm = x[part].clone().requires_grad_(True)
    y = mine(xm)
    (y * w[part]).sum().div(3).backward()  # this rank's mean; ranks average their gradients
    for p in mine.parameters():
        dist.all_reduce(p.grad)
        p.grad /= world

    torch.testing.assert_close(y, yr[part].detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(xm.grad, xr.grad[part] * 2, atol=1e-5, rtol=1e-5)  # d(rank mean)/dx = 2 d(global mean)/dx
    torch.testing.assert_close(mine[0].weight.grad, ref[0].weight.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine[0].bias.grad, ref[0].bias.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine[0].running_mean, ref[0].running_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine[0].running_var, ref[0].running_var, atol=1e-5, rtol=1e-5)
    dist.barrier()
    if rank == 0:
        (out / "ok").write_text(str(world))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
