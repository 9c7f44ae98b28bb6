"""Reading ``torch.distributed.checkpoint`` (DCP) folders without running code from them.

DCP itself reads ``.metadata`` with ``pickle.load`` and every non-tensor value
with ``torch.load(weights_only=False)``: a crafted folder would run code
before anything is checked. Here instead:

- ``read_metadata`` unpickles ``.metadata`` resolving only the records DCP
  writes (its metadata dataclasses, ``_StorageInfo``, ``torch.Size``, dtypes,
  layouts), then checks their types, the data file names (``__<rank>_<n>.distcp``
  in the folder itself) and byte ranges;
- ``SafeReader`` hands DCP that already checked metadata (DCP never opens
  ``.metadata`` itself) and refuses stream transforms (this project writes none);
- ``SafeLoadPlanner`` loads non-tensor values with ``weights_only=True`` and
  refuses a pickled value where the state holds a tensor.

Refusals raise ``UnsafeCheckpointError``, damage ``CheckpointError`` (both of
``trainer.model_io``); ``trainer.run.checkpoint`` adds the file's URL.
"""

from __future__ import annotations

import io
import pickle
import re
from typing import Any

import torch
import torch.distributed.checkpoint.metadata as md
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.planner import ReadItem

from trainer.model_io.errors import CheckpointError, UnsafeCheckpointError

MAX_METADATA_BYTES = 64 << 20
"""A real ``.metadata`` holds a few hundred bytes per tensor: far below this even at 1024 px."""

DATA_FILE = re.compile(r"^__\d+_\d+\.distcp$")

_ALLOWED: dict[tuple[str, str], Any] = {
    **{("torch.distributed.checkpoint.metadata", n): getattr(md, n) for n in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "_MEM_FORMAT_ENCODING", "MetadataIndex", "StorageMeta")},
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): _StorageInfo,
    ("torch", "Size"): torch.Size,
    ("torch.serialization", "_get_layout"): torch.serialization._get_layout,  # a name -> torch.layout lookup
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafeCheckpointError(f"refusing to unpickle {module}.{name}: checkpoint metadata holds only DCP's "
                                    "records, sizes and dtypes (this one could run code)")


def _size(x: Any) -> bool:
    return isinstance(x, torch.Size) and all(type(v) is int and v >= 0 for v in x)


def _check(meta: Any) -> md.Metadata:
    """``meta`` if every record has the types and values DCP writes; raises CheckpointError otherwise."""
    if not isinstance(meta, md.Metadata):
        raise CheckpointError(f"not DCP metadata but a {type(meta).__name__}")
    if not isinstance(meta.state_dict_metadata, dict) or not isinstance(meta.storage_data, dict):
        raise CheckpointError("malformed DCP metadata (no state_dict_metadata or storage_data dict)")
    for key, entry in meta.state_dict_metadata.items():
        ok = isinstance(key, str) and (isinstance(entry, md.BytesStorageMetadata) or (
            isinstance(entry, md.TensorStorageMetadata) and isinstance(entry.properties, md.TensorProperties)
            and isinstance(entry.properties.dtype, torch.dtype) and _size(entry.size)
            and isinstance(entry.chunks, list) and all(
                isinstance(c, md.ChunkStorageMetadata) and _size(c.offsets) and _size(c.sizes)
                and len(c.offsets) == len(c.sizes) == len(entry.size) for c in entry.chunks)))
        if not ok:
            raise CheckpointError(f"malformed DCP metadata entry {str(key)[:80]!r}")
    for index, info in meta.storage_data.items():
        ok = (isinstance(index, md.MetadataIndex) and isinstance(index.fqn, str) and isinstance(info, _StorageInfo)
              and isinstance(info.relative_path, str) and DATA_FILE.match(info.relative_path) is not None
              and type(info.offset) is int and type(info.length) is int and info.offset >= 0 and info.length >= 0)
        if not ok:
            raise CheckpointError(f"malformed DCP storage entry for {str(getattr(index, 'fqn', index))[:80]!r}")
        if info.transform_descriptors:
            raise UnsafeCheckpointError(f"refusing stream transforms {info.transform_descriptors!r} "
                                        f"on {index.fqn!r}: checkpoints here are written without any")
    if not (meta.planner_data is None or isinstance(meta.planner_data, dict)):
        raise CheckpointError("malformed DCP metadata (planner_data)")
    if not (meta.storage_meta is None or isinstance(meta.storage_meta, md.StorageMeta)):
        raise CheckpointError("malformed DCP metadata (storage_meta)")
    return meta


def read_metadata(data: bytes) -> md.Metadata:
    """The checked DCP metadata in the bytes of a ``.metadata`` file (see module doc)."""
    if len(data) > MAX_METADATA_BYTES:
        raise CheckpointError(f"metadata of {len(data)} bytes (at most {MAX_METADATA_BYTES} are read)")
    try:
        meta = _MetadataUnpickler(io.BytesIO(data)).load()
    except CheckpointError:
        raise
    except Exception as e:  # a damaged pickle fails in many ways (EOFError, KeyError in the memo...)
        raise CheckpointError(f"truncated or corrupt metadata ({type(e).__name__}: {e})".splitlines()[0]) from e
    return _check(meta)


def data_files(meta: md.Metadata) -> set[str]:
    """The data files the metadata's entries point into."""
    return {info.relative_path for info in meta.storage_data.values()}


def load_value(data: bytes, fqn: str) -> Any:
    """A non-tensor value DCP stored (``torch.save`` bytes), loaded with ``weights_only=True``."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = str(e).splitlines()
        detail = next((ln.strip() for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), lines[0] if lines else "")
        raise UnsafeCheckpointError(f"refusing to unpickle the stored value of {fqn!r}: only tensors and plain "
                                    f"python values are read ({detail})") from e
    except Exception as e:
        raise CheckpointError(f"truncated or corrupt stored value of {fqn!r} ({type(e).__name__})") from e


class SafeReader(FsspecReader):
    """An ``FsspecReader`` for a folder whose metadata ``read_metadata`` has already read and checked."""

    def __init__(self, path: str, metadata: md.Metadata):
        super().__init__(path)
        self._metadata = metadata

    # No **kwargs: DCP then never falls back to reading a per-rank ``__<rank>.metadata`` itself.
    def read_metadata(self) -> md.Metadata:
        if self._metadata.storage_meta is None:
            self._metadata.storage_meta = md.StorageMeta()
        self._metadata.storage_meta.load_id = self.load_id
        return self._metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, but non-tensor values load through ``load_value``."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        if torch.is_tensor(self.state_dict.get(fqn)):
            raise UnsafeCheckpointError(f"refusing a pickled value stored for tensor {fqn!r}")
        obj = load_value(value.getvalue(), fqn)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj
