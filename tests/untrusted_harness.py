"""Feeding crafted files to toonmix's commands: one subprocess per case, measured.

A case builds its crafted input in a scratch folder (small files: a bomb declares its size
rather than containing it) and names the command that reads it, the file its payload would
write if any code ran, and user files that must survive. ``run_attack`` runs the command in
its own process under a memory and time limit and reports the exit code, the peak resident
memory (``os.wait4``'s ru_maxrss of that one command, read by a small launcher process), whether the marker appeared and which
user files changed. The tests (tests/test_untrusted_*.py) and ``benchmarks/untrusted.py``
share these cases.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
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
    slow: bool = False
    """Run only by `make test-all` and the benchmark: the fast suite keeps one case per kind of file."""


def params(cases: list[Case]) -> list:
    """The cases as pytest parameters, the slow ones marked slow."""
    import pytest

    return [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.slow else []) for c in cases]


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


# A child's ru_maxrss includes the resident size of the process that started it (Linux
# carries it across exec), so a small launcher process starts the command and reports the
# command's own peak. The command caps its address space, then runs as `python -m` would.
_RUN = ("import resource, runpy, sys; "
        "resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1]))); "
        "sys.argv = sys.argv[2:]; runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)")
_LAUNCH = ("import json, os, subprocess, sys; "
           "p = subprocess.Popen([sys.executable, '-c', sys.argv[1], *sys.argv[3:]]); "
           "_, status, ru = os.wait4(p.pid, 0); rc = os.waitstatus_to_exitcode(status); "
           "open(sys.argv[2], 'w').write(json.dumps({'rc': rc, 'maxrss_kb': ru.ru_maxrss})); sys.exit(rc % 256)")


def run_attack(name: str, attack: Attack) -> Result:
    """Runs the attack's command in a child process and measures it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "rusage.json"
        with open(os.devnull, "rb") as stdin, subprocess.Popen(
                [sys.executable, "-c", _LAUNCH, _RUN, str(report), str(MEMORY_LIMIT), *attack.argv], cwd=ROOT,
                env=env, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                start_new_session=True) as proc:
            stderr, hung = _communicate(proc, attack.timeout)
        measured = json.loads(report.read_text()) if report.is_file() else None
    rc = None if hung or measured is None else measured["rc"]
    peak_mb = measured["maxrss_kb"] / 1024 if measured else float("nan")
    lost = [str(p) for p, data in attack.user_files.items() if not p.is_file() or p.read_bytes() != data]
    return Result(name=name, exit_code=rc, peak_mb=peak_mb, seconds=time.time() - t0,
                  code_executed=bool(attack.marker and attack.marker.exists()), user_files_lost=lost,
                  stderr=stderr)


def _communicate(proc: subprocess.Popen, timeout: float) -> tuple[str, bool]:
    """(stderr, whether it hung): past ``timeout`` the launcher and the command are killed."""
    try:
        _, err = proc.communicate(timeout=timeout)
        return err.decode(errors="replace"), False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher's session: the command too
        _, err = proc.communicate()
        return err.decode(errors="replace"), True
