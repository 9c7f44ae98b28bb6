"""Stopping a run on request: signals, a stop file and the launcher's death, agreed by every rank.

Clusters end jobs by signalling them (Slurm's time-limit warning, preemption, a
Kubernetes eviction, Ctrl-C). A trainer that dies where it stands loses every step
since its last checkpoint, so a request only sets a flag; the loop asks
``StopRequest.agreed`` after each step, which all-reduces the flags so that every
rank stops after the same step (no rank waits in a collective for one that left).
The loop then writes a checkpoint and raises ``Stopped``; the command exits with
``EXIT_REQUEUE`` (75, EX_TEMPFAIL), which the Slurm scripts read as "requeue me".

Requests:
- the signals in ``run.stop_signals`` (default SIGTERM, SIGUSR1, SIGINT); a second
  signal while the checkpoint is written is logged and otherwise ignored, so it
  cannot leave half a checkpoint (the checkpoint is only valid once complete anyway);
- the file ``run.stop_file`` or ``$TOONMIX_STOP_FILE`` appearing (rank 0 looks at most
  once a second): a request that reaches every node without relying on a launcher
  to forward signals (torchrun's agent does not forward SIGUSR1);
- the launcher dying (``accelerate launch``, torchrun, the demo's launcher): on Linux the
  kernel sends SIGTERM to a trainer whose parent exits (PR_SET_PDEATHSIG), and every
  step checks the parent too, so no trainer keeps writing a run folder on its own. A
  trainer started directly from a shell (no launcher) is left alone: ``nohup`` runs
  outlive their shell by design.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

EXIT_REQUEUE = 75
"""Exit status of a run stopped on request after a complete checkpoint: requeue it."""
STOP_FILE_ENV = "TOONMIX_STOP_FILE"
WATCH_PARENT_ENV = "TOONMIX_WATCH_PARENT"
PR_SET_PDEATHSIG = 1


class Stopped(Exception):
    """Raised by a training loop once it saved after an agreed stop request."""

    def __init__(self, reason: str, checkpoint: str | None):
        super().__init__(f"stopped on request ({reason}); checkpoint {checkpoint}")
        self.reason, self.checkpoint = reason, checkpoint


def signal_numbers(names: list[str]) -> list[signal.Signals]:
    """``["SIGTERM", "USR1"]`` -> signals; ValueError naming an unknown one."""
    out = []
    for name in names:
        key = name.upper() if name.upper().startswith("SIG") else "SIG" + name.upper()
        if not hasattr(signal.Signals, key):
            raise ValueError(f"run.stop_signals: unknown signal {name!r} (e.g. SIGTERM, SIGUSR1, SIGINT)")
        out.append(signal.Signals[key])
    return out


def die_with_parent() -> None:
    """Asks the kernel for SIGTERM when this process's parent exits (Linux; elsewhere a no-op).
    Also usable as Popen's ``preexec_fn``: the setting survives exec."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass


def launched_by_a_launcher() -> bool:
    """``$TOONMIX_WATCH_PARENT`` (1/0) when set; else whether a launcher started this process:
    torchrun (and accelerate's multi-process launch) set TORCHELASTIC_RUN_ID, accelerate's
    single-process launcher sets ACCELERATE_MIXED_PRECISION."""
    forced = os.environ.get(WATCH_PARENT_ENV)
    if forced is not None:
        return forced.strip().lower() in ("1", "true", "yes")
    return "TORCHELASTIC_RUN_ID" in os.environ or "ACCELERATE_MIXED_PRECISION" in os.environ


class StopRequest:
    """This process's stop flag, set by signals, a stop file or the launcher's death."""

    def __init__(self, signals: list[str], stop_file: str | None = None, poll_s: float = 1.0):
        self.signals = signal_numbers(signals)
        self.stop_file = os.environ.get(STOP_FILE_ENV) or stop_file
        self.poll_s = poll_s
        self.reason: str | None = None
        self.saving = False
        self._next_poll = 0.0
        self._previous: dict[signal.Signals, object] = {}
        self._parent: int | None = None

    def install(self) -> StopRequest:
        """Takes over the configured signals (main thread only) and asks for SIGTERM when the
        parent process exits."""
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        self._watch_parent()
        return self

    def uninstall(self) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        self._previous.clear()

    def _on_signal(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.reason is None:
            self.reason = name
            print(f"[stop] {name}: finishing this step, then a checkpoint", file=sys.stderr, flush=True)
        else:  # the checkpoint in progress is finished; a kill -9 is the way to skip it
            state = "writing the checkpoint" if self.saving else f"already stopping ({self.reason})"
            print(f"[stop] {name} ignored: {state}", file=sys.stderr, flush=True)

    def _watch_parent(self) -> None:
        if not launched_by_a_launcher():
            return
        self._parent = os.getppid()
        die_with_parent()  # where it is unavailable, only the per-step check in local() sees it

    def local(self) -> bool:
        """Whether this process has a reason to stop (signal, stop file, orphaned)."""
        if self.reason is None and self._parent is not None and os.getppid() != self._parent:
            self.reason = "launcher exited"
        if self.reason is None and self.stop_file and time.monotonic() >= self._next_poll:
            self._next_poll = time.monotonic() + self.poll_s
            if Path(self.stop_file).exists():
                self.reason = f"stop file {self.stop_file}"
        return self.reason is not None

    def agreed(self, dist) -> bool:
        """True on every rank when any rank has a reason to stop (one small all-reduce)."""
        stop = dist.any_flag(self.local())
        if stop and self.reason is None:
            self.reason = "another rank stopped"
        return stop


def stop_point(stop: StopRequest | None, dist, save: Callable[[], str], info: Callable[[str], None]) -> None:
    """Called by a loop after each finished step: when the ranks agree to stop, writes a
    checkpoint and raises Stopped."""
    if stop is None or not stop.agreed(dist):
        return
    stop.saving = True
    path = save()
    info(f"stopped on request ({stop.reason}) after the checkpoint {path}; exit status {EXIT_REQUEUE}: "
         f"run the same command with --resume auto to continue")
    raise Stopped(stop.reason, path)
