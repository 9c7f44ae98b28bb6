"""Writing a torch file so that a reader never sees half of it, with the mode any other output gets."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def umask_mode() -> int:
    """The mode a file created now gets from the umask (0644 under the usual 022)."""
    try:  # Linux >= 4.7 shows it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then a rename: an interrupted write
    leaves the old file intact. mkstemp makes the temporary file 0600; it gets the umask's mode
    first, so other users of a shared folder can read the result like any other output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, umask_mode())
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
