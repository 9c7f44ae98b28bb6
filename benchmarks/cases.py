"""Running a benchmark's CUDA cases in their own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def child_env(device: str, **extra: str) -> dict[str, str]:
    """This process's environment for a child that runs repository code on ``device``: the
    repository first on PYTHONPATH (the node's own entries kept after it), and
    ACCELERATE_USE_CPU set for "cpu" and removed otherwise (a CPU case's setting must not
    leak into a CUDA one)."""
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    if device == "cpu":
        env["ACCELERATE_USE_CPU"] = "1"
    return {**env, **extra}


def run_cuda_cases(script: str) -> dict:
    """``script --cuda-only`` in a fresh process; returns its JSON result.

    accelerate's process state is a per-process singleton: once a CPU case has
    built it with ACCELERATE_USE_CPU=1, a later case in the same process would
    silently train on the CPU too.
    """
    r = subprocess.run([sys.executable, script, "--cuda-only"], env=child_env("cuda"), capture_output=True, text=True)
    sys.stderr.write(r.stderr)
    if r.returncode != 0:
        raise RuntimeError(f"{script} --cuda-only failed (exit {r.returncode})")
    return json.loads(r.stdout.strip().splitlines()[-1])


def finish(results: dict, args, script: str) -> dict:
    """Adds the CUDA cases (own process) unless --quick/--cuda-only, prints the JSON line."""
    import torch

    if not args.quick and not args.cuda_only and torch.cuda.is_available():
        results.update(run_cuda_cases(script))
    print(json.dumps(results))
    return results
