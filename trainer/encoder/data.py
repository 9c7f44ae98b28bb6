"""Images for inversion and evaluation: a folder of image files or a shard folder, in order.

Folder images of another size or mode are converted to RGB and resized to the
encoder's input (the count is reported, never silent) with PIL's Lanczos or
bilinear filter; unreadable files are skipped and named. Shards are read in
evaluation mode, each sample exactly once; a sample of another size is resized
with antialiased bilinear interpolation.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from datasets.errors import DataError
from datasets.imageio import IMAGE_SUFFIXES, image_files, open_image
from datasets.loader import LoaderConfig, ShardLoader

RESAMPLE = {"lanczos": Image.Resampling.LANCZOS, "bilinear": Image.Resampling.BILINEAR}
"""PIL filters for folder images. ReStyle's ``transforms.Resize((256, 256))`` on a PIL image is
``Image.resize(size, BILINEAR)``, which PIL antialiases when it shrinks."""


def resize_image(im: Image.Image, size: int, resample: Literal["lanczos", "bilinear"]) -> Image.Image:
    """``im`` stretched to ``size`` x ``size`` with PIL's ``resample`` filter."""
    return im.resize((size, size), RESAMPLE[resample])


@dataclass
class ImageSource:
    """Ordered images from ``path`` at ``size`` px, in batches of ``batch``."""

    path: str
    size: int
    batch: int = 8
    limit: int | None = None
    notes: Counter = field(default_factory=Counter)
    """What was converted, resized or skipped, by reason."""
    skipped: list[str] = field(default_factory=list)
    resample: Literal["lanczos", "bilinear"] = "lanczos"
    """PIL filter for folder images of another size ("bilinear": as ReStyle's inference resizes)."""

    def report(self) -> list[str]:
        """What was converted, resized or skipped (counts, then each skipped file), for stderr."""
        return ([f"note: {n} image(s) {note}" for note, n in sorted(self.notes.items())]
                + [f"skipped: {line}" for line in self.skipped])

    def is_shards(self) -> bool:
        p = Path(self.path)
        return "://" in self.path or (p / "manifest.json").is_file() or p.name.endswith(".json")

    def batches(self) -> Iterator[tuple[list[str], torch.Tensor]]:
        """(names, float images in [-1, 1] [N, 3, size, size]) in a fixed order."""
        yield from (self._shard_batches() if self.is_shards() else self._folder_batches())

    def _folder_batches(self) -> Iterator[tuple[list[str], torch.Tensor]]:
        root = Path(self.path)
        if not root.is_dir():
            raise DataError(f"{self.path}: neither an image folder nor a shard folder (no manifest.json)")
        files = image_files(root)
        if not files:
            raise DataError(f"{self.path}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        files = files[:self.limit] if self.limit else files
        names, arrays = [], []
        for f in files:
            arr = self._read(f)
            if arr is None:
                continue
            names.append(str(f.relative_to(root)))
            arrays.append(arr)
            if len(arrays) == self.batch:
                yield names, _to_tensor(arrays)
                names, arrays = [], []
        if arrays:
            yield names, _to_tensor(arrays)

    def _read(self, f: Path) -> np.ndarray | None:
        try:
            with open_image(f) as im:  # a header declaring too many pixels is refused before decoding
                im.load()
                if im.mode != "RGB":
                    self.notes[f"converted from {im.mode} to RGB"] += 1
                    im = im.convert("RGB")
                if im.size != (self.size, self.size):
                    self.notes[f"resized to {self.size}x{self.size}"] += 1
                    if im.width != im.height:
                        self.notes["not square (stretched)"] += 1
                    im = resize_image(im, self.size, self.resample)
                return np.asarray(im, dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            self.notes["unreadable (skipped)"] += 1
            self.skipped.append(f"{f}: {e}")
            return None

    def _shard_batches(self) -> Iterator[tuple[list[str], torch.Tensor]]:
        loader = ShardLoader(LoaderConfig(self.path, batch_size=self.batch, workers=0), 0, 1, "eval")
        seen = 0
        for b in loader:
            imgs = b.images.float() / 127.5 - 1
            if imgs.shape[-1] != self.size:
                self.notes[f"resized to {self.size}x{self.size}"] += imgs.shape[0]
                imgs = torch.nn.functional.interpolate(imgs, size=(self.size, self.size), mode="bilinear",
                                                       antialias=True, align_corners=False)
            names = [f"sample{int(i):08d}" for i in b.index]  # manifest order
            if self.limit and seen + len(imgs) > self.limit:
                imgs, names = imgs[:self.limit - seen], names[:self.limit - seen]
            seen += len(imgs)
            yield names, imgs
            if self.limit and seen >= self.limit:
                return
        for reason, n in loader.skipped_counts().items():
            self.notes[f"shard sample {reason} (skipped)"] += n


def _to_tensor(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1
