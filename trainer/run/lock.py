"""One writer per output folder: a lock file naming its holder (host, pid, start time).

Two trainers in one run folder interleave checkpoints and prune each other's; two
``make_shards`` in one output folder rewrite each other's shards. A run takes
``<folder>/.lock.json`` when it starts and removes it when it ends. The file is
created with O_EXCL, so exactly one of two starters gets it. A lock left by a
process that no longer exists on this host (kill -9, OOM, a node reboot's
leftovers) is stale: the next run takes it over and says so. A lock held on
another host cannot be checked from here: the run is refused with the holder's
name, and the message says which file to delete once that job is known to be gone.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Callable

LOCK_NAME = ".lock.json"
"""Hidden: make_shards and crawl count any other file in their output as someone else's."""


class LockedError(RuntimeError):
    """Another live process holds the folder."""


def process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None if no such process or
    only its zombie is left. Tells a live process from a new one that reused its pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else fields[19]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "unknown"  # alive, start time unreadable (no /proc)


def _holder_alive(holder: dict) -> bool | None:
    """True/False on this host, None when the holder runs elsewhere (cannot tell)."""
    if holder.get("host") != socket.gethostname():
        return None
    try:
        started = process_start(int(holder["pid"]))
    except (KeyError, TypeError, ValueError):
        return False  # not a lock this code wrote: treated as stale
    return started is not None and started in ("unknown", holder.get("proc_start"))


def describe(holder: dict) -> str:
    return (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"
            f" ({holder.get('what', '?')})")


class FolderLock:
    """``with FolderLock(folder, "train_gan"):`` holds ``folder`` for this process."""

    def __init__(self, folder: str | Path, what: str, log: Callable[[str], None] = print):
        self.path = Path(folder) / LOCK_NAME
        self.what, self.log = what, log
        self.token = uuid.uuid4().hex

    def _record(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "proc_start": process_start(os.getpid()),
                "since": time.strftime("%Y-%m-%d %H:%M:%S"), "what": self.what, "token": self.token}

    def acquire(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._take_over_if_stale():
                    continue  # it vanished meanwhile: try to create it again
                return self
            with os.fdopen(fd, "w") as f:
                json.dump(self._record(), f)
            return self
        raise LockedError(f"{self.path}: could not take the lock (it keeps changing hands)")

    def _take_over_if_stale(self) -> bool:
        """True once this process holds the lock in place of a dead holder; LockedError when
        the holder lives (or cannot be checked); False when the file disappeared."""
        try:
            holder = json.loads(self.path.read_text())
        except FileNotFoundError:
            return False
        except (OSError, ValueError):
            holder = {}  # unreadable (a crash while writing it): nobody can be holding it
        alive = _holder_alive(holder)
        if alive is None:
            raise LockedError(f"{self.path.parent} is in use by {describe(holder)}; two writers would overwrite "
                              f"each other. If that job is gone, delete {self.path} and start again.")
        if alive:
            raise LockedError(f"{self.path.parent} is in use by {describe(holder)}; wait for it to end or stop "
                              f"it first (two writers would overwrite each other)")
        tmp = self.path.with_name(f".{LOCK_NAME}.{self.token}")
        tmp.write_text(json.dumps(self._record()))
        os.replace(tmp, self.path)
        if json.loads(self.path.read_text()).get("token") != self.token:  # another taker won the race
            raise LockedError(f"{self.path.parent} was just taken over by another process")
        self.log(f"took over the stale lock {self.path} of {describe(holder)} (no such process)")
        return True

    def release(self) -> None:
        """Removes the lock if it is still this process's."""
        try:
            if json.loads(self.path.read_text()).get("token") == self.token:
                self.path.unlink()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def local_folder_lock(out: str, what: str) -> FolderLock | None:
    """A lock on ``out`` when it is a local folder; None for a URL (s3://, gs://, ...), where
    no atomic create-if-absent is available to every filesystem."""
    return None if "://" in out and not out.startswith("file://") else FolderLock(out.removeprefix("file://"), what)
