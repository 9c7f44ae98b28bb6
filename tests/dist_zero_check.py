"""Run by torchrun (gloo, 2 processes) from test_zero.py: ``OUT``.

For each DeepSpeed setting (ZeRO-1, ZeRO-2, ZeRO-2 with the optimizer offloaded) it trains
a small MLP beside a copy under the trainers' own all-reduce (``AllReduceStep``), both
fed the same per-rank data in two micro-batches per step, and records the largest
differences of: the weights after one SGD step (lr 1: the step is the averaged gradient);
a checkpoint's state taken before any step, and the weights two steps later;
the weights and the checkpointed Adam state after three Adam steps, and the bytes of Adam
state each rank holds; the same after the
all-reduce's checkpoint is loaded into a fresh engine and both step once more; a ZeRO
checkpoint folder loaded into the all-reduce optimizer; and an fp16-style loss scale's
overflow step, which both must skip. Writes OUT/rank{k}.json.
"""

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainer.run.checkpoint import CheckpointManager  # noqa: E402
from trainer.run.distributed import Dist  # noqa: E402
from trainer.run.loss_scale import DynamicLossScale  # noqa: E402
from trainer.run.zero import DistConfig, make_step  # noqa: E402

SETTINGS = {"zero1": DistConfig(zero_stage=1), "zero2": DistConfig(zero_stage=2, reduce_bucket_size=200),
            "zero2_offload": DistConfig(zero_stage=2, offload_optimizer="cpu")}


def net0() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))


def pair(cfg: DistConfig, dist: Dist, opt_cls, scale: bool = False, **kw):
    """(plain net, its step), (ZeRO net, its step) from the same weights."""
    out = []
    for c in (DistConfig(), cfg):
        net = net0()
        params = list(net.parameters())
        out.append((net, make_step(c, "toy", net, params, opt_cls(params, **kw), DynamicLossScale(scale), dist, True)))
    return out


def train(steps, rank: int, n: int, seed: int, loss_fn=None) -> list[bool]:
    """``n`` optimizer steps on every (net, step) in ``steps``, two micro-batches each, the same data."""
    stepped = []
    for i in range(n):
        for net, st in steps:
            g = torch.Generator().manual_seed(seed + 100 * i + rank)
            st.zero_grad()
            for _ in range(2):
                x = torch.randn(8, 16, generator=g)
                loss = (loss_fn or (lambda y: y.square().mean() + net(x * 0.5).sin().mean()))(net(x))
                st.backward(loss * st.scale.scale)
            stepped.append(st.step())
    return stepped


def max_diff(a, b) -> float:
    """Largest difference over two nested dicts of tensors (names must match)."""
    if isinstance(a, dict):
        assert set(a) == set(b), (sorted(a), sorted(b))
        return max([max_diff(a[k], b[k]) for k in a] or [0.0])
    if isinstance(a, list):
        assert len(a) == len(b)
        return max([max_diff(x, y) for x, y in zip(a, b)] or [0.0])
    if torch.is_tensor(a):
        return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    assert a == b, (a, b)
    return 0.0


def weights(net) -> dict:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def check(name: str, cfg: DistConfig, dist: Dist, out: Path) -> dict:
    r = {}
    (p, ps), (z, zs) = pair(cfg, dist, torch.optim.SGD, lr=1.0)
    train([(p, ps), (z, zs)], dist.rank, 1, 1)
    r["sgd_step"] = max_diff(weights(p), weights(z))

    betas = (0.0, 0.99)
    (p, ps), (z, zs) = pair(cfg, dist, torch.optim.Adam, lr=1e-3, betas=betas)
    train([(p, ps), (z, zs)], dist.rank, 3, 2)
    r["adam_weights"] = max_diff(weights(p), weights(z))
    r["adam_state"] = max_diff(ps.state().state_dict(), zs.state().state_dict())
    r["adam_state_keys"] = sorted(next(iter(zs.state().state_dict()["state"].values())))
    r["state_bytes"] = [ps.state_bytes(), zs.state_bytes()]  # this rank's optimizer-state tensors

    # The all-reduce's state into a fresh engine (never stepped), then one more step each.
    (_, _), (f, fs) = pair(cfg, dist, torch.optim.Adam, lr=1e-3, betas=betas)
    f.load_state_dict(p.state_dict())
    fs.state().load_state_dict(ps.state().state_dict())
    train([(p, ps), (f, fs)], dist.rank, 1, 3)
    r["resumed_weights"] = max_diff(weights(p), weights(f))
    r["resumed_state"] = max_diff(ps.state().state_dict(), fs.state().state_dict())

    # A checkpoint folder written under ZeRO, read by the all-reduce trainer's optimizer.
    mgr = CheckpointManager(str(out / f"ckpt-{name}"), rank=dist.rank, world=dist.world)
    mgr.save(1, {"net": z, "opt": zs.state()}, {"rank": torch.tensor(dist.rank)}, {"world": dist.world})
    (q, qs), _ = pair(cfg, dist, torch.optim.Adam, lr=1e-3, betas=betas)
    mgr.load("latest", {"net": q, "opt": qs.state()})
    r["folder_state"] = max_diff(zs.state().state_dict(), qs.state().state_dict())
    r["folder_weights"] = max_diff(weights(z), weights(q))

    # A checkpoint written before the first step (an early stop, an fp16 overflow at the start)
    # gives both optimizers the same state to continue from.
    (p, ps), (z, zs) = pair(cfg, dist, torch.optim.Adam, lr=1e-3, betas=betas)
    saved = [ps.state().state_dict(), zs.state().state_dict()]
    r["early_state"] = max_diff(*saved)
    train([(p, ps), (z, zs)], dist.rank, 2, 6)
    r["early_weights"] = max_diff(weights(p), weights(z))

    # fp16-style loss scale: an overflowing step is skipped by both and halves both scales.
    (p, ps), (z, zs) = pair(cfg, dist, torch.optim.Adam, scale=True, lr=1e-3, betas=betas)
    r["scaled_stepped"] = train([(p, ps), (z, zs)], dist.rank, 1, 4)
    before = weights(z)
    r["overflow_stepped"] = train([(p, ps), (z, zs)], dist.rank, 1, 5, lambda y: y.sum() * float("inf"))
    r["overflow_moved"] = max_diff(before, weights(z))
    r["scales"] = [ps.scale.scale, zs.scale.scale]
    r["scaled_weights"] = max_diff(weights(p), weights(z))
    return r


def main(out: str) -> None:
    os.environ.setdefault("ACCELERATE_USE_CPU", "1")
    dist = Dist()
    results = {name: check(name, cfg, dist, Path(out)) for name, cfg in SETTINGS.items()}
    Path(out, f"rank{dist.rank}.json").write_text(json.dumps(results))
    dist.close()


if __name__ == "__main__":
    main(sys.argv[1])
