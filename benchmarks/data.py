"""Images per second delivered to the training loop: our shards vs a rosinality LMDB.

    python benchmarks/data.py            # 256 and 1024 px, 3 alternating repeats
    python benchmarks/data.py --quick    # fewer images and batches (under 3 minutes on 2 cores)

Both sides read the same procedurally made photo-like images, with the same
batch size and number of worker processes, and deliver float batches in
[-1, 1] to the loop:
- ``shards``: tar shards written from that LMDB by the writer's ``lmdb``
  source (the same JPEG bytes, kept as they are), streamed by
  ``datasets.loader``: libjpeg-turbo decode to uint8 in the workers, uint8
  batches, float conversion in the loop's process ("on the device", which is
  this CPU here, so the conversion is counted).
- ``lmdb``: rosinality's ``prepare_data.py`` LMDB (JPEG quality 100, PIL's
  default 4:2:0) read by a copy of its ``MultiResolutionDataset`` (PIL decode,
  random flip, ToTensor, Normalize in the workers, float batches).
- ``shards_png``: the same loader on the same images re-encoded as lossless PNG.
Repeats alternate the sides; figures are medians. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch.utils.data import DataLoader, Dataset, RandomSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datasets.lmdb_io import open_lmdb, write_rosinality_lmdb  # noqa: E402
from datasets.loader import LoaderConfig, ShardLoader, to_device  # noqa: E402
from datasets.shards import WriterConfig, write_shards  # noqa: E402
from datasets.sources import lmdb_items  # noqa: E402


def photo_like(seed: int, size: int, grain: int = 4) -> Image.Image:
    """Smooth colour field, soft edges and sensor-like grain: about 0.7 MB per
    1024 px JPEG at quality 100, in the range of face photos at that quality."""
    rng = np.random.default_rng(seed)
    field = rng.normal(size=(24, 24, 3))
    field = ((field - field.min()) / np.ptp(field) * 255).astype(np.uint8)
    img = Image.fromarray(field).resize((size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(40):
        x, y = rng.integers(0, size, 2)
        r = int(rng.integers(size // 40, size // 6))
        draw.ellipse([x - r, y - r, x + r, y + r], outline=tuple(int(v) for v in rng.integers(0, 255, 3)),
                     width=int(rng.integers(1, 6)))
    img = img.filter(ImageFilter.GaussianBlur(1.0))
    a = np.asarray(img, dtype=np.int16) + rng.integers(-grain, grain + 1, (size, size, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


class RosinalityLMDB(Dataset):
    """rosinality's MultiResolutionDataset with its training transform, without torchvision."""

    def __init__(self, path: str, resolution: int):
        self.path, self.resolution = path, resolution
        self._env, self._pid = None, None
        with self.env.begin() as txn:
            self.length = int(txn.get(b"length").decode("utf-8"))

    @property
    def env(self):
        # rosinality opens the environment once in __init__ and forks it into the
        # workers; an LMDB environment must not cross a fork (it crashed workers
        # here), so each process opens its own. Same reads, same cost per item.
        if self._pid != os.getpid():
            self._env, self._pid = open_lmdb(self.path), os.getpid()
        return self._env

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        with self.env.begin(write=False) as txn:
            key = f"{self.resolution}-{str(index).zfill(5)}".encode("utf-8")
            img_bytes = txn.get(key)
        img = Image.open(io.BytesIO(img_bytes))
        if torch.rand(1) < 0.5:  # transforms.RandomHorizontalFlip()
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).contiguous()  # ToTensor
        x = x.to(torch.float32).div(255)
        return x.sub_(0.5).div_(0.5)  # Normalize((0.5,) * 3, (0.5,) * 3, inplace=True)


def prepare(root: Path, n: int, sizes: list[int], workers: int) -> dict:
    """Writes the LMDB, then per size two shard sets made from it by the ``lmdb`` source kind.

    ``shards`` keeps the LMDB's JPEG bytes as they are (the writer's
    keep_encoded), so both sides decode identical files; ``shards_png``
    re-encodes them losslessly as PNG.
    """
    imgs = (photo_like(i, max(sizes)) for i in range(n))
    write_rosinality_lmdb(str(root / "lmdb"), imgs, sizes)
    paths = {"lmdb": str(root / "lmdb")}
    env = open_lmdb(paths["lmdb"])
    with env.begin() as txn:
        for size in sizes:
            mean = sum(len(txn.get(f"{size}-{i:05d}".encode())) for i in range(n)) / n
            paths[f"jpeg_kb_{size}"] = round(mean / 1024, 1)
    env.close()
    for size in sizes:
        listing = lmdb_items(str(root / "lmdb"), size)
        for name, keep in (("shards", True), ("shards_png", False)):
            out = root / f"{name}_{size}"
            write_shards(listing, WriterConfig(out=str(out), image_size=size, encoding="png", keep_encoded=keep,
                                               shard_samples=max(4, n // 8), workers=workers), progress=False)
            paths[f"{name}_{size}"] = str(out)
    return paths


def timed(batches, n_batches: int, warmup: int, convert) -> float:
    """Images per second over n_batches after warmup batches (worker start-up excluded)."""
    it = iter(batches)
    for _ in range(warmup):
        convert(next(it))
    count, t0 = 0, time.perf_counter()
    for _ in range(n_batches):
        count += convert(next(it)).shape[0]
    rate = count / (time.perf_counter() - t0)
    del it
    return rate


def run_shards(path: str, batch: int, workers: int, n_batches: int, warmup: int) -> float:
    loader = ShardLoader(LoaderConfig(path, batch_size=batch, workers=workers, xflip=True, shuffle_buffer=64), 0, 1)
    return timed(loader, n_batches, warmup, lambda b: to_device(b.images, "cpu"))


def run_lmdb(path: str, size: int, batch: int, workers: int, n_batches: int, warmup: int) -> float:
    ds = RosinalityLMDB(path, size)
    sampler = RandomSampler(ds, replacement=True, num_samples=10**9)  # endless, no epoch restarts
    loader = DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True)
    return timed(loader, n_batches, warmup, lambda x: x.to("cpu"))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer images, batches and repeats")
    p.add_argument("--sizes", default="256,1024")
    p.add_argument("--workers", type=int, default=2, help="loader worker processes on both sides")
    p.add_argument("--repeats", type=int, default=None, help="alternating repeats (default 3, quick 2)")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    n_images = 48 if args.quick else 128
    repeats = args.repeats or (2 if args.quick else 3)
    batch = {256: 32, 1024: 8}
    torch.set_num_threads(1)  # the loop's process: one thread, like one rank per GPU
    results: dict = {"machine": f"{os.cpu_count()} CPU cores", "workers": args.workers, "images": n_images,
                     "repeats": repeats, "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        paths = prepare(Path(tmp), n_images, sizes, args.workers)
        print(f"[data] wrote {n_images} images as LMDB and shards in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        for size in sizes:
            b = batch.get(size, 16)
            n_batches = (6 if args.quick else 16) if size <= 256 else (12 if args.quick else 40)
            rates: dict[str, list[float]] = {"shards": [], "lmdb": [], "shards_png": []}
            for r in range(repeats):
                rates["shards"].append(run_shards(paths[f"shards_{size}"], b, args.workers, n_batches, 2))
                rates["lmdb"].append(run_lmdb(paths["lmdb"], size, b, args.workers, n_batches, 2))
                rates["shards_png"].append(run_shards(paths[f"shards_png_{size}"], b, args.workers, n_batches, 2))
                print(f"[data] {size}px repeat {r + 1}/{repeats}: " + ", ".join(
                    f"{k} {v[-1]:.1f} img/s" for k, v in rates.items()), file=sys.stderr)
            for k, v in rates.items():
                results[f"{k}_img_s_{size}"] = round(statistics.median(v), 2)
            results[f"ratio_{size}"] = round(results[f"shards_img_s_{size}"] / results[f"lmdb_img_s_{size}"], 3)
            results[f"batch_{size}"] = b
            results[f"batches_timed_{size}"] = n_batches
            results[f"jpeg_kb_{size}"] = paths[f"jpeg_kb_{size}"]
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
