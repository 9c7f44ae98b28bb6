"""Times the StyleGAN2 generator and a G+D training step at rosinality's config F.

    python benchmarks/networks.py            # CPU: 64 and 256 px, batch 4; CUDA: 1024 px, batch 4, ref and cuda ops
    python benchmarks/networks.py --quick    # 64 px, batch 2, one timed run each (CPU: about 1 minute)

Cases per resolution (channel multiplier 2, 512-d styles, 8-layer mapping):
- ``g_forward``: G(z) without autograd.
- ``train_step``: D step (logistic loss on one fake and one real batch) and
  G step (non-saturating loss), each a backward and an Adam step.
- ``train_step_reg``: the same plus both lazy regularisation passes (R1 on
  reals, path length on half a batch) in the same step: the cost of the
  steps that carry them (every 16th / 4th step in training).
Reports median ms, images per second and peak memory: on CUDA the peak
allocated by torch during the case; on CPU the process' peak resident size so
far (monotone, so cases run from small to large). The last line is one JSON
object; keys look like ``g_forward_img_s_64_cpu`` or
``train_step_img_s_1024_cuda_ref``.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ops  # noqa: E402
from benchmarks.ops import _median_ms, device_name  # noqa: E402
from trainer.networks import Discriminator, Generator  # noqa: E402


def make_models(res: int, device: torch.device, arch: dict | None = None):
    """Config F at ``res`` unless ``arch`` overrides generator and discriminator settings
    (channel_multiplier, channel_max, num_fp16_res: keys both configs share)."""
    torch.manual_seed(0)
    arch = arch or {}
    G = Generator(size=res, **arch).to(device)
    D = Discriminator(size=res, **{k: v for k, v in arch.items() if k not in ("style_dim", "n_mlp")}).to(device)
    g_opt = torch.optim.Adam(G.parameters(), lr=0.002, betas=(0.0, 0.99))
    d_opt = torch.optim.Adam(D.parameters(), lr=0.002, betas=(0.0, 0.99))
    return G, D, g_opt, d_opt


def train_step(G, D, g_opt, d_opt, real: torch.Tensor, reg: bool) -> None:
    n, zdim = real.shape[0], G.style_dim
    # D main: logistic loss on a fake and a real batch.
    fake = G(torch.randn(n, zdim, device=real.device)).detach()
    d_loss = F.softplus(D(fake)).mean() + F.softplus(-D(real)).mean()
    d_opt.zero_grad(set_to_none=True)
    d_loss.backward()
    d_opt.step()
    if reg:  # R1 on reals (gamma 10, interval 16)
        x = real.detach().requires_grad_()
        pred = D(x)
        (g,) = torch.autograd.grad(pred.sum(), x, create_graph=True)
        d_opt.zero_grad(set_to_none=True)
        (5.0 * g.square().sum([1, 2, 3]).mean() * 16 + 0 * pred.sum()).backward()
        d_opt.step()
    # G main: non-saturating loss.
    g_loss = F.softplus(-D(G(torch.randn(n, zdim, device=real.device)))).mean()
    g_opt.zero_grad(set_to_none=True)
    g_loss.backward()
    g_opt.step()
    if reg:  # path length on half the batch (weight 2, interval 4)
        ws = G.broadcast(G.mapping(torch.randn(max(1, n // 2), zdim, device=real.device)))
        img = G.synthesis(ws).img
        noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
        (g,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
        lengths = g.square().sum(2).mean(1).sqrt()
        g_opt.zero_grad(set_to_none=True)
        ((lengths - lengths.mean().detach()).square().mean() * 2 * 4 + 0 * img[0, 0, 0, 0]).backward()
        g_opt.step()


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bench_resolution(res, batch, device, impl, warmup, reps, arch: dict | None = None,
                     tag: str = "") -> dict[str, float]:
    """``arch`` as in make_models; ``tag`` ends every key (e.g. ``_fp16``)."""
    ops.set_default_impl(impl)
    G, D, g_opt, d_opt = make_models(res, device, arch)
    z = torch.randn(batch, G.style_dim, device=device)
    real = torch.randn(batch, 3, res, res, device=device)
    suffix = f"{res}_{device.type}" + (f"_{impl}" if device.type == "cuda" else "") + tag
    cases = {
        "g_forward": lambda: G(z),
        "train_step": lambda: train_step(G, D, g_opt, d_opt, real, reg=False),
        "train_step_reg": lambda: train_step(G, D, g_opt, d_opt, real, reg=True),
    }
    out = {}
    for name, fn in cases.items():
        print(f"[bench] {name} {res}px batch {batch} {device.type} impl={impl} ...", file=sys.stderr, flush=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if name == "g_forward":
            with torch.no_grad():
                ms = _median_ms(fn, device, warmup, reps)
        else:
            ms = _median_ms(fn, device, warmup, reps)
        out[f"{name}_ms_{suffix}"] = round(ms, 2)
        out[f"{name}_img_s_{suffix}"] = round(batch / ms * 1e3, 3)
        out[f"{name}_peak_mib_{suffix}"] = round(peak_mib(device), 1)
    ops.set_default_impl("auto")
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="64 px only, batch 2, no warm-up, 1 timed run")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--res", default=None, help="comma list (default: 64,256 on CPU; 1024 on CUDA)")
    p.add_argument("--batch", type=int, default=None, help="images per step (default 4; 2 with --quick)")
    p.add_argument("--reps", type=int, default=None, help="timed repeats (default 3 on CPU, 10 on CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 1; 0 with --quick)")
    args = p.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    default_res = "64" if args.quick else ("1024" if device.type == "cuda" else "64,256")
    resolutions = [int(r) for r in (args.res or default_res).split(",")]
    batch = args.batch or (2 if args.quick else 4)
    reps = args.reps or (1 if args.quick else 10 if device.type == "cuda" else 3)
    warmup = args.warmup if args.warmup is not None else (0 if args.quick else 1)
    impls = ["ref", "cuda"] if device.type == "cuda" else ["ref"]

    summary: dict = {"device": device_name(device), "torch": torch.__version__, "batch": batch,
                     "reps": reps, "warmup": warmup, "quick": args.quick}
    for res in sorted(resolutions):
        for impl in impls:
            summary.update(bench_resolution(res, batch, device, impl, warmup, reps))
    for k, v in summary.items():
        print(f"{k:<44} {v}")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
