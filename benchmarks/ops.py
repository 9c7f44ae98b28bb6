"""Times upfirdn2d and bias_act at the tensor shapes of a 1024px StyleGAN2 step.

    python benchmarks/ops.py            # batch 4 per GPU, every implementation available
    python benchmarks/ops.py --quick    # batch 1, fewer repeats (a CPU machine: < 2 minutes)

Shapes follow a rosinality/NVlabs 1024px config (channel multiplier 2, so 32
channels at 1024, 64 at 512, 128 at 256, 512 from 64 down); the generator blurs
after each transposed up-conv, the discriminator before each strided conv and
on its skip path, ToRGB upsamples the image, ADA resamples images with a 12-tap
wavelet filter, and every conv and linear layer ends in a bias + leaky ReLU.
Prints a table, then one JSON line (the last line) with median milliseconds per
op, shape and implementation for forward and forward+backward, per-op totals,
cuda/ref speedups and bias_act's achieved memory bandwidth.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ops import bias_act, upfirdn2d  # noqa: E402

BINOMIAL = [1, 3, 3, 1]
SYM6 = [0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
        0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
        -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148]

# name, shape without batch, filter taps, upfirdn2d keyword arguments
UPFIRDN2D_SHAPES = [
    ("G blur after up-conv 1024", (32, 1025, 1025), BINOMIAL, dict(padding=1)),
    ("G blur after up-conv 256", (128, 257, 257), BINOMIAL, dict(padding=1)),
    ("G ToRGB upsample 512->1024", (3, 512, 512), BINOMIAL, dict(up=2, padding=(2, 1))),
    ("D blur before down-conv 1024", (32, 1024, 1024), BINOMIAL, dict(padding=2)),
    ("D skip blur 1024", (32, 1024, 1024), BINOMIAL, dict(padding=1)),
    ("ADA upsample 1024->2048", (3, 1024, 1024), SYM6, dict(up=2, padding=(6, 5))),
    ("ADA downsample 2048->1024", (3, 2048, 2048), SYM6, dict(down=2, padding=(5, 5))),
]
# name, shape without batch
BIAS_ACT_SHAPES = [
    ("mapping fc", (512,)),
    ("G conv 64", (512, 64, 64)),
    ("G conv 256", (128, 256, 256)),
    ("D conv 512", (64, 512, 512)),
    ("G conv 1024", (32, 1024, 1024)),
]
BANDWIDTH_SHAPE = "G conv 1024"


def _timer(device: torch.device):
    """Returns f(fn) -> milliseconds of one call, with the device synchronised."""
    if device.type == "cuda":
        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
    else:
        def run(fn):
            t = time.perf_counter()
            fn()
            return (time.perf_counter() - t) * 1e3
    return run


def _median_ms(fn, device, warmup: int, reps: int) -> float:
    timer = _timer(device)
    for _ in range(warmup):
        timer(fn)
    return statistics.median(timer(fn) for _ in range(reps))


def _time_op(forward, inputs, device, warmup, reps) -> dict[str, float]:
    """Forward alone (no graph), and forward + backward with a fixed incoming gradient."""
    with torch.no_grad():
        fwd = _median_ms(lambda: forward(*inputs), device, warmup, reps)
    grads = [t.detach().requires_grad_() for t in inputs]
    dy = torch.randn_like(forward(*inputs))

    def fwd_bwd():
        torch.autograd.grad(forward(*grads), grads, dy)

    return {"fwd_ms": round(fwd, 4), "fwd_bwd_ms": round(_median_ms(fwd_bwd, device, warmup, reps), 4)}


def _scaled(shape: tuple, shrink: int) -> tuple:
    """``shape`` (channels first) with each spatial size divided by ``shrink`` (plumbing runs)."""
    return (shape[0], *(max(4, -(-s // shrink)) for s in shape[1:]))


def bench_upfirdn2d(impl, batch, dtype, device, warmup, reps, shrink=1):
    out = {}
    for name, shape, taps, kw in UPFIRDN2D_SHAPES:
        x = torch.randn(batch, *_scaled(shape, shrink), device=device, dtype=dtype)
        f = upfirdn2d.setup_filter(taps, device=device)
        out[name] = _time_op(lambda x: upfirdn2d.upfirdn2d(x, f, impl=impl, **kw), [x], device, warmup, reps)
        del x
    return out


def bench_bias_act(impl, batch, dtype, device, warmup, reps, shrink=1):
    out = {}
    for name, shape in BIAS_ACT_SHAPES:
        x = torch.randn(batch, *_scaled(shape, shrink), device=device, dtype=dtype)
        b = torch.randn(shape[0], device=device, dtype=dtype)
        out[name] = _time_op(lambda x, b: bias_act.bias_act(x, b, act="lrelu", impl=impl), [x, b],
                             device, warmup, reps)
        del x
    return out


def bias_act_bandwidth(impl, batch, dtype, device, fwd_ms, shrink=1) -> dict[str, float]:
    """Achieved GB/s of bias_act forward (read x, write y) and a plain copy as the practical peak."""
    shape = _scaled(dict(BIAS_ACT_SHAPES)[BANDWIDTH_SHAPE], shrink)
    x = torch.randn(batch, *shape, device=device, dtype=dtype)
    nbytes = 2 * x.numel() * x.element_size()
    y = torch.empty_like(x)
    copy_ms = _median_ms(lambda: y.copy_(x), device, 3, 10)
    res = {"tensor_MiB": _sig(x.numel() * x.element_size() / 2**20),
           "GBps": _sig(nbytes / fwd_ms / 1e6), "copy_GBps": _sig(nbytes / copy_ms / 1e6)}
    res["fraction_of_copy"] = round(res["GBps"] / res["copy_GBps"], 3)
    peak = peak_bandwidth_GBps(device)
    if peak:
        res.update(peak_GBps=_sig(peak), fraction_of_peak=round(res["GBps"] / peak, 3))
    return res


def _sig(v: float) -> float:
    """Four significant digits."""
    return float(f"{v:.4g}")


def peak_bandwidth_GBps(device: torch.device) -> float | None:
    """Theoretical DRAM bandwidth from the bus width and memory clock (double data rate)."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    bus_bits, clock_khz = getattr(props, "memory_bus_width", 0), getattr(props, "memory_clock_rate", 0)
    return 2 * bus_bits / 8 * clock_khz * 1e3 / 1e9 if bus_bits and clock_khz else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="batch 1, 1 warm-up and 3 timed repeats")
    p.add_argument("--batch", type=int, default=None, help="images per GPU (default 4; 1 with --quick)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--impls", default=None, help="comma list of ref,cuda (default: ref, plus cuda on a GPU)")
    p.add_argument("--reps", type=int, default=None, help="timed repeats (default 20 on GPU, 5 on CPU; 3 with --quick)")
    p.add_argument("--shrink", type=int, default=1, help="divide every spatial size by this (plumbing runs; default 1)")
    args = p.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    batch = args.batch or (1 if args.quick else 4)
    reps = args.reps or (3 if args.quick else 20 if device.type == "cuda" else 5)
    warmup = 1 if args.quick else 3
    impls = args.impls.split(",") if args.impls else (["ref", "cuda"] if device.type == "cuda" else ["ref"])

    results = {"upfirdn2d": {}, "bias_act": {}}
    for impl in impls:
        for op, bench in (("upfirdn2d", bench_upfirdn2d), ("bias_act", bench_bias_act)):
            print(f"[bench] {op} impl={impl} ...", file=sys.stderr, flush=True)
            for shape, t in bench(impl, batch, dtype, device, warmup, reps, args.shrink).items():
                results[op].setdefault(shape, {})[impl] = t

    totals = {op: {impl: {k: round(sum(r[impl][k] for r in shapes.values()), 3) for k in ("fwd_ms", "fwd_bwd_ms")}
                   for impl in impls} for op, shapes in results.items()}
    summary = {"device": device_name(device), "torch": torch.__version__, "dtype": args.dtype,
               "batch": batch, "quick": args.quick, "shrink": args.shrink, "reps": reps, "totals_ms": totals, "per_shape_ms": results}
    if "cuda" in impls and "ref" in impls:
        summary["speedup_cuda_over_ref"] = {
            op: {k: round(totals[op]["ref"][k] / totals[op]["cuda"][k], 2) for k in ("fwd_ms", "fwd_bwd_ms")}
            for op in totals}
    fast = "cuda" if "cuda" in impls else impls[0]
    summary["bias_act_bandwidth"] = dict(impl=fast, **bias_act_bandwidth(
        fast, batch, dtype, device, results["bias_act"][BANDWIDTH_SHAPE][fast]["fwd_ms"], args.shrink))

    _print_table(results, impls, summary)
    print(json.dumps(summary))
    return summary


def _print_table(results, impls, summary) -> None:
    print(f"device: {summary['device']}  dtype: {summary['dtype']}  batch: {summary['batch']}  "
          f"median of {summary['reps']}")
    head = "".join(f"{impl + ' fwd':>12}{impl + ' f+b':>12}" for impl in impls)
    for op, shapes in results.items():
        print(f"\n{op:<32}{head}")
        for shape, per in list(shapes.items()) + [("total", summary["totals_ms"][op])]:
            cells = "".join(f"{per[i]['fwd_ms']:>12.3f}{per[i]['fwd_bwd_ms']:>12.3f}" for i in impls)
            print(f"  {shape:<30}{cells}")
    bw = summary["bias_act_bandwidth"]
    peak = f", {bw['fraction_of_peak']:.0%} of the {bw['peak_GBps']} GB/s peak" if "peak_GBps" in bw else ""
    print(f"\nbias_act forward ({bw['impl']}, {bw['tensor_MiB']} MiB): {bw['GBps']} GB/s, "
          f"copy {bw['copy_GBps']} GB/s ({bw['fraction_of_copy']:.0%} of copy){peak}")
    if "speedup_cuda_over_ref" in summary:
        print(f"speedup cuda/ref: {summary['speedup_cuda_over_ref']}")


if __name__ == "__main__":
    main()
