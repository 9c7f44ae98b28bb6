"""Proves a GPU node in one command: CUDA build, CUDA tests and every headline benchmark.

    make gpu-check OUT=/tmp/gpu                                   # the same as:
    python benchmarks/gpu_check.py --out /tmp/gpu                 # one CUDA GPU, about 8 minutes
    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/g   # the plumbing, on a CPU, about a minute

Steps, each in its own process and time box; a failure or a timeout is recorded and the
next step runs (docs/gpu_check.md says what each figure means and its target):
  1. build       both CUDA ops built and probed on this GPU (seconds each)
  2. cuda_tests  every test marked ``cuda`` (pass/fail/skip counts, failing names)
  3. ops         upfirdn2d and bias_act at a 1024 px step's shapes: cuda vs ref, forward and
                 forward+backward; bias_act bandwidth as a fraction of a device copy
  4. networks    1024 px config F: G forward, G+D step with R1 and path length; ref/cuda ops,
                 float32 and fp16 in the top 4 resolutions
  5. train_gan   launch.train_gan at 1024 px from random weights, ADA on, batch 32 (or 16, 8):
                 s/kimg and peak memory
  6. fid         Inception extraction img/s at 1024 px; projected fid50k_full seconds
  7. restyle     ReStyle inversion (5 passes, batch 32) s/img
  8. zero        one GAN run at ZeRO stage 2 with fp16 (if DeepSpeed is installed)
Writes OUT/results.json (one key per figure, ``<step>.<figure>``, with the GPU, torch and
CUDA versions and each step's status) and OUT/log.txt (every step's output), and prints
the JSON as its last line. Exit status: 0 when no step failed, 1 when one did, 2 when
there is no CUDA GPU to check (without --device cpu).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.cases import child_env  # noqa: E402

STEP_SCRIPT = ROOT / "benchmarks" / "gpu_steps.py"
STOP_GRACE_S = 20  # after SIGTERM at a time box, before SIGKILL
# (step, time box in seconds on a GPU, on a CPU with --tiny). The boxes add up to more than the
# budget: most steps finish well inside theirs, and a slow one should not cost the rest.
STEPS = [("build", 240, 10), ("cuda_tests", 180, 30), ("ops", 90, 20), ("networks", 90, 20),
         ("train_gan", 180, 30), ("fid", 60, 25), ("restyle", 60, 20), ("zero", 90, 40)]


def environment(device: str) -> dict:
    """What the figures were measured on."""
    from ops import _build

    env = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "cpu_cores": os.cpu_count(), "gpu": None, "deepspeed": None,
           "nvcc": ".".join(map(str, _build.nvcc_release() or ())) or None}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_mem_gib=round(props.total_memory / 2**30, 1), gpu_count=torch.cuda.device_count(),
                   arch=f"sm_{props.major}{props.minor}")
    if importlib.util.find_spec("deepspeed"):
        from importlib.metadata import version
        env["deepspeed"] = version("deepspeed")
    return env


def run_step(name: str, box: float, args, log) -> dict:
    """``gpu_steps.py name`` in its own process group (killed whole at the time box)."""
    work = args.out / "work" / name
    shutil.rmtree(work, ignore_errors=True)  # a rerun into the same OUT measures afresh
    cmd = [sys.executable, str(STEP_SCRIPT), name, "--work", str(work), "--device", args.device]
    cmd += ["--tiny"] if args.tiny else []
    env = child_env(args.device, TOONMIX_EXTENSIONS_DIR=str(args.out / "extensions"))
    log.write(f"\n===== {name} (time box {box:.0f} s): {' '.join(cmd)}\n")
    log.flush()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
                            start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=box)
    except subprocess.TimeoutExpired:
        # SIGTERM first: torchrun passes it on to its workers, which run in sessions of their
        # own that a kill of this group would not reach (a trainer saves, then exits).
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            stdout, _ = proc.communicate(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, _ = proc.communicate()
        log.write(stdout)
        return {"status": "timeout", "seconds": round(time.perf_counter() - start, 1),
                "error": f"killed at its time box of {box:.0f} s"}
    seconds = round(time.perf_counter() - start, 1)
    log.write(stdout)
    lines = stdout.strip().splitlines()
    try:
        figures = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        figures = {}
    if proc.returncode != 0:
        log.flush()
        error = figures.pop("error", "") or _last_error(args.out) or f"exit {proc.returncode}"
        return {"status": "failed", "seconds": seconds, "error": error, "figures": figures}
    if "skip_reason" in figures:
        return {"status": "skipped", "seconds": seconds, "reason": figures.pop("skip_reason")}
    return {"status": "ok", "seconds": seconds, "figures": figures}


def _last_error(out: Path) -> str:
    """The last line of log.txt that names an error (the step's own traceback ends there)."""
    text = (out / "log.txt").read_text(errors="replace").splitlines()
    return next((line.strip() for line in reversed(text) if "Error" in line or "error" in line), "")[:500]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for results.json, log.txt and the steps' files")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cuda (default), or cpu with --tiny")
    p.add_argument("--tiny", action="store_true", help="every step at plumbing sizes (CPU: about a minute)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="wall-clock budget for all steps (default 480 on a GPU, 90 with --tiny); a step "
                        "gets the smaller of its time box and what is left, none below 10 s")
    p.add_argument("--steps", default=None, help="comma list of steps to run (default: all, in order)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        build = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
        print(f"error: no CUDA GPU found: torch {torch.__version__} ({build}) sees none. On a GPU node check "
              "nvidia-smi and that this Python's torch is a CUDA build; for the plumbing alone run: "
              "python benchmarks/gpu_check.py --device cpu --tiny --out DIR", file=sys.stderr)
        return 2
    if args.device == "cpu" and not args.tiny:
        print("error: --device cpu runs only at --tiny sizes (the 1024 px figures are GPU figures)", file=sys.stderr)
        return 2
    wanted = args.steps.split(",") if args.steps else [s for s, _, _ in STEPS]
    unknown = set(wanted) - {s for s, _, _ in STEPS}
    if unknown:
        print(f"error: unknown step(s) {sorted(unknown)}; steps: {[s for s, _, _ in STEPS]}", file=sys.stderr)
        return 2
    args.out = args.out.resolve()  # the steps run from the repository root
    args.out.mkdir(parents=True, exist_ok=True)
    budget = args.budget_s or (90.0 if args.tiny else 480.0)
    results: dict = {**environment(args.device), "tiny": args.tiny, "budget_s": budget, "steps": {}}
    start = time.perf_counter()
    with open(args.out / "log.txt", "w") as log:
        log.write(json.dumps({k: v for k, v in results.items() if k != "steps"}) + "\n")
        for name, gpu_box, tiny_box in STEPS:
            if name not in wanted:
                continue
            left = budget - (time.perf_counter() - start)
            if left < 10:
                results["steps"][name] = {"status": "skipped", "reason": f"out of time ({budget:.0f} s budget spent)"}
                continue
            print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
            r = run_step(name, min(tiny_box if args.tiny else gpu_box, left), args, log)
            for key, value in r.pop("figures", {}).items():
                results[f"{name}.{key}"] = value
            results["steps"][name] = r
            print(f"[gpu_check] {name}: {r['status']} in {r.get('seconds', 0):.1f} s"
                  + (f" ({r.get('error') or r.get('reason')})" if r["status"] != "ok" else ""), file=sys.stderr,
                  flush=True)
    results["wall_s"] = round(time.perf_counter() - start, 1)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results))
    return 1 if any(s["status"] in ("failed", "timeout") for s in results["steps"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
