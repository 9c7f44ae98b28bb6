"""Feeding crafted files to toonmix's commands: one subprocess per case, measured.

A case builds its crafted input in a scratch folder (small files: a bomb declares its size
rather than containing it) and names the command that reads it, the file its payload would
write if any code ran, and user files that must survive. ``run_attack`` runs the command in
its own process under a memory and time limit and reports the exit code, the peak resident
memory (``os.wait4``'s ru_maxrss of that one child), whether the marker appeared and which
user files changed. The tests (tests/test_untrusted_*.py) and ``benchmarks/untrusted.py``
share these cases.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
MEMORY_LIMIT = 6 << 30
"""Address-space cap of a case's process: a bomb that is not refused fails here, not the machine."""


@dataclass
class Attack:
    argv: list[str]
    """``[module, args...]``, run as ``python -m module args`` in the repository root."""
    marker: Path | None = None
    """The file the crafted payload writes if its code runs (None when the case carries no code)."""
    user_files: dict[Path, bytes] = field(default_factory=dict)
    """Files the user had before the command: each must still hold exactly these bytes."""
    expect_exit: int = 2
    """The exit code of a clean refusal."""
    expect_message: str = ""
    """A phrase the refusal's message (stderr) must contain, lower case."""
    timeout: float = 60.0
    """Seconds before the case counts as hung (and is killed)."""


@dataclass
class Case:
    name: str
    """Short id, used as the test id and in the benchmark's output."""
    build: Callable[[Path, contextlib.ExitStack], Attack]
    """Writes the crafted input below the folder; may start servers in the stack."""


@dataclass
class Result:
    name: str
    exit_code: int | None
    """None when the case hung and was killed."""
    peak_mb: float
    seconds: float
    code_executed: bool
    user_files_lost: list[str]
    stderr: str

    def refused_cleanly(self, attack: Attack) -> bool:
        return (self.exit_code == attack.expect_exit and not self.code_executed and not self.user_files_lost
                and attack.expect_message in self.stderr.lower() and "Traceback" not in self.stderr)


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_attack(name: str, attack: Attack) -> Result:
    """Runs the attack's command in a child process and measures it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    t0 = time.time()
    with open(os.devnull, "rb") as stdin, subprocess.Popen(
            [sys.executable, "-m", *attack.argv], cwd=ROOT, env=env, stdin=stdin, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, preexec_fn=_limit_memory) as proc:
        rc, rusage, stderr = _wait(proc, attack.timeout)
    lost = [str(p) for p, data in attack.user_files.items() if not p.is_file() or p.read_bytes() != data]
    return Result(name=name, exit_code=rc, peak_mb=rusage.ru_maxrss / 1024 if rusage else float("nan"),
                  seconds=time.time() - t0, code_executed=bool(attack.marker and attack.marker.exists()),
                  user_files_lost=lost, stderr=stderr)


def _wait(proc: subprocess.Popen, timeout: float) -> tuple[int | None, resource.struct_rusage | None, str]:
    """(exit code or None when killed for time, the child's own rusage, its stderr)."""
    chunks: list[bytes] = []
    deadline = time.time() + timeout
    os.set_blocking(proc.stderr.fileno(), False)
    killed = False
    while True:
        with contextlib.suppress(BlockingIOError, TypeError):
            if data := proc.stderr.read():
                chunks.append(data)
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.time() > deadline and not killed:
            proc.kill()
            killed = True
        time.sleep(0.05)
    with contextlib.suppress(BlockingIOError, TypeError):
        if data := proc.stderr.read():
            chunks.append(data)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    return (None if killed else proc.returncode), rusage, b"".join(chunks).decode(errors="replace")
