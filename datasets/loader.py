"""Streaming shards to every rank: a resampled training stream and an exactly-once evaluation pass.

Training. Each (rank, worker) pair is a *slot* with its own endless stream,
a pure function of (seed, slot, number of slots, position), so no rank ever
waits for another and every rank yields as many batches as it is asked for.
A slot's stream is a sequence of *blocks*. Every round is a fresh seeded
permutation of all shards cut into ceil(n / shards_per_block) blocks of
near-equal size, dealt to the slots in turn: a block never holds one shard
twice, and each shard is in exactly one block per round. Within a block the
samples of all its shards come in one seeded random permutation, read by
byte offset from an index of the tar headers, so the stream is well mixed
even when a shard was written in label order (``pipe:`` shards, which can
only be streamed, are interleaved through a shuffle buffer instead). Blocks
are independent, so the stream is resumable from (block, offset): resuming
re-reads one block's tar headers and yields exactly the batches an
uninterrupted run would have yielded next.

Evaluation. Samples are numbered in manifest order; rank r takes the
contiguous range [r*N/W, (r+1)*N/W), its workers split that range, and every
batch carries the sample indices, so results can be gathered in a fixed order.

Decoding (and the optional x-flip) happens in DataLoader worker processes;
batches travel as uint8 NCHW and ``to_device`` makes
them float in [-1, 1] on the device. The loader is never given to
``accelerator.prepare``: that would make rank 0 read for everyone.
"""

from __future__ import annotations

import functools
import os
import posixpath
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_iterator

from .errors import DataError
from .images import decode_array
from .remote import check_url, fs_and_path, is_pipe, join, open_url, read_json
from .tar_access import PERMANENT, TarReader, skip

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")
# Version of the block layout: positions saved under another one mean other samples.
STREAM_VERSION = 2


@dataclass
class LoaderConfig:
    """What to stream and how."""

    data: str
    """Shard folder (local or fsspec URL) holding manifest.json, or the manifest's own URL."""
    batch_size: int = 8
    """Images per batch on each rank."""
    workers: int = 2
    """Decoding processes per rank (0: decode in the training process)."""
    seed: int = 0
    """Seeds shard order, interleaving, shuffling and flips."""
    xflip: bool = False
    """Mirror each training image with probability 0.5 (never in evaluation)."""
    shuffle_buffer: int = 256
    """Only for ``pipe:`` shards (streamed, not seekable): undecoded samples held per worker for
    shuffling. Seekable shards are read in a random order of the whole block instead."""
    shards_per_block: int = 4
    """Most shards mixed by a worker at once (never one shard twice; all of them, once each, when
    there are fewer); a resume re-reads this many shards' tar headers."""
    epoch_samples: int | None = None
    """If set, one ``iter()`` yields ceil(epoch_samples / (world * batch)) batches on every rank."""
    allow_pipe: bool = False
    """Allow ``pipe:`` shard URLs (shell commands); only for shard lists you wrote."""
    allow_external_shards: bool = False
    """Follow manifest shard names that lead outside the manifest's folder (another folder,
    ``..``, another URL or file system); only for manifests you wrote. By default such a
    manifest is refused: a manifest from someone else must not make the loader read
    whatever it names."""
    pin_memory: bool = False
    """Pin batches in page-locked memory (for asynchronous copies to a GPU)."""
    prefetch: int = 2
    """Batches each worker prepares ahead."""
    read_retries: int = 3
    """Reopen a shard this many times after a transient read error (not for damaged data)."""
    read_backoff_s: float = 1.0
    """Wait before the first reopen; doubled for each further one."""


class ShardSet(NamedTuple):
    urls: tuple[str, ...]
    counts: tuple[int, ...]
    labels: tuple[str, ...]
    image_size: int

    @property
    def total(self) -> int:
        return sum(self.counts)


def _inside(url: str, base: str) -> bool:
    """Whether ``url`` names a file under the folder ``base``, on the same file system."""
    fs, path = fs_and_path(url)
    base_fs, base_path = fs_and_path(base)
    root = posixpath.normpath(base_path)
    return fs.protocol == base_fs.protocol and posixpath.normpath(path).startswith(root.rstrip("/") + "/")


def load_shard_set(data: str, allow_pipe: bool = False, allow_external: bool = False) -> ShardSet:
    """Reads the manifest next to the shards (or at ``data`` if it names a .json file).

    Every shard name must lead to a file in the manifest's folder or below it, unless
    ``allow_external`` (``LoaderConfig.allow_external_shards``); ``pipe:`` names need
    ``allow_pipe``, which trusts the manifest for them.
    """
    url = data if data.endswith(".json") else join(data, "manifest.json")
    base = url.rsplit("/", 1)[0] if "/" in url else "."
    try:
        m = read_json(url)
    except FileNotFoundError:
        raise DataError(f"no manifest at {url}: write shards with `python -m launch.make_shards`") from None
    except ValueError as e:
        raise DataError(f"{url} is not a shard manifest: {e}") from None
    try:
        urls = tuple(s["name"] if "://" in s["name"] or s["name"].startswith(("pipe:", "/"))
                     else join(base, s["name"]) for s in m["shards"])
        shard_set = ShardSet(urls, tuple(int(s["count"]) for s in m["shards"]),
                             tuple(m.get("labels", ())), int(m["image_size"]))
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{url} is not a shard manifest: {e!r}") from None
    for u in shard_set.urls:
        check_url(u, allow_pipe)
        if not (allow_external or is_pipe(u) or _inside(u, base)):
            raise DataError(f"{url} names a shard outside its folder ({u}); if you wrote that manifest yourself, "
                            "allow it with loader.allow_external_shards=true (launch.fid: --allow-external-shards)")
    if not shard_set.urls or shard_set.total == 0:
        raise DataError(f"{url} lists no samples")
    return shard_set


class Batch(NamedTuple):
    """uint8 images (B, 3, H, W), labels (B,) int64 (-1 unlabelled), sample indices (evaluation only)."""

    images: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor | None = None


def to_device(images: torch.Tensor, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 batch -> contiguous float in [-1, 1] on ``device`` (the conversion runs there)."""
    if torch.device(device).type == "cpu" and dtype == torch.float32:
        # CPU runs (tests, the demo): numpy's fused convert-and-scale loop takes 4.8 ms
        # per 1024 px image on the benchmark machine, torch's conversion 7.8.
        y = np.multiply(images.contiguous().numpy(), np.float32(1 / 127.5), dtype=np.float32)
        y -= np.float32(1.0)
        return torch.from_numpy(y)
    x = images.to(device, non_blocking=True).to(dtype).contiguous()
    # -1 + x / 127.5 in one pass over x (two in-place ops cost one pass more).
    return torch.add(torch.full((), -1.0, dtype=dtype, device=x.device), x, alpha=1 / 127.5, out=x)


@functools.lru_cache(maxsize=64)
def _round_permutation(seed: int, round_: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, round_, n]).permutation(n)


def blocks_per_round(n: int, per_block: int) -> int:
    return -(-n // min(per_block, n))


def block_shards(seed: int, slot: int, slots: int, n: int, per_block: int, j: int) -> list[int]:
    """The shards of a slot's block j: distinct, at most ``per_block``, each shard in one block per round.

    Global block b = j * slots + slot is block b % m of round b // m, where a round
    is a seeded permutation of the n shards cut into m = ceil(n / per_block)
    contiguous slices of near-equal size. (Numbering shard positions across round
    boundaries, as before, put one shard twice in a block whenever a block spanned
    two rounds, and four times when there was one shard.)
    """
    m = blocks_per_round(n, per_block)
    round_, i = divmod(j * slots + slot, m)
    return [int(s) for s in _round_permutation(seed, round_, n)[i * n // m:(i + 1) * n // m]]


def eval_range(n: int, batch_size: int, part: int, parts: int) -> tuple[int, int]:
    """Samples [lo, hi) of ``part`` of ``parts`` in evaluation: a contiguous run of whole
    batches, so batch boundaries sit at multiples of ``batch_size`` whatever ``parts`` is."""
    nb = -(-n // batch_size)
    return min(part * nb // parts * batch_size, n), min((part + 1) * nb // parts * batch_size, n)


class _Stream(IterableDataset):
    """Runs in each DataLoader worker; yields collated uint8 batches with their stream position."""

    def __init__(self, shards: ShardSet, cfg: LoaderConfig, rank: int, world: int, mode: str,
                 seed: int, positions: list, rotation: int, skipped: list):
        super().__init__()
        self.shards, self.cfg, self.rank, self.world, self.mode = shards, cfg, rank, world, mode
        self.seed, self.positions, self.rotation, self.skipped = seed, positions, rotation, skipped
        self.seekable = not any(is_pipe(u) for u in shards.urls)  # pipe: shards can only be streamed
        # Random access to seekable shards by byte range (datasets/tar_access.py); cached per worker process.
        self.reader = TarReader(shards.urls, shards.counts, cfg.read_retries, cfg.read_backoff_s, rank)

    # -- shared pieces
    def _members(self, shard: int, skipped: Counter) -> Iterator[dict]:
        """Samples of one shard; transient read errors reopen it and go on after what was given."""
        url, n = self.shards.urls[shard], 0
        for attempt in range(self.cfg.read_retries + 1):
            try:
                with open_url(url, "rb", self.cfg.allow_pipe) as f:
                    files = ({**member, "__url__": url} for member in tar_file_iterator(f))
                    for m, sample in enumerate(group_by_keys(files)):
                        if m >= n:  # after a reopen, skip (undecoded) what was already given
                            n = m + 1
                            yield sample
                break
            except PERMANENT as e:  # the bytes themselves are bad: reading again gives the same
                skip(skipped, self.rank, "bad_shard", f"{url} after {n} samples: {type(e).__name__}: {e}")
                return
            except Exception as e:  # noqa: BLE001 - object-store hiccups; any fsspec backend's errors
                if attempt == self.cfg.read_retries:
                    skip(skipped, self.rank, "bad_shard", f"{url} after {n} samples and {attempt} retries: "
                                                          f"{type(e).__name__}: {e}")
                    return
                print(f"[data] rank {self.rank}: reading {url} failed after {n} samples "
                      f"({type(e).__name__}: {e}); retry {attempt + 1}", file=sys.stderr, flush=True)
                time.sleep(self.cfg.read_backoff_s * 2 ** attempt)
        if n < self.shards.counts[shard]:
            # A tar cut at a member boundary reads as a shorter, valid archive.
            skip(skipped, self.rank, "short_shard", f"{url}: {n} samples, the manifest says "
                                                    f"{self.shards.counts[shard]} (truncated?)")

    def _decode(self, raw: dict, skipped: Counter) -> tuple[np.ndarray, int] | None:
        data = next((raw[k] for k in IMAGE_KEYS if k in raw), None)
        try:
            if data is None:
                raise ValueError(f"no image member among {sorted(raw)}")
            img = decode_array(data, self.shards.image_size)  # the header is checked before decoding
            if img.shape != (self.shards.image_size, self.shards.image_size, 3):
                raise ValueError(f"image is {img.shape[1]}x{img.shape[0]}, the manifest says "
                                 f"{self.shards.image_size}")
            cls = int(raw["cls"]) if "cls" in raw else -1
        except Exception as e:  # noqa: BLE001 - one bad member must never kill a rank
            skipped["corrupt_member"] += 1
            if skipped["corrupt_member"] <= 10:
                print(f"[data] rank {self.rank}: skipping member {raw.get('__key__')} of "
                      f"{raw.get('__url__', 'a shard')}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            return None
        return img, cls

    @staticmethod
    def _collate(samples: list, **meta) -> dict:
        # NCHW-contiguous here, in the workers, so the loop's process converts in
        # layout-preserving passes (converting from NHWC costs it 2x). np.stack
        # would keep the inputs' HWC memory order: fill a C-ordered buffer.
        h, w, c = samples[0][0].shape
        out = np.empty((len(samples), c, h, w), dtype=np.uint8)
        for i, s in enumerate(samples):
            out[i] = s[0].transpose(2, 0, 1)
        imgs = torch.from_numpy(out)
        return {"images": imgs, "labels": torch.tensor([s[1] for s in samples], dtype=torch.int64), **meta}

    # -- training (seekable shards: self.reader.block; why random access: datasets/tar_access.py)
    def _stream_block(self, shards: list[int], rng: np.random.Generator, done: int,
                      skipped: Counter) -> Iterator[tuple[int, dict | None]]:
        """Streamed shards: members interleaved at random through the shuffle buffer."""
        active = [self._members(shard, skipped) for shard in shards]
        buf: list = []

        def mixed() -> Iterator[dict]:
            while active:
                a = int(rng.integers(len(active)))
                try:
                    sample = next(active[a])
                except StopIteration:
                    active.pop(a)
                    continue
                if len(buf) < self.cfg.shuffle_buffer:
                    buf.append(sample)
                    continue
                if not buf:  # shuffle_buffer 0: interleaving only
                    yield sample
                    continue
                i = int(rng.integers(len(buf)))
                buf[i], sample = sample, buf[i]
                yield sample
            for i in rng.permutation(len(buf)):
                yield buf[i]

        for pos, raw in enumerate(mixed(), start=1):
            if pos > done:  # resume: what was already given is read again, not decoded
                yield pos, raw

    def _train(self, logical: int, nworkers: int) -> Iterator[dict]:
        slots, slot = self.world * nworkers, self.rank * nworkers + logical
        n, k = len(self.shards.urls), self.cfg.shards_per_block
        j, done = self.positions[logical]
        skipped = Counter(self.skipped[logical])
        block = self.reader.block if self.seekable else self._stream_block
        batch: list = []
        barren = 0  # consecutive blocks that gave no usable sample
        while True:
            flips = np.random.default_rng([self.seed, slot, slots, j, 1])
            flips.random(done)  # one draw per position: a resume skips the draws of those consumed
            barren = 0 if done else barren + 1
            rng = np.random.default_rng([self.seed, slot, slots, j])
            for pos, raw in block(block_shards(self.seed, slot, slots, n, k, j), rng, done, skipped):
                flip = flips.random() < 0.5
                sample = None if raw is None else self._decode(raw, skipped)
                if sample is None:
                    continue
                barren = 0
                if self.cfg.xflip and flip:
                    sample = (sample[0][:, ::-1], sample[1])  # a view: collation copies once
                batch.append(sample)
                if len(batch) == self.cfg.batch_size:
                    yield self._collate(batch, worker=logical, pos=(j, pos), skipped=dict(skipped))
                    batch = []
            if barren >= 2 * blocks_per_round(n, k):
                # Every shard visited (twice over) without one readable sample: spinning
                # would hang this rank, and the others at their next collective.
                raise DataError(f"rank {self.rank}: no readable sample in {barren} blocks of up to "
                                f"{k} shards; skipped so far: {dict(skipped)}")
            j, done = j + 1, 0

    # -- evaluation
    def _eval(self, w: int, nworkers: int) -> Iterator[dict]:
        # Batch b always holds samples [b * B, (b + 1) * B) of the manifest order (fewer if some
        # are skipped): ranks and workers take whole batches, so every batch has the same
        # contents for any world size, and features computed from it are bit-identical.
        lo, hi = eval_range(self.shards.total, self.cfg.batch_size, self.rank * nworkers + w,
                            self.world * nworkers)
        bs = self.cfg.batch_size
        skipped, batch, start = Counter(), [], 0
        for shard, count in enumerate(self.shards.counts):
            if start < hi and start + count > lo:
                for m, raw in enumerate(self._members(shard, skipped)):
                    if start + m >= hi or m >= count:  # a shard longer than its manifest entry
                        break
                    if start + m >= lo:
                        sample = self._decode(raw, skipped)
                        if sample is not None:
                            batch.append((*sample, start + m))
                        if (start + m + 1) % bs == 0 and batch:  # the end of a global batch
                            yield self._eval_batch(batch, w, skipped)
                            batch = []
            start += count
        if batch:
            yield self._eval_batch(batch, w, skipped)

    def _eval_batch(self, batch: list, w: int, skipped: Counter) -> dict:
        out = self._collate([b[:2] for b in batch], worker=w, skipped=dict(skipped))
        out["index"] = torch.tensor([b[2] for b in batch], dtype=torch.int64)
        return out

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        physical, nworkers = (info.id, info.num_workers) if info else (0, 1)
        if self.mode == "eval":
            return self._eval(physical, nworkers)
        return self._train((physical + self.rotation) % nworkers, nworkers)


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _leave_stops_to_main(worker_id: int) -> None:
    """Loader workers ignore SIGINT and SIGTERM: a signal to the whole process group (Ctrl-C,
    Slurm's scancel, a job manager's killpg) must reach the trainer, which finishes its step
    and saves, not kill a worker under it (the trainer would then fail on the lost worker).
    Workers still end with the trainer: DataLoader shuts them down, and each one exits by
    itself within seconds when its parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class ShardLoader:
    """Per-rank loader over a shard set; ``mode`` is ``"train"`` or ``"eval"``.

    ``state_dict()`` / ``load_state_dict()`` hold the training stream position
    (a few integers per worker); restoring it with the same seed, world size,
    workers and batch size continues the exact stream. With another geometry
    the stream restarts from a seed derived from (seed, samples consumed).
    """

    def __init__(self, cfg: LoaderConfig, rank: int | None = None, world: int | None = None,
                 mode: str = "train"):
        if mode not in ("train", "eval"):
            raise DataError(f"mode must be 'train' or 'eval', got {mode!r}")
        if cfg.batch_size < 1 or cfg.workers < 0 or cfg.shards_per_block < 1 or cfg.shuffle_buffer < 0:
            raise DataError(f"invalid loader configuration: {cfg}")
        self.cfg, self.mode = cfg, mode
        self.rank = _env_int("RANK", 0) if rank is None else rank
        self.world = _env_int("WORLD_SIZE", 1) if world is None else world
        self.shards = load_shard_set(cfg.data, cfg.allow_pipe, cfg.allow_external_shards)
        self.nworkers = max(cfg.workers, 1)
        self.stream_seed = cfg.seed
        self.batches = 0
        self.consumed_before = 0  # samples consumed on this rank by earlier stream segments
        self.positions = [(0, 0)] * self.nworkers
        self.skipped = [{} for _ in range(self.nworkers)]

    @property
    def labels(self) -> tuple[str, ...]:
        return self.shards.labels

    @property
    def image_size(self) -> int:
        return self.shards.image_size

    def skipped_counts(self) -> dict[str, int]:
        """Corrupt members, bad shards and wrong-size images skipped so far on this rank."""
        total: Counter = Counter()
        for c in self.skipped:
            total.update(c)
        return dict(total)

    def __len__(self) -> int:
        if self.mode == "eval":  # the number of batches if none is skipped
            n, bs, w = self.shards.total, self.cfg.batch_size, self.nworkers
            spans = (eval_range(n, bs, self.rank * w + i, self.world * w) for i in range(w))
            return sum(-(-(hi - lo) // bs) for lo, hi in spans)
        if self.cfg.epoch_samples is None:
            raise TypeError("an endless training stream has no length; set epoch_samples")
        return -(-self.cfg.epoch_samples // (self.world * self.cfg.batch_size))

    def _dataloader(self) -> DataLoader:
        ds = _Stream(self.shards, self.cfg, self.rank, self.world, self.mode, self.stream_seed,
                     list(self.positions), self.batches % self.nworkers, [dict(s) for s in self.skipped])
        kw = {"prefetch_factor": self.cfg.prefetch, "persistent_workers": False} if self.cfg.workers else {}
        # A private generator: DataLoader draws its worker base seed from it, and drawing
        # from the global RNG would shift a resumed trainer's random stream.
        gen = torch.Generator().manual_seed(self.stream_seed)
        return DataLoader(ds, batch_size=None, num_workers=self.cfg.workers, worker_init_fn=_leave_stops_to_main,
                          pin_memory=self.cfg.pin_memory, generator=gen, **kw)

    def __iter__(self) -> Iterator[Batch]:
        limit = len(self) if self.mode == "train" and self.cfg.epoch_samples is not None else None
        for i, b in enumerate(self._dataloader()):
            if self.mode == "train":
                self.positions[b["worker"]] = tuple(int(v) for v in b["pos"])
                self.batches += 1
            self.skipped[b["worker"]] = b["skipped"]
            yield Batch(b["images"], b["labels"], b.get("index"))
            if limit is not None and i + 1 >= limit:
                return

    def _geometry(self) -> dict:
        """Everything the meaning of a saved (block, offset) position depends on."""
        return {"seed": self.cfg.seed, "world": self.world, "rank": self.rank, "workers": self.nworkers,
                "batch_size": self.cfg.batch_size, "shards_per_block": self.cfg.shards_per_block,
                "shuffle_buffer": self.cfg.shuffle_buffer, "shards": [len(self.shards.urls), self.shards.total],
                "stream": STREAM_VERSION}

    def state_dict(self) -> dict:
        return {**self._geometry(), "stream_seed": self.stream_seed, "batches": self.batches,
                "consumed_before": self.consumed_before, "positions": [list(p) for p in self.positions],
                "skipped": [dict(s) for s in self.skipped]}

    def load_state_dict(self, state: dict) -> None:
        # A state saved before "stream" existed (layout 1: shards numbered across round
        # boundaries, a 256-sample buffer) reads as another geometry: its (block, offset)
        # names other samples now, so it continues as a new stream after the samples consumed.
        same = all(state.get(k, 1 if k == "stream" else None) == v for k, v in self._geometry().items())
        self.skipped = [dict(s) for s in state["skipped"]] if same else self.skipped
        if same:
            self.stream_seed, self.batches = int(state["stream_seed"]), int(state["batches"])
            self.consumed_before = int(state.get("consumed_before", 0))
            self.positions = [tuple(int(v) for v in p) for p in state["positions"]]
            return
        # Samples this rank consumed in all earlier segments: two segments of equal
        # length after two changes still get different seeds.
        consumed = int(state.get("consumed_before", 0)) + int(state["batches"]) * int(state["batch_size"])
        self.stream_seed = int(np.random.default_rng([int(state["stream_seed"]), consumed]).integers(2**62))
        self.consumed_before, self.batches = consumed, 0
        self.positions = [(0, 0)] * self.nworkers
        print(f"[data] rank {self.rank}: loader geometry changed "
              f"({[k for k, v in self._geometry().items() if state.get(k) != v]}); "
              f"starting a new stream after {consumed} samples", file=sys.stderr, flush=True)
