"""Random access to the samples of tar shards, for the training stream of ``datasets.loader``.

Samples are read by byte range from an index of the tar headers, so a block's
samples can be visited in any order without holding the shard in memory.

Why. A shard written in label order (one character's folder after another)
streamed front to back drifts from label to label however it is interleaved: a
shuffle buffer only mixes within its own span, and a buffer that held the whole
block would hold shards_per_block x 1 GB per worker at 1024 px. Reading the
block's samples in one seeded permutation, each by byte offset from an index of
the tar headers, makes the first sample as likely to come from any character as
the last, for the memory of one fetch group (_FETCH samples) plus the index (16
bytes a sample). The headers are walked once per shard and worker (cached): a
seek per member locally, one sequential read on an object store; after that
each sample is one ranged read, fetched _FETCH at a time.

``pipe:`` shards (shell commands) cannot be read this way: they can only be
streamed, and the loader interleaves them through a shuffle buffer instead.
"""

from __future__ import annotations

import io
import sys
import tarfile
import time
from collections import Counter, OrderedDict
from typing import Iterator

import numpy as np
from webdataset.tariterators import base_plus_ext

from .errors import DataError
from .remote import fs_and_path

# Errors that come from the bytes of a shard (or its absence), not from the way to it.
PERMANENT = (tarfile.TarError, EOFError, ValueError, FileNotFoundError, DataError)
# Samples fetched per request group in training: concurrent ranged GETs on object
# stores (fsspec's cat_ranges), at a memory cost of this many undecoded samples.
_FETCH = 8
# Shard indexes a worker keeps (about 16 bytes per sample): a shard seen again in a
# later round is not walked again.
_INDEX_CACHE = 1024


def skip(skipped: Counter, rank: int, reason: str, detail: str, what: str = "the rest of") -> None:
    """Counts one skip under ``reason`` and says what was skipped on stderr."""
    skipped[reason] += 1
    print(f"[data] rank {rank}: skipping {what} {detail}", file=sys.stderr, flush=True)


def tar_index(url: str) -> tuple[np.ndarray, Exception | None]:
    """(start, end) byte range of every sample of a tar shard, read from its headers alone.

    A sample is a run of consecutive members with one key (webdataset's grouping);
    its range runs from its first header to the padded end of its last member, so
    it parses alone. Returns the error that stopped the walk, if any, with the
    samples before it that lie wholly inside the file (a truncated shard keeps them).
    """
    fs, path = fs_and_path(url)
    rows: list[list[int]] = []
    last_key, err = None, None
    with fs.open(path, "rb") as f:
        size = f.seek(0, io.SEEK_END)
        f.seek(0)
        try:
            with tarfile.open(fileobj=f, mode="r:") as tar:  # seeks over the data: headers only
                for info in tar:
                    key = base_plus_ext(info.name)[0] if info.isreg() else None
                    if key is None:
                        continue
                    end = info.offset_data + -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                    if key == last_key:
                        rows[-1][1] = end
                    else:
                        rows.append([info.offset, end])
                        last_key = key
        except PERMANENT as e:
            err = e
    return np.array([r for r in rows if r[1] <= size], dtype=np.int64).reshape(-1, 2), err


def parse_sample(url: str, data: bytes) -> dict:
    """The members of one sample's byte range as webdataset's ``group_by_keys`` gives them.

    Random-access tar mode over the bytes in memory, members sliced out directly:
    a streaming tarfile per sample (``tar_file_iterator``) costs 1.4 ms a sample.
    """
    sample: dict = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for info in tar:
            key, ext = base_plus_ext(info.name) if info.isreg() else (None, None)
            if key is None:
                continue
            if sample and key != sample["__key__"]:
                raise DataError(f"{url}: members of {sample['__key__']} and {key} in one sample's range")
            sample.setdefault("__key__", key)
            sample[ext.lower()] = data[info.offset_data:info.offset_data + info.size]
    if not sample:
        raise DataError("no sample member in its byte range")
    return {**sample, "__url__": url}


def read_ranges(urls: list[str], starts: list[int], ends: list[int]) -> list:
    """Bytes [start, end) of each url, or the exception that reading it raised, in order.

    One ``cat_ranges`` call per filesystem: ranged GETs run concurrently on async
    object stores (s3, gcs, http) and without a read-ahead cache (a cache would
    fetch a whole block per random read).
    """
    out: list = [None] * len(urls)
    groups: dict = {}
    for i, url in enumerate(urls):
        fs, path = fs_and_path(url)
        groups.setdefault(id(fs), (fs, []))[1].append((i, path))
    for fs, items in groups.values():
        try:
            got = fs.cat_ranges([p for _, p in items], [starts[i] for i, _ in items],
                                [ends[i] for i, _ in items], on_error="return")
        except Exception as e:  # noqa: BLE001 - whatever the backend raises, handled per sample
            got = [e] * len(items)
        for (i, _), data in zip(items, got):
            out[i] = data
    return out


class TarReader:
    """One worker's random access to a shard set: cached indexes, ranged reads, retries.

    Transient errors are retried as ``datasets.loader._Stream._members`` retries
    its streamed reads (called ``_members`` below), and what is skipped is counted the same way.

    ``urls`` and ``counts`` are the shard set's (the counts the manifest promises);
    ``retries`` and ``backoff_s`` are the loader's ``read_retries`` and
    ``read_backoff_s``; ``rank`` names the rank in messages.
    """

    def __init__(self, urls: tuple[str, ...], counts: tuple[int, ...], retries: int, backoff_s: float,
                 rank: int):
        self.urls, self.counts, self.retries, self.backoff_s, self.rank = urls, counts, retries, backoff_s, rank
        self._indexes: OrderedDict = OrderedDict()  # shard -> (index, problem), per worker process

    def _index(self, shard: int, skipped: Counter) -> np.ndarray:
        """The shard's sample ranges (cached); a damaged or short shard is counted at every visit."""
        url = self.urls[shard]
        if shard in self._indexes:
            self._indexes.move_to_end(shard)
            index, problem = self._indexes[shard]
        else:
            index, problem, transient = self._walk(url)
            if len(index) < self.counts[shard] and problem is None:
                problem = ("short_shard", f"{url}: {len(index)} samples, the manifest says "
                                          f"{self.counts[shard]} (truncated?)")
            if not transient:  # a connection that gave up may work at the next visit
                self._indexes[shard] = (index, problem)
                if len(self._indexes) > _INDEX_CACHE:
                    self._indexes.popitem(last=False)
        if problem is not None:
            skip(skipped, self.rank, *problem)
        return index

    def _walk(self, url: str) -> tuple[np.ndarray, tuple | None, bool]:
        """tar_index with the reopen policy of ``_members``: (index, problem, gave up on a transient error)."""
        for attempt in range(self.retries + 1):
            try:
                index, err = tar_index(url)
            except PERMANENT as e:
                index, err = np.zeros((0, 2), np.int64), e
            except Exception as e:  # noqa: BLE001 - object-store hiccups; any fsspec backend's errors
                if attempt == self.retries:
                    return np.zeros((0, 2), np.int64), ("bad_shard", f"{url} after {attempt} retries: "
                                                                     f"{type(e).__name__}: {e}"), True
                print(f"[data] rank {self.rank}: indexing {url} failed ({type(e).__name__}: {e}); "
                      f"retry {attempt + 1}", file=sys.stderr, flush=True)
                time.sleep(self.backoff_s * 2 ** attempt)
                continue
            if err is None:
                return index, None, False
            return index, ("bad_shard", f"{url} after {len(index)} samples: {type(err).__name__}: {err}"), False
        raise AssertionError("unreachable")

    def _fetch(self, picks: list, failed: dict, skipped: Counter) -> list:
        """Raw samples for (shard, start, end) picks, None where unreadable; transient errors are retried.

        A permanent error loses that sample only: the same bytes fail the same way
        however the reads were grouped, so a resumed stream (whose fetch groups start
        elsewhere) matches. A shard still failing after the retries is given up for
        the rest of the block. ``failed`` (shard -> "bad" | "gone") counts each once.
        """
        out: list = [None] * len(picks)
        todo = list(range(len(picks)))
        for attempt in range(self.retries + 1):
            todo = [i for i in todo if failed.get(picks[i][0]) != "gone"]
            got = read_ranges([self.urls[picks[i][0]] for i in todo],
                              [picks[i][1] for i in todo], [picks[i][2] for i in todo])
            retry, error = [], None
            for i, data in zip(todo, got):
                shard, start, end = picks[i]
                url = self.urls[shard]
                if isinstance(data, bytes) and len(data) != end - start:
                    data = DataError(f"read {len(data)} of {end - start} bytes at {start} (truncated?)")
                if isinstance(data, bytes):
                    out[i] = self._parse(url, data, skipped)
                elif failed.get(shard) == "gone":
                    continue
                elif isinstance(data, PERMANENT) or attempt == self.retries:
                    first = shard not in failed
                    failed[shard] = "bad" if isinstance(data, PERMANENT) else "gone"
                    if first:
                        skip(skipped, self.rank, "bad_shard",
                             f"{url} at byte {start}: {type(data).__name__}: {data}",
                             "unreadable samples of" if failed[shard] == "bad" else "the rest of")
                else:
                    retry.append(i)
                    error = data
            if not retry:
                break
            print(f"[data] rank {self.rank}: reading {len(retry)} samples failed ({type(error).__name__}: "
                  f"{error}); retry {attempt + 1}", file=sys.stderr, flush=True)
            time.sleep(self.backoff_s * 2 ** attempt)
            todo = retry
        return out

    def _parse(self, url: str, data: bytes, skipped: Counter) -> dict | None:
        """One sample's byte range -> the raw sample ``_members`` would have given."""
        try:
            sample = parse_sample(url, data)
        except PERMANENT as e:  # damaged headers inside the range: this sample only
            skipped["corrupt_member"] += 1
            if skipped["corrupt_member"] <= 10:
                print(f"[data] rank {self.rank}: skipping a member of {url}: {type(e).__name__}: {e}",
                      file=sys.stderr, flush=True)
            return None
        return sample

    def block(self, shards: list[int], rng: np.random.Generator, done: int,
              skipped: Counter) -> Iterator[tuple[int, dict | None]]:
        """(position, raw sample or None) for positions after ``done`` of one seeded permutation of
        all the block's samples; positions up to ``done`` are passed over without reading them."""
        index = [self._index(s, skipped) for s in shards]
        owner = np.repeat(np.arange(len(shards)), [len(ix) for ix in index])
        order = rng.permutation(len(owner))
        first = np.cumsum([0] + [len(ix) for ix in index])  # block entry -> (owner, row)
        failed: dict = {}
        for lo in range(done, len(order), _FETCH):
            picks = []
            for e in order[lo:lo + _FETCH]:
                k = int(owner[e])
                start, end = index[k][e - first[k]]
                picks.append((shards[k], int(start), int(end)))
            yield from enumerate(self._fetch(picks, failed, skipped), start=lo + 1)
