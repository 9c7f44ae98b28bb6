"""Helpers for trainer tests: multi-process launches, run-folder stats, checkpoint comparison."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

ROOT = Path(__file__).resolve().parents[1]


def torchrun(module: str, nproc: int, argv: list[str], timeout: int = 400) -> subprocess.CompletedProcess:
    """``python -m <module> argv`` on ``nproc`` CPU processes (gloo); fails the test on a non-zero exit."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", module, *argv]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return r


def sigterm_during(module: str, nproc: int, argv: list[str], run_dir: Path, after_ticks: int = 2) -> str:
    """Starts ``module`` on ``nproc`` processes like ``torchrun`` and, once ``after_ticks`` ticks are
    logged, sends SIGTERM to every process (as Slurm and Kubernetes do): a step the test does not
    choose. Returns the output once all exited."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                             str(nproc), "-m", module, *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run_dir / "stats.jsonl").is_file() and len(stats(run_dir)) >= after_ticks):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    return proc.communicate(timeout=120)[0].decode()


def stats(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]


def latest_ckpt(run_dir: Path) -> str:
    return sorted(glob.glob(str(run_dir / "checkpoints/ckpt-*")))[-1]


def flat_checkpoint(ckpt: str, out: Path) -> dict:
    """Every value of a DCP checkpoint, flattened to dotted keys (independent of our loader)."""
    dcp_to_torch_save(ckpt, out)

    def walk(d, p=""):
        for k, v in d.items():
            yield from walk(v, f"{p}{k}.") if isinstance(v, dict) else [(p + str(k), v)]
    return dict(walk(torch.load(out, weights_only=False)))


def assert_same_final_state(a: Path, b: Path, tmp: Path, ranks: int) -> dict:
    """The latest checkpoints of runs ``a`` and ``b`` hold bitwise-equal values, and every rank's
    RNG and data position agree; returns a's flattened checkpoint."""
    fa = flat_checkpoint(latest_ckpt(a), tmp / "a.pt")
    fb = flat_checkpoint(latest_ckpt(b), tmp / "b.pt")
    assert set(fa) == set(fb)
    differ = [k for k in fa if not (torch.equal(fa[k], fb[k]) if torch.is_tensor(fa[k]) else fa[k] == fb[k])]
    assert differ == []
    for rank in range(ranks):
        ra = torch.load(Path(latest_ckpt(a)) / f"rank{rank:05d}.pt", weights_only=True)
        rb = torch.load(Path(latest_ckpt(b)) / f"rank{rank:05d}.pt", weights_only=True)
        assert torch.equal(ra["rng"]["cpu"], rb["rng"]["cpu"]) and ra.get("loader") == rb.get("loader")
    return fa
