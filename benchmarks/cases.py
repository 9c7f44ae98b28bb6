"""Running a benchmark's CUDA cases in their own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_cuda_cases(script: str) -> dict:
    """``script --cuda-only`` in a fresh process; returns its JSON result.

    accelerate's process state is a per-process singleton: once a CPU case has
    built it with ACCELERATE_USE_CPU=1, a later case in the same process would
    silently train on the CPU too.
    """
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    r = subprocess.run([sys.executable, script, "--cuda-only"], env=env, capture_output=True, text=True)
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
