"""Reading pickled checkpoints without running the code they may carry.

Two readers:
- ``torch_load``: ``torch.load(weights_only=True)`` plus an allow-list
  (``argparse.Namespace`` for rosinality's ``args``); anything else is refused.
- ``load_nvlabs_pickle``: an ``Unpickler`` whose ``find_class`` resolves only
  tensor/storage rebuilders, ``OrderedDict``, numpy data constructors and
  NVlabs' ``_reconstruct_persistent_obj``, which here returns a plain
  ``PersistentRecord`` (class name + state) instead of executing the module
  source embedded in the pickle.
"""

from __future__ import annotations

import argparse
import collections
import io
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError, UnsafeCheckpointError

TORCH_SAFE_GLOBALS = [argparse.Namespace]

# Legacy (pre-zip) torch.save files begin with this pickled magic number.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"


def file_kind(path: str | Path) -> str:
    """"torch-zip", "torch-legacy" or "pickle" from the first bytes; raises on other files."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise CheckpointError(f"{path}: file is empty")
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return "torch-legacy"
    if head[:1] == b"\x80":
        return "pickle"
    raise CheckpointError(f"{path}: not a torch checkpoint or a pickle (starts with {head[:8]!r})")


def torch_load(path: str | Path) -> object:
    """``torch.load`` with weights_only and the allow-list; clear errors for bad files."""
    try:
        with torch.serialization.safe_globals(TORCH_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{path}: refusing to load a Python object outside the allow-list "
            f"(tensors, containers, argparse.Namespace): {str(e).splitlines()[0]}") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from e


@dataclass
class PersistentRecord:
    """An NVlabs persistent object, kept as data: its class name and ``__dict__``."""

    class_name: str
    state: dict = field(default_factory=dict)

    def __setstate__(self, state):  # BUILD after REDUCE, if a pickle has one
        self.state.update(state or {})


class _EasyDict(dict):
    """Stand-in for ``dnnlib.EasyDict`` (a dict with attribute access)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _reconstruct_persistent_obj(meta: dict) -> PersistentRecord:
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise UnsafeCheckpointError(f"unsupported persistent object: {type(meta).__name__}")
    return PersistentRecord(str(meta.get("class_name")), dict(meta.get("state") or {}))


def _load_storage_from_bytes(b: bytes):
    return torch.load(io.BytesIO(b), weights_only=True)


def _numpy_global(name: str):
    return {"_reconstruct": np._core.multiarray._reconstruct, "scalar": np._core.multiarray.scalar,
            "ndarray": np.ndarray, "dtype": np.dtype}.get(name)


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("torch", "Size"): torch.Size,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib", "EasyDict"): _EasyDict,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy") and _numpy_global(name):
            return _numpy_global(name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafeCheckpointError(
            f"refusing to unpickle {module}.{name}: only tensors, containers and NVlabs "
            "persistent objects are read (their embedded source code is never run)")


def load_nvlabs_pickle(path: str | Path) -> dict:
    """The top-level dict of an NVlabs network pickle, with modules as ``PersistentRecord``."""
    try:
        with open(path, "rb") as f:
            data = _RestrictedUnpickler(f).load()
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f"{path}: {e}") from e
    except (EOFError, pickle.UnpicklingError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt pickle ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict of networks, got {type(data).__name__}")
    return data


def flatten_record(rec: PersistentRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict (parameters and persistent buffers) of a persistent module tree."""
    st = rec.state
    out: dict[str, torch.Tensor] = {}
    skip = set(st.get("_non_persistent_buffers_set") or ())
    for group in ("_parameters", "_buffers"):
        for name, t in (st.get(group) or {}).items():
            if t is not None and name not in skip:
                out[prefix + name] = t.detach()
    for name, child in (st.get("_modules") or {}).items():
        if isinstance(child, PersistentRecord):
            out.update(flatten_record(child, f"{prefix}{name}."))
        elif child is not None:
            raise CheckpointError(f"unexpected module type at {prefix}{name}: {type(child).__name__}")
    return out


def find_record(rec: PersistentRecord, path: str) -> PersistentRecord | None:
    """The sub-record at a dotted module path, or None."""
    for part in path.split("."):
        rec = (rec.state.get("_modules") or {}).get(part)
        if not isinstance(rec, PersistentRecord):
            return None
    return rec
