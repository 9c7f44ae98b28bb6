"""Run folders: numbered creation, the resolved config, a log, stats.jsonl, TensorBoard, grids.

Only the main process writes; other ranks get a ``RunLog`` whose methods do
nothing, so trainers call them unconditionally. A resumed run appends to
the same files (TensorBoard gets a new events file in the same folder).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from datasets.imageio import grid, save_png


def next_run_dir(out: str | Path, desc: str) -> Path:
    """``out/NNNNN-desc`` with NNNNN one above the highest existing number."""
    out = Path(out)
    ids = [int(m.group(1)) for p in (out.iterdir() if out.is_dir() else [])
           if (m := re.match(r"^(\d+)-", p.name))]
    return out / f"{max(ids, default=-1) + 1:05d}-{desc}"


def latest_run_dir(out: str | Path, desc: str) -> Path | None:
    """The highest-numbered ``out/NNNNN-desc`` folder, if any."""
    out = Path(out)
    runs = sorted((int(m.group(1)), p) for p in (out.iterdir() if out.is_dir() else [])
                  if (m := re.match(rf"^(\d+)-{re.escape(desc)}$", p.name)))
    return runs[-1][1] if runs else None


class RunLog:
    """Writer for one run folder (active on the main process only)."""

    def __init__(self, run_dir: str | Path, active: bool, name: str = "toonmix"):
        self.dir, self.active = Path(run_dir), active
        self.logger = logging.getLogger(f"{name}.{self.dir.name}")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        for h in list(self.logger.handlers):  # left by a run of this folder in this process that ended
            self.logger.removeHandler(h)      # on an exception (a stop request, an error) before close()
            h.close()
        self._tb = None
        self.started = time.time()
        if not active:
            self.logger.addHandler(logging.NullHandler())
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
        for h in (logging.FileHandler(self.dir / "log.txt"), logging.StreamHandler(sys.stdout)):
            h.setFormatter(fmt)
            self.logger.addHandler(h)

    def info(self, msg: str) -> None:
        self.logger.info(msg)

    def warning(self, msg: str) -> None:
        self.logger.warning("WARNING: " + msg)

    def write_config(self, text: str, name: str = "config.yaml") -> None:
        if self.active:
            (self.dir / name).write_text(text)

    @property
    def tb(self):
        if self._tb is None and self.active:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard lazily
            self._tb = SummaryWriter(str(self.dir))
        return self._tb

    def stats(self, step: int, values: dict[str, float], **meta: Any) -> None:
        """Appends one JSON line and writes every value as a TensorBoard scalar at ``step``."""
        if not self.active:
            return
        row = {**meta, "step": step, "time": round(time.time() - self.started, 3),
               **{k: _plain(v) for k, v in values.items()}}
        with open(self.dir / "stats.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.tb.add_scalar(k, v, step)
        self.tb.flush()

    def text(self, tag: str, text: str, step: int) -> None:
        if self.active:
            self.tb.add_text(tag, text, step)

    def image_grid(self, images: np.ndarray, name: str, step: int, nrow: int | None = None) -> Path | None:
        """Saves uint8 [N, H, W, 3] as ``name.png`` in the run folder and in TensorBoard."""
        if not self.active:
            return None
        mosaic = grid(images, nrow)
        path = save_png(mosaic, self.dir / f"{name}.png")
        self.tb.add_image(re.sub(r"[-_]?\d+$", "", name) or name, mosaic, step, dataformats="HWC")
        self.tb.flush()
        return path

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        for h in list(self.logger.handlers):
            h.close()
            self.logger.removeHandler(h)


def _plain(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 6) if np.isfinite(v) else str(v)
    return v
