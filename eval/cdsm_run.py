"""The parts of a CDSM run that touch files and ranks: photos, character tables, sheets.

Model-level mixing lives in ``eval/cdsm.py``; this module reads images, spreads
work over ranks in whole global batches (so results do not depend on the
number of ranks), and gathers what the main process writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from datasets.imageio import image_files, open_image

from .cdsm import CharacterEntry, LookUpTable, average_latent, sample_references


def character_folders(root: str | Path) -> dict[str, list[Path]]:
    """``root/<character>/*.png``: the images of each character (iCartoonFace-style layout)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such target-data folder (one sub-folder per character)")
    chars = {d.name: image_files(d, recursive=False) for d in sorted(root.iterdir()) if d.is_dir()}
    return {k: v for k, v in chars.items() if v}


@dataclass
class FaceCheck:
    """What counts as a face-sized image."""

    min_side: int = 64
    """Smallest accepted side in pixels (smaller crops hold too little of a face to invert)."""
    max_aspect: float = 1.25
    """Largest accepted long/short side ratio (face crops are square; a wide frame is not one face)."""


def load_face(path: Path, size: int, check: FaceCheck) -> torch.Tensor | str:
    """[3, size, size] in [-1, 1], or the reason the file is not used."""
    try:
        with open_image(path) as im:  # a header declaring too many pixels is refused before decoding
            im.load()
            w, h = im.size
            if min(w, h) < check.min_side:
                return f"not a face-sized image: {w}x{h} is below {check.min_side} px"
            if max(w, h) / min(w, h) > check.max_aspect:
                return f"not a face-sized image: {w}x{h} is not square (aspect > {check.max_aspect})"
            im = im.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
            arr = np.asarray(im, dtype=np.float32)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        return f"unreadable: {e}"
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1


@dataclass
class Batch:
    """Readable images of one global batch and the files refused in it."""

    index: list[int]
    images: torch.Tensor | None
    refused: list[tuple[str, str]] = field(default_factory=list)


def read_batch(files: list[Path], index: list[int], size: int, check: FaceCheck) -> Batch:
    """Loads ``files[i]`` for ``i`` in ``index``; a refused file never costs the others their place."""
    keep, imgs, refused = [], [], []
    for i in index:
        x = load_face(files[i], size, check)
        if isinstance(x, str):
            refused.append((str(files[i]), x))
        else:
            keep.append(i)
            imgs.append(x)
    return Batch(keep, torch.stack(imgs) if imgs else None, refused)


def my_batches(n: int, batch: int, rank: int, world: int) -> list[list[int]]:
    """Global batches b = rank, rank + world, ...: item indices [b * batch, (b + 1) * batch)."""
    return [list(range(b * batch, min((b + 1) * batch, n))) for b in range(rank, -(-n // batch), world)]


def build_entries(chars: dict[str, list[Path]], k: int, seed: int, size: int,
                  invert: Callable[[torch.Tensor], torch.Tensor], dist, batch: int, method: str,
                  check: FaceCheck) -> Callable[[], tuple[list[CharacterEntry], list[tuple[str, str]]]] | None:
    """Inverts k references per character on every rank; the main process averages them.

    Returns, on the main process, a function giving (entries, refused files) (it raises
    ValueError for a character without a readable reference: the caller decides how
    the other ranks learn of it); None elsewhere. The mean runs over references in
    their sampled order, so it is the same for any world size.
    """
    jobs: list[tuple[str, Path]] = []
    for name, files in sorted(chars.items()):
        by_name = {p.name: p for p in files}
        jobs += [(name, by_name[r]) for r in sample_references(sorted(by_name), k, seed)]
    files = [p for _, p in jobs]
    mine: list[tuple[int, np.ndarray]] = []
    refused: list[tuple[str, str]] = []
    for index in my_batches(len(jobs), batch, dist.rank, dist.world):
        b = read_batch(files, index, size, check)
        refused += b.refused
        if b.images is not None:
            w = invert(b.images.to(dist.device)).detach().float().cpu().numpy()  # projection needs grad
            mine += list(zip(b.index, w))
    parts = dist.gather_to_main((mine, refused))
    if parts is None:
        return None

    def average() -> tuple[list[CharacterEntry], list[tuple[str, str]]]:
        latents = dict(sorted(x for p in parts for x in p[0]))
        entries = []
        for name in sorted(chars):
            idx = [i for i, (c, _) in enumerate(jobs) if c == name and i in latents]
            if not idx:
                raise ValueError(f"character {name!r}: none of its reference images could be read")
            lat = average_latent(torch.from_numpy(np.stack([latents[i] for i in idx])))
            entries.append(CharacterEntry(name, lat, [str(jobs[i][1]) for i in idx], k, method))
        return entries, [r for p in parts for r in p[1]]

    return average


def update_table(table: LookUpTable, entries: list[CharacterEntry], path: Path) -> None:
    for e in entries:
        table.add(e)
    table.save(path)


def sheet_row(cells: list[torch.Tensor], size: int) -> torch.Tensor:
    """Images in [-1, 1] of any size, resized to ``size`` and laid side by side [3, size, n * size]."""
    resized = [F.interpolate(c[None].float().cpu(), size=(size, size), mode="area" if c.shape[-1] > size
                             else "bilinear", **({} if c.shape[-1] > size else {"align_corners": False}))[0]
               for c in cells]
    return torch.cat(resized, dim=2)
