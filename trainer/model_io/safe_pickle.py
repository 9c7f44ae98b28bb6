"""Reading pickled checkpoints without running the code they may carry, and
without letting the sizes they declare exhaust memory or time.

Two readers:
- ``torch_load``: ``torch.load(weights_only=True)`` plus an allow-list
  (``argparse.Namespace`` for rosinality's ``args``); anything else is refused.
  Before torch reads a record, ``check_archive`` and a scan of the pickle check
  that the archive's records and the storages it declares fit the file.
- ``load_nvlabs_pickle``: an ``Unpickler`` whose ``find_class`` resolves only
  tensor/storage rebuilders, ``OrderedDict``, numpy data constructors and
  NVlabs' ``_reconstruct_persistent_obj``, which here returns a plain
  ``PersistentRecord`` (class name + state) instead of executing the module
  source embedded in the pickle. Every array or tensor it rebuilds must fit the
  bytes the file holds; numpy arrays must be plain numeric ones.

Refusals are ``CheckpointError``; the commands turn them into exit status 2.
"""

from __future__ import annotations

import argparse
import collections
import io
import math
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from .errors import CheckpointError, UnsafeCheckpointError

TORCH_SAFE_GLOBALS = [argparse.Namespace]

MAX_TENSOR_BYTES = 2 << 30
"""Largest tensor, array or archive record read (the largest genuine one, VGG-16's
classifier weight, is 411 MB)."""
MAX_ZIP_RATIO = 50
"""Largest uncompressed/compressed ratio of an archive record: torch stores records
uncompressed, and re-zipped weights or pickles shrink far less than this."""
MAX_MODULE_DEPTH = 32
"""Deepest module nesting of an NVlabs network (theirs nest 4 deep)."""

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


def check_archive(zf: zipfile.ZipFile, archive_bytes: int, what: str) -> None:
    """Refuses a zip whose records would unpack to more than a checkpoint needs (a zip
    bomb) or lie past the end of the file, from the central directory alone."""
    total = 0
    for info in zf.infolist():
        name, size, packed = info.filename, info.file_size, info.compress_size
        if info.header_offset + packed > archive_bytes:
            raise CheckpointError(f"{what}: truncated or corrupt archive (record {name} ends past the end of the file)")
        if size > MAX_TENSOR_BYTES:
            raise CheckpointError(f"{what}: archive record {name} declares {size} bytes, more than any "
                                  f"checkpoint record holds ({MAX_TENSOR_BYTES})")
        if info.compress_type == zipfile.ZIP_STORED and size != packed:
            raise CheckpointError(f"{what}: truncated or corrupt archive (stored record {name} declares "
                                  f"{size} bytes in {packed})")
        # Tiny records (version, byteorder) may compress well; they are counted in the total.
        if size > max(64 << 10, MAX_ZIP_RATIO * packed):
            raise CheckpointError(f"{what}: archive record {name} is compressed {size / max(packed, 1):.0f}:1 "
                                  f"({packed} -> {size} bytes): a zip bomb, not a checkpoint")
        total += size
    if total > MAX_ZIP_RATIO * archive_bytes + (1 << 20):
        raise CheckpointError(f"{what}: archive records unpack to {total} bytes from a {archive_bytes}-byte "
                              "file: a zip bomb, not a checkpoint")


class _Anything:
    """Every object a scanned pickle asks for: takes any arguments and state, builds nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs) -> _Anything:
        return _Anything()

    def _ignore(self, *args) -> None:
        pass

    __setstate__ = __setitem__ = append = extend = _ignore  # BUILD, SETITEMS, APPENDS


class _StorageScan(pickle.Unpickler):
    """Reads a torch pickle for its storage references only (``key -> declared bytes``):
    every global is a stand-in, so nothing is built or allocated."""

    def __init__(self, f: BinaryIO):
        super().__init__(f)
        self.storages: dict[str, int] = {}

    def find_class(self, module: str, name: str):
        if module == "torch" and name.endswith("Storage"):
            return type(name, (_Anything,), {"storage_name": name})
        return _Anything

    def persistent_load(self, pid):
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] in ("storage", b"storage"):
            kind, key, numel = getattr(pid[1], "storage_name", None), pid[2], pid[4]
            if kind is None or not isinstance(numel, int) or numel < 0:
                raise ValueError(f"malformed storage reference {str(pid)[:80]}")
            itemsize = 1 if kind == "UntypedStorage" else \
                torch.storage._get_dtype_from_pickle_storage_type(kind).itemsize
            self.storages[key.decode() if isinstance(key, bytes) else str(key)] = numel * itemsize
        return _Anything()


def _check_torch_file(f: BinaryIO, what: str) -> None:
    """Refuses a torch file whose archive or declared storages do not fit it, before torch
    allocates the storages or reads a record."""
    size = f.seek(0, io.SEEK_END)
    f.seek(0)
    head = f.read(16)
    f.seek(0)
    if head.startswith(b"PK\x03\x04"):
        with zipfile.ZipFile(f) as zf:
            check_archive(zf, size, what)
            infos = {i.filename: i for i in zf.infolist()}
            root = zf.infolist()[0].filename.split("/")[0]  # torch names the records after the first one's folder
            if f"{root}/data.pkl" not in infos:
                raise CheckpointError(f"{what}: truncated or corrupt checkpoint (no {root}/data.pkl in the archive)")
            with zf.open(f"{root}/data.pkl") as pkl:
                scan = _StorageScan(pkl)
                scan.load()
        for key, nbytes in scan.storages.items():
            held = infos[f"{root}/data/{key}"].file_size if f"{root}/data/{key}" in infos else None
            if held != nbytes:
                raise CheckpointError(f"{what}: storage {key} declares {nbytes} bytes but the archive holds "
                                      f"{'no record' if held is None else held} for it")
    elif head.startswith(_LEGACY_TORCH_MAGIC):
        for _ in range(3):  # magic number, protocol version, system info
            _StorageScan(f).load()
        scan = _StorageScan(f)
        scan.load()
        declared = sum(scan.storages.values())
        if declared > size:  # torch allocates these before reading the data that follows
            raise CheckpointError(f"{what}: storages declare {declared} bytes but the file holds {size}")
    else:
        raise CheckpointError(f"{what}: not a torch checkpoint (starts with {head[:8]!r})")


def _check_tensors(obj: object, what: str) -> None:
    """Refuses tensors larger than their storage (stride-0 views of a few bytes that any copy
    would blow up); walks the loaded containers once each."""
    stack, seen = [obj], set()
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, torch.Tensor) and o.layout == torch.strided:
            _check_tensor_size(tuple(o.shape), o.element_size(), o.untyped_storage().nbytes(), what)
        elif isinstance(o, dict):
            stack += [*o.keys(), *o.values()]
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack += list(o)
        elif isinstance(o, argparse.Namespace):
            stack += list(vars(o).values())


def _check_tensor_size(shape: tuple, itemsize: int, held: int, what: str) -> None:
    n = math.prod(shape) * itemsize
    if n and n > min(held, MAX_TENSOR_BYTES):
        raise CheckpointError(f"{what}: tensor of shape {list(shape)[:8]} declares {n} bytes "
                              f"but its storage holds {held}")


def torch_load(path: str | Path) -> object:
    """``torch.load`` with weights_only and the allow-list, once the sizes the file declares
    are checked; clear errors for bad files."""
    return _torch_load(path, str(path))


def _torch_load(src: str | Path | bytes, what: str) -> object:
    try:
        with io.BytesIO(src) if isinstance(src, bytes) else open(src, "rb") as f:
            _check_torch_file(f, what)
    except CheckpointError:
        raise
    except Exception as e:  # the file's content only: the scan builds nothing from it
        raise _corrupt(what, "checkpoint", e) from e
    try:
        with torch.serialization.safe_globals(TORCH_SAFE_GLOBALS):
            obj = torch.load(io.BytesIO(src) if isinstance(src, bytes) else src, map_location="cpu",
                             weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{what}: refusing to load a Python object outside the allow-list "
            f"(tensors, containers, argparse.Namespace): {str(e).splitlines()[0]}") from e
    except Exception as e:  # weights_only ran nothing from the file, whatever failed
        raise _corrupt(what, "checkpoint", e) from e
    _check_tensors(obj, what)
    return obj


def _corrupt(what: str, kind: str, e: Exception) -> CheckpointError:
    line = str(e).splitlines()[0] if str(e) else ""
    return CheckpointError(f"{what}: truncated or corrupt {kind} ({type(e).__name__}: {line})")


@dataclass(repr=False)
class PersistentRecord:
    """An NVlabs persistent object, kept as data: its class name and ``__dict__``."""

    class_name: str
    state: dict = field(default_factory=dict)

    def __setstate__(self, state):  # BUILD after REDUCE, if a pickle has one
        self.state.update(state or {})

    def __repr__(self) -> str:  # not the state: a hostile one can be cyclic or exponentially shared
        return f"PersistentRecord({self.class_name!r})"


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
    if not isinstance(b, bytes):
        raise CheckpointError(f"a pickled storage is a {type(b).__name__}, not bytes")
    return _torch_load(b, "a pickled storage")


def _rebuild_tensor(storage, offset, size, stride, *rest):
    if not isinstance(storage, torch.storage.TypedStorage):
        raise CheckpointError(f"tensor rebuilt from a {type(storage).__name__}, not a storage")
    held = storage._untyped_storage.nbytes()  # the private names: the public ones warn of deprecation
    _check_tensor_size(_shape(size), storage._dtype.itemsize, held, "a pickled tensor")
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, *rest)


def _shape(shape) -> tuple[int, ...]:
    if not (isinstance(shape, (tuple, list, torch.Size)) and len(shape) <= 32
            and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise CheckpointError(f"malformed shape {str(shape)[:80]}")
    return tuple(shape)


# numpy. Its own dtype.__setstate__ accepts fields holding Python objects without flagging
# the dtype as holding them (and filling such an array crashes the interpreter), so dtypes
# stay data until used, and only plain numeric ones are ever rebuilt.

class _NumpyDtype:
    """A pickled ``numpy.dtype`` (spec and BUILD state), resolved by ``_numpy_dtype``."""

    def __init__(self, spec, align=False, copy=False):
        self.spec, self.state = spec, None

    def __setstate__(self, state) -> None:
        self.state = state


def _numpy_dtype(d) -> np.dtype:
    spec, state = (d.spec, d.state) if isinstance(d, _NumpyDtype) else (d, None)
    spec = spec.decode("latin-1") if isinstance(spec, bytes) else spec
    dt = np.dtype(spec) if isinstance(spec, str) and len(spec) <= 4 else None
    if dt is None or dt.kind not in "biufc" or dt.fields is not None or dt.subdtype is not None:
        raise UnsafeCheckpointError(f"refusing numpy dtype {str(spec)[:40]!r}: only plain numeric arrays are "
                                    "read (object arrays hold pickled Python objects)")
    if state is not None:
        if not (isinstance(state, tuple) and len(state) >= 5 and state[1] in ("<", ">", "|", "=")
                and state[2:5] == (None, None, None)):
            raise UnsafeCheckpointError("refusing a structured or sub-array numpy dtype: only plain numeric "
                                        "arrays are read")
        dt = dt.newbyteorder(state[1]) if state[1] in ("<", ">") else dt
    return dt


class _NumpyArray(np.ndarray):
    """An array from a pickle; its BUILD state must hold exactly the bytes its shape needs."""

    def __setstate__(self, state) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise CheckpointError("malformed numpy array state")
        version, shape, dtype, fortran, raw = state
        dt, shape = _numpy_dtype(dtype), _shape(shape)
        n = math.prod(shape) * dt.itemsize
        if not isinstance(raw, bytes) or len(raw) != n:
            raise CheckpointError(f"numpy array of shape {list(shape)[:8]} declares {n} bytes but holds "
                                  f"{len(raw) if isinstance(raw, bytes) else type(raw).__name__}")
        super().__setstate__((version, shape, dt, bool(fortran), raw))


_NDARRAY = object()  # the pickle's ``numpy.ndarray``: a name for _reconstruct, not a constructor


def _np_reconstruct(subtype, shape, dtype, file_bytes: int) -> np.ndarray:
    if subtype is not _NDARRAY:
        raise UnsafeCheckpointError("refusing to rebuild a numpy array of another class")
    dt, shape = _numpy_dtype(dtype), _shape(shape)
    n = math.prod(shape) * dt.itemsize
    if n > min(file_bytes, MAX_TENSOR_BYTES):  # numpy pickles declare (0,); the data comes with BUILD
        raise CheckpointError(f"numpy array of shape {list(shape)[:8]} declares {n} bytes, more than "
                              f"the whole file holds ({file_bytes} bytes)")
    return np.ndarray.__new__(_NumpyArray, shape, dt)


def _np_scalar(dtype, data=None):
    dt = _numpy_dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dt.itemsize:
        raise CheckpointError(f"malformed numpy scalar of dtype {dt}")
    return np._core.multiarray.scalar(dt, data)


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
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
    def __init__(self, f: BinaryIO, file_bytes: int):
        super().__init__(f)
        self._numpy = {"_reconstruct": partial(_np_reconstruct, file_bytes=file_bytes), "scalar": _np_scalar,
                       "ndarray": _NDARRAY, "dtype": _NumpyDtype}

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy") and name in self._numpy:
            return self._numpy[name]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafeCheckpointError(
            f"refusing to unpickle {module}.{name}: only tensors, containers and NVlabs "
            "persistent objects are read (their embedded source code is never run)")


def load_nvlabs_pickle(path: str | Path) -> dict:
    """The top-level dict of an NVlabs network pickle, with modules as ``PersistentRecord``."""
    try:
        with open(path, "rb") as f:
            data = _RestrictedUnpickler(f, os.fstat(f.fileno()).st_size).load()
    except CheckpointError as e:
        raise (UnsafeCheckpointError if isinstance(e, UnsafeCheckpointError) else CheckpointError)(
            f"{path}: {e}") from e
    except Exception as e:  # the file's content only: nothing in it ran, whatever failed
        raise _corrupt(str(path), "pickle", e) from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict of networks, got {type(data).__name__}")
    return data


def flatten_record(rec: PersistentRecord, prefix: str = "", what: str = "network") -> dict[str, torch.Tensor]:
    """The state dict (parameters and persistent buffers) of a persistent module tree.

    Iterative, and each record once: a hostile pickle can nest records deeply, loop, or
    point twice at the same record at every level (2**depth paths from a few KB)."""
    out: dict[str, torch.Tensor] = {}
    stack, seen = [(prefix, rec, 0)], {id(rec)}
    while stack:
        pre, r, depth = stack.pop()
        where = pre[:-1] or "the top module"
        if depth > MAX_MODULE_DEPTH:
            raise CheckpointError(f"{what}: modules nested more than {MAX_MODULE_DEPTH} deep at {where}")
        st = r.state if isinstance(r.state, dict) else {}
        try:
            skip = set(st.get("_non_persistent_buffers_set") or ())
            for group in ("_parameters", "_buffers"):
                for name, t in dict(st.get(group) or {}).items():
                    if t is not None and name not in skip:
                        out[pre + str(name)] = t.detach()
            children = list(dict(st.get("_modules") or {}).items())
        except (TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{what}: malformed module {where} ({type(e).__name__}: {e})") from e
        for name, child in children:
            if isinstance(child, PersistentRecord) and id(child) in seen:  # checked when met, not when visited
                raise CheckpointError(f"{what}: module {pre}{name} appears twice in the module tree (a cycle "
                                      "or a shared module); a network pickle holds a plain tree")
            if isinstance(child, PersistentRecord):
                seen.add(id(child))
            elif child is not None:
                raise CheckpointError(f"{what}: unexpected module type at {pre}{name}: {type(child).__name__}")
        stack += [(f"{pre}{name}.", child, depth + 1) for name, child in reversed(children)  # popped in order
                  if isinstance(child, PersistentRecord)]
    return out


def find_record(rec: PersistentRecord, path: str) -> PersistentRecord | None:
    """The sub-record at a dotted module path, or None."""
    for part in path.split("."):
        modules = rec.state.get("_modules") if isinstance(rec.state, dict) else None
        rec = modules.get(part) if isinstance(modules, dict) else None
        if not isinstance(rec, PersistentRecord):
            return None
    return rec
