"""Image sources for FID/KID and feature extraction shared by every rank.

Every source cuts its images into global batches: batch b holds items
[b * B, (b + 1) * B) of a fixed order (sorted file names, manifest order, or
generator sample index). Ranks take whole batches (strided for folders and
generators, contiguous runs for shards), features are gathered on the main
process and sorted by item index. The same batches go through the same network
whatever the world size, so the statistics are bit-identical on 1, 2 or 8
ranks; a different batch size changes only float rounding.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch
from PIL import UnidentifiedImageError
from tqdm import tqdm

from datasets.imageio import IMAGE_SUFFIXES, ImageTooLarge, image_files, open_image
from datasets.loader import LoaderConfig, ShardLoader, load_shard_set
from trainer.networks.generator import Generator

from .fid_preprocess import quantize


class Source(Protocol):
    """Images in a fixed order, cut into global batches."""

    skipped: Counter

    def __len__(self) -> int: ...

    def identity(self) -> dict:
        """What names this image set for caching (path, listing digest)."""

    def batches(self, batch: int, rank: int, world: int) -> Iterator[tuple[np.ndarray, list[torch.Tensor]]]:
        """This rank's share: (item indices, uint8 [3, H, W] images) per global batch."""


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class FolderSource:
    """Image files under ``path`` (recursive, sorted); unreadable files are skipped and counted."""

    path: str
    limit: int | None = None
    files: list[Path] | None = None
    """An explicit file list (under ``path``) instead of every image in the folder."""
    skipped: Counter = field(default_factory=Counter)
    skipped_files: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        root = Path(self.path)
        if not root.is_dir():
            raise FileNotFoundError(f"{self.path}: no such image folder")
        files = sorted(self.files) if self.files is not None else image_files(root)
        if not files:
            raise FileNotFoundError(f"{self.path}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        self.files = files[:self.limit] if self.limit else files

    def __len__(self) -> int:
        return len(self.files)

    def identity(self) -> dict:
        listing = [(str(f.relative_to(self.path)), f.stat().st_size, int(f.stat().st_mtime)) for f in self.files]
        return {"kind": "folder", "path": str(Path(self.path).resolve()), "n": len(self.files),
                "listing": _digest(listing)}

    def _read(self, f: Path) -> torch.Tensor | None:
        try:
            with open_image(f) as im:  # a header declaring too many pixels is refused before decoding
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            self.skipped["too many pixels" if isinstance(e, ImageTooLarge) else "unreadable image"] += 1
            self.skipped_files.append(f"{f}: {e}")
            return None
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)

    def batches(self, batch: int, rank: int, world: int) -> Iterator[tuple[np.ndarray, list[torch.Tensor]]]:
        for b in range(rank, -(-len(self.files) // batch), world):
            items = [(i, self._read(self.files[i])) for i in range(b * batch, min((b + 1) * batch, len(self.files)))]
            items = [(i, x) for i, x in items if x is not None]
            if items:
                yield np.array([i for i, _ in items]), [x for _, x in items]


@dataclass
class ShardSource:
    """A shard set in evaluation mode: every sample exactly once, in manifest order."""

    path: str
    limit: int | None = None
    skipped: Counter = field(default_factory=Counter)
    allow_external: bool = False
    """Follow shard names outside the manifest's folder (``LoaderConfig.allow_external_shards``)."""

    def __post_init__(self) -> None:
        self.shards = load_shard_set(self.path, allow_external=self.allow_external)

    def __len__(self) -> int:
        return min(self.shards.total, self.limit) if self.limit else self.shards.total

    def identity(self) -> dict:
        return {"kind": "shards", "path": self.path, "n": len(self),
                "manifest": _digest([self.shards.urls, self.shards.counts, self.shards.image_size])}

    def batches(self, batch: int, rank: int, world: int) -> Iterator[tuple[np.ndarray, list[torch.Tensor]]]:
        loader = ShardLoader(LoaderConfig(self.path, batch_size=batch, workers=0,
                                          allow_external_shards=self.allow_external), rank, world, "eval")
        for b in loader:
            keep = b.index < len(self) if self.limit else torch.ones(len(b.index), dtype=torch.bool)
            if keep.any():
                yield b.index[keep].numpy(), list(b.images[keep])
        self.skipped.update(loader.skipped_counts())


def sample_z(seed: int, index: int, dim: int) -> np.ndarray:
    """Latent of sample ``index``: its own stream from (seed, index), so a sample's latent does
    not depend on the batch size, the world size, or which rank draws it."""
    return np.random.default_rng([seed, index]).standard_normal(dim)


@dataclass
class GeneratorSource:
    """``n`` images from a generator: z and noise per sample from (seed, index); uint8 as NVIDIA quantises."""

    G: Generator
    n: int
    seed: int = 0
    truncation: float = 1.0
    noise_mode: str = "random"
    name: str = "generator"
    """Names the generator in cache keys (e.g. its file's SHA-256)."""
    skipped: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return self.n

    def identity(self) -> dict:
        return {"kind": "generator", "name": self.name, "n": self.n, "seed": self.seed,
                "truncation": self.truncation, "noise_mode": self.noise_mode}

    def _noise(self, indices: np.ndarray, device: torch.device) -> list[torch.Tensor] | None:
        if self.noise_mode != "random":
            return None
        per_sample = []
        for i in indices:
            # Drawn where the generator runs: at 1024 px a sample's maps are 2.8M numbers, too
            # many to draw on the CPU and copy for every one of 50k images.
            g = torch.Generator(device=device)
            g.manual_seed(int(np.random.SeedSequence([self.seed, int(i), 1]).generate_state(1)[0]))
            per_sample.append([torch.randn(1, 1, 2 ** ((k + 5) // 2), 2 ** ((k + 5) // 2), generator=g, device=device)
                               for k in range(self.G.num_layers)])
        return [torch.cat(maps) for maps in zip(*per_sample)]

    @torch.no_grad()
    def batches(self, batch: int, rank: int, world: int) -> Iterator[tuple[np.ndarray, list[torch.Tensor]]]:
        device = self.G.input.input.device
        for b in range(rank, -(-self.n // batch), world):
            idx = np.arange(b * batch, min((b + 1) * batch, self.n))
            z = torch.from_numpy(np.stack([sample_z(self.seed, int(i), self.G.style_dim) for i in idx])).float()
            img = self.G(z.to(device), truncation_psi=self.truncation, noise_mode=self.noise_mode,
                         noise=self._noise(idx, device))
            yield idx, list(quantize(img))


def _features(detector: torch.nn.Module, images: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Features in item order; images of different sizes go through in same-size groups."""
    out = [None] * len(images)
    sizes = {tuple(x.shape) for x in images}
    for size in sorted(sizes):
        pos = [k for k, x in enumerate(images) if tuple(x.shape) == size]
        f = detector(torch.stack([images[k] for k in pos]).to(device)).float().cpu()
        for k, row in zip(pos, f):
            out[k] = row
    return torch.stack(out)


def extract(source: Source, detector: torch.nn.Module, dist, batch: int = 64,
            progress: bool = True, desc: str = "features") -> np.ndarray | None:
    """Features [N, D] float32 of every item of ``source`` in item order on the main process
    (None on the others). ``dist`` is a ``trainer.run.distributed.Dist``."""
    n_batches = -(-len(source) // batch)
    mine = len(range(dist.rank, n_batches, dist.world)) if not isinstance(source, ShardSource) else None
    bar = tqdm(total=n_batches if mine is not None else None, desc=desc, unit="batch",
               disable=not (progress and dist.is_main), dynamic_ncols=True)
    index, feats = [], []
    for idx, images in source.batches(batch, dist.rank, dist.world):
        index.append(idx)
        feats.append(_features(detector, images, dist.device).numpy())
        bar.update(dist.world if mine is not None else 1)  # every rank advances at the same pace
    bar.close()
    # Every rank learns the totals, so an empty source is an error on all of them at once.
    totals = dist.gather_objects((sum(len(i) for i in index), dict(source.skipped)))
    skipped = Counter()
    for _, sk in totals:
        skipped.update(sk)
    source.skipped = skipped
    if sum(n for n, _ in totals) == 0:
        raise ValueError(f"{desc}: no readable image (skipped: {dict(skipped)})")
    parts = dist.gather_to_main((np.concatenate(index) if index else np.zeros(0, np.int64),
                                 np.concatenate(feats) if feats else None))
    if parts is None:
        return None
    parts = [p for p in parts if p[1] is not None]
    order = np.argsort(np.concatenate([p[0] for p in parts]), kind="stable")
    return np.concatenate([p[1] for p in parts])[order]
