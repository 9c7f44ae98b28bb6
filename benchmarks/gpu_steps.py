"""The steps of ``benchmarks/gpu_check.py``, one per process: each prints one JSON object
of figures as its last line (``skip_reason`` when the step does not apply here, ``error``
beside the figures when it ran and found failures).

    python benchmarks/gpu_steps.py STEP --work DIR [--device cuda|cpu] [--tiny]

Steps: build, cuda_tests, ops, networks, train_gan, fid, restyle, zero (see gpu_check.py
for what each measures). ``--tiny`` runs each at plumbing sizes (16-64 px, a few
channels) so that the whole check runs on a CPU in about a minute; its figures say the
code ran, not how fast anything is.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Plumbing sizes for --tiny: the smallest networks the code accepts at a few channels.
TINY_NET = dict(channel_multiplier=0.0625, channel_max=16)
TINY_G = dict(size=16, style_dim=16, n_mlp=1, **TINY_NET)
TINY_E = dict(input_size=32, width=0.125, units=[1, 1, 1, 1])
TINY_TRAIN = ["model.channel_multiplier=0.0625", "model.channel_max=16", "model.style_dim=16", "model.n_mlp=1"]
# What the headline figures are measured on: config F at 1024 px, as NVlabs' and rosinality's anchors.
CONFIG_F_1024 = dict(size=1024, channel_multiplier=2.0, channel_max=512)
FP16_TOP4 = ["model.mixed_precision=fp16", "model.num_fp16_res=4"]


def step_build(device: str, tiny: bool, work: Path) -> dict:
    """Both CUDA extensions built (into $TOONMIX_EXTENSIONS_DIR) and probed on this GPU, timed."""
    if device != "cuda":
        return {"skip_reason": "the ops build only for a CUDA device; on the CPU they run their reference"}
    from ops import _build, bias_act, upfirdn2d

    out = {"nvcc": ".".join(map(str, _build.nvcc_release() or ())) or "not found", "arch": _build.gpu_arch()}
    for name, mod in (("upfirdn2d", upfirdn2d), ("bias_act", bias_act)):
        t = time.perf_counter()
        mod._plugin()  # raises OpsBuildError with the compiler's output
        out[f"{name}_build_s"] = round(time.perf_counter() - t, 1)
    return out


def step_cuda_tests(device: str, tiny: bool, work: Path) -> dict:
    """Every test marked ``cuda`` (slow ones included on a GPU); counts from pytest's JUnit XML."""
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if re.search(r"mark\.cuda\b", p.read_text()))
    xml = work / "cuda_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda",
           f"--junitxml={xml}", *files]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    print(r.stdout[-20000:] + r.stderr[-5000:], file=sys.stderr)
    if not xml.exists():
        raise RuntimeError(f"pytest wrote no report (exit {r.returncode})")
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    res = {"files": files, **counts, "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
           "failed": failed[:20]}
    if r.returncode not in (0, 5):  # 5: nothing collected
        raise StepFailed(f"{len(failed)} CUDA test(s) failed: {', '.join(failed[:5])}", res)
    return res


def step_ops(device: str, tiny: bool, work: Path) -> dict:
    """Both ops at a 1024 px step's shapes: cuda vs ref, forward and forward+backward; bias_act's
    bandwidth as a fraction of a device-to-device copy."""
    from benchmarks import ops as bench

    args = ["--device", device, "--batch", "1" if tiny else "4"]
    args += ["--shrink", "32", "--reps", "1"] if tiny else ["--reps", "10"]
    s = bench.main(args)
    out = {f"{op}_{impl}_{k}": v for op, per in s["totals_ms"].items() for impl, d in per.items() for k, v in d.items()}
    out.update({f"{op}_speedup_{k.replace('_ms', '')}": v
                for op, d in s.get("speedup_cuda_over_ref", {}).items() for k, v in d.items()})
    bw = s["bias_act_bandwidth"]
    out.update({"bias_act_GBps": bw["GBps"], "copy_GBps": bw["copy_GBps"], "bias_act_fraction_of_copy": bw["fraction_of_copy"],
                "batch": s["batch"], "shrink": s["shrink"]})
    return out


def step_networks(device: str, tiny: bool, work: Path) -> dict:
    """G forward and a G+D training step with R1 and path length at 1024 px: each op
    implementation, float32 and fp16 in the top 4 resolutions."""
    from benchmarks import networks as bench

    dev = torch.device(device)
    impls = ["ref", "cuda"] if device == "cuda" else ["ref"]
    precisions = {"": {}, "_fp16": {"num_fp16_res": 4}} if device == "cuda" else {"": {}}
    res, batch, warmup, reps, arch = (16, 2, 0, 1, TINY_NET) if tiny else (1024, 4, 1, 3, {})
    out = {}
    for impl in impls:
        for tag, prec in precisions.items():
            out.update(bench.bench_resolution(res, batch, dev, impl, warmup, reps, {**arch, **prec}, tag))
            if device == "cuda":
                torch.cuda.empty_cache()
    return out


def step_train_gan(device: str, tiny: bool, work: Path) -> dict:
    """``launch.train_gan`` from random weights, ADA on (p 0.2), two ticks of 16 steps, the second
    timed: s/kimg and peak memory at batch 32, or the largest of 16 and 8 that fits."""
    from benchmarks import train_gan as bench

    if tiny:
        r = bench.run_case(work, 16, device, 4, TINY_TRAIN, 8)
        return {"s_per_kimg": r["s_per_kimg"], "batch": 4, "gpu_mem_gib": r["gpu_mem_gib"]}
    shards = None
    for batch in (32, 16, 8):
        try:
            r = bench.run_case(work / f"b{batch}", 1024, device, batch, FP16_TOP4, 64, shards)
            return {"s_per_kimg": r["s_per_kimg"], "img_s": r["img_s"], "batch": batch, "gpu_mem_gib": r["gpu_mem_gib"],
                    "ops": r["ops"]}
        except bench.OutOfMemory as e:
            shards = e.shards
            print(f"[gpu_check] batch {batch} does not fit: {e}", file=sys.stderr)
        # Outside the handler, so the failed attempt's frames are gone: free its memory and its
        # peak, which the next attempt's figure would otherwise report.
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    raise RuntimeError("1024 px training did not fit at batch 8")


def step_fid(device: str, tiny: bool, work: Path) -> dict:
    """Inception feature extraction img/s at 1024 px, and sampling + extraction of a config-F
    generator, which projects the time of fid50k_full (50k generated images; reals are cached)."""
    from benchmarks import fid as bench

    if tiny:
        extract = bench.extract_case(device, 64, 2, 1)
        gen = bench.generate_and_extract_case(device, TINY_G, 2, 1)
    else:
        extract = bench.extract_case(device, 1024, 64, 10)
        gen = bench.generate_and_extract_case(device, CONFIG_F_1024, 32, 10)
    return {"extract_img_s": round(extract, 2), "gen_extract_img_s": round(gen, 2),
            "fid50k_full_projected_s": round(50_000 / gen, 1), "size": 64 if tiny else 1024}


def step_restyle(device: str, tiny: bool, work: Path) -> dict:
    """ReStyle inversion, 5 passes, batch 32: the IR-SE50 encoder over a config-F 1024 px generator."""
    from benchmarks import train_encoder as bench

    r = bench.invert_case(device, TINY_G, 2, 1, TINY_E) if tiny else bench.invert_case(device, CONFIG_F_1024, 32, 5)
    return {**r, "batch": 2 if tiny else 32, "passes": 5}


def step_zero(device: str, tiny: bool, work: Path) -> dict:
    """One process, ``dist.zero_stage=2`` (fp16 on a GPU): the GAN trainer's timed tick."""
    if importlib.util.find_spec("deepspeed") is None:
        return {"skip_reason": "DeepSpeed is not installed"}
    from benchmarks import train_gan, zero

    size, batch, arch, steps = (16, 4, TINY_TRAIN, 2) if tiny else (1024, 8, FP16_TOP4, 4)
    shards = train_gan.make_shards(work, size, 8 if tiny else 16)
    r = zero.run_stage(work, shards, 2, 1, device, batch, arch, steps)
    return {"s_per_step": round(r["s_per_step"], 4), "opt_state_bytes": r["opt_state_bytes"],
            "gpu_mem_gib": r["gpu_mem_gib"], "batch": batch, "fp16": not tiny}


STEPS = {"build": step_build, "cuda_tests": step_cuda_tests, "ops": step_ops, "networks": step_networks,
         "train_gan": step_train_gan, "fid": step_fid, "restyle": step_restyle, "zero": step_zero}


class StepFailed(RuntimeError):
    """A step that ran to the end and found failures: its figures are kept beside the error."""

    def __init__(self, message: str, figures: dict):
        super().__init__(message)
        self.figures = figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=list(STEPS))
    p.add_argument("--work", required=True, help="a folder for this step's files")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--tiny", action="store_true", help="plumbing sizes (see the module doc)")
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        figures = STEPS[args.step](args.device, args.tiny, work)
    except StepFailed as e:
        print(json.dumps({"error": str(e), **e.figures}))
        return 1
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
