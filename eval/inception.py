"""The TF "2015-12-05" Inception-v3 graph that defines FID, in plain PyTorch.

Layout and names follow pytorch-fid's port (torchvision's ``Inception3`` without
AuxLogits, 1008 classes) with the patches that make it match the TF graph: the
average pools inside the A, C and E blocks exclude padding from the mean, and the
last block (Mixed_7c) max-pools its pool branch. ``forward`` returns the 2048-d
pool3 features, optionally with the 1008 logits. The input is already resized to
299x299 and scaled to the network range (see ``eval.fid_preprocess``).

Weights come from a local file in any public release (nothing is downloaded):
pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (a torchvision-layout
state dict), torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` (the
same layout: its converter writes the same keys, without BatchNorm's step
counters) or NVIDIA's TorchScript ``inception-2015-12-05.pt``. The TorchScript
archive is read as data only: a restricted unpickler rebuilds its module tree as
plain records and its tensors from the archive's storages; its code is never
compiled or run, and any other Python object it asks for is refused.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import zipfile
import zlib
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.model_io.errors import CheckpointError
from trainer.model_io.safe_pickle import MAX_MODULE_DEPTH, check_archive, torch_load
from trainer.networks.weights import PUBLIC, WeightsError, load_into, missing_message, sha256, tensors, verify

FEATURES = 2048
CLASSES = 1008
# The blocks in order (NVIDIA calls them layers.mixed, layers.mixed_1, ...) and their type.
_BLOCKS = [("Mixed_5b", "A"), ("Mixed_5c", "A"), ("Mixed_5d", "A"), ("Mixed_6a", "B"),
           ("Mixed_6b", "C"), ("Mixed_6c", "C"), ("Mixed_6d", "C"), ("Mixed_6e", "C"),
           ("Mixed_7a", "D"), ("Mixed_7b", "E"), ("Mixed_7c", "E")]


class BasicConv2d(nn.Module):
    """conv (no bias) + BatchNorm (eps 0.001, the TF graph's) + ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x: torch.Tensor) -> torch.Tensor:
    # TF's SAME average pool divides by the number of real pixels under the window,
    # not by 9: torch's default (count_include_pad=True) darkens the border.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                     self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = conv(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """``pool="max"`` for Mixed_7c: the TF graph max-pools there (a quirk of the 2015 graph)."""

    def __init__(self, cin: int, pool: str = "avg"):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.pool == "max" else _avg_pool_tf(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b), self.branch_pool(pooled)], 1)


class InceptionV3(nn.Module):
    """FID Inception-v3: [N, 3, 299, 299] in the network range -> [N, 2048] pool3 features."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(FEATURES, CLASSES)
        self.unit_rms = False
        """Scale each image's features to unit RMS (the untrained stand-in only; never with the
        public weights, whose raw features define FID)."""

    def forward(self, x: torch.Tensor, return_logits: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name, _ in _BLOCKS:
            x = getattr(self, name)(x)
        features = F.adaptive_avg_pool2d(x, 1).flatten(1)
        if self.unit_rms:
            features = F.normalize(features, dim=1) * FEATURES ** 0.5
        return (features, self.fc(features)) if return_logits else features


def _tower(prefix: str, ours: list[str]) -> dict[str, str]:
    # TF names the convs of one tower conv, conv_1, conv_2, ...
    return {o: f"{prefix}conv" + (f"_{i}" if i else "") for i, o in enumerate(ours)}


_BRANCHES = {
    "A": {"branch1x1": "conv", **_tower("tower.", ["branch5x5_1", "branch5x5_2"]),
          **_tower("tower_1.", ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"]),
          "branch_pool": "tower_2.conv"},
    "B": {"branch3x3": "conv", **_tower("tower.", ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"])},
    "C": {"branch1x1": "conv", **_tower("tower.", ["branch7x7_1", "branch7x7_2", "branch7x7_3"]),
          **_tower("tower_1.", [f"branch7x7dbl_{i}" for i in range(1, 6)]), "branch_pool": "tower_2.conv"},
    "D": {**_tower("tower.", ["branch3x3_1", "branch3x3_2"]),
          **_tower("tower_1.", [f"branch7x7x3_{i}" for i in range(1, 5)])},
    "E": {"branch1x1": "conv", "branch3x3_1": "tower.conv",
          **_tower("tower.mixed.", ["branch3x3_2a", "branch3x3_2b"]),
          **_tower("tower_1.", ["branch3x3dbl_1", "branch3x3dbl_2"]),
          **_tower("tower_1.mixed.", ["branch3x3dbl_3a", "branch3x3dbl_3b"]), "branch_pool": "tower_2.conv"},
}


def nvidia_conv_names() -> dict[str, str]:
    """Our BasicConv2d path -> the conv layer's path in NVIDIA's TorchScript (nested form)."""
    names = _tower("layers.", ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1",
                               "Conv2d_4a_3x3"])
    for i, (block, kind) in enumerate(_BLOCKS):
        theirs = "layers.mixed" + (f"_{i}" if i else "")
        names.update({f"{block}.{o}": f"{theirs}.{t}" for o, t in _BRANCHES[kind].items()})
    return names


def _canonical(name: str) -> str:
    # The TorchScript may nest (tower.mixed.conv) or flatten (tower_mixed_conv) the E towers.
    return name.replace(".", "_")


def convert_nvidia(flat: dict[str, torch.Tensor], reference: dict[str, torch.Tensor],
                   path: str | Path) -> dict[str, torch.Tensor]:
    """NVIDIA's tensors ("layers.conv.weight", ".beta", ".mean", ".var"; "output.*") -> our
    state dict; ``reference`` gives the expected shapes. BN there has no scale: it is 1."""
    canon: dict[str, torch.Tensor] = {}
    for k, v in flat.items():
        if _canonical(k) in canon:
            raise WeightsError(f"{path}: two tensors read as the same name {_canonical(k)!r}")
        canon[_canonical(k)] = v
    pairs = [(f"{ours}.{a}", f"{theirs}.{b}") for ours, theirs in nvidia_conv_names().items()
             for a, b in (("conv.weight", "weight"), ("bn.bias", "beta"),
                          ("bn.running_mean", "mean"), ("bn.running_var", "var"))]
    pairs += [("fc.weight", "output.weight"), ("fc.bias", "output.bias")]
    sd: dict[str, torch.Tensor] = {}
    problems = []
    for ours, theirs in pairs:
        t = canon.get(_canonical(theirs))
        if t is None:
            problems.append(f"missing {theirs}")
        elif t.shape != reference[ours].shape:
            problems.append(f"{theirs}: file {tuple(t.shape)} vs expected {tuple(reference[ours].shape)}")
        else:
            sd[ours] = t.float()
    if problems:
        raise WeightsError(f"{path}: not NVIDIA's Inception-v3 ({len(problems)} problems): "
                           + "; ".join(problems[:6]) + (" ..." if len(problems) > 6 else ""))
    for conv in nvidia_conv_names():
        sd[f"{conv}.bn.weight"] = torch.ones_like(sd[f"{conv}.bn.bias"])
    return sd


# NVIDIA's TorchScript archive, read as data. <root>/data.pkl pickles the module tree:
# every module is a GLOBAL "__torch__.<qualified name>" class rebuilt by NEWOBJ + BUILD
# with a dict of its attributes; tensors are _rebuild_tensor_v2 calls on persistent
# ("storage", <torch.*Storage>, key, location, numel) references to <root>/data/<key>.

_STORAGE_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
                   "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                   "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                   "BoolStorage": torch.bool}


class ScriptRecord:
    """A TorchScript object kept as data: ``class_name`` and the attribute ``state`` it was built with."""

    class_name = "?"
    state: object = None

    def __setstate__(self, state: object) -> None:
        self.state = state


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    if not isinstance(storage, torch.Tensor):
        raise WeightsError(f"tensor rebuilt from a {type(storage).__name__}, not a storage")
    numel = math.prod(int(d) for d in size)
    if numel > storage.numel():  # a stride-0 view of a few bytes that any copy would blow up
        raise WeightsError(f"tensor of shape {list(size)[:8]} declares {numel} elements, its storage holds "
                           f"{storage.numel()}")
    return torch.as_strided(storage, tuple(size), tuple(stride), int(offset))


# Data-only constructors; TorchScript's pickler also emits the torch.jit._pickle list
# builders and type tags for typed list/dict attributes. A parameter is kept as its data.
_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): lambda data, *args: data,
    ("torch._utils", "_rebuild_parameter_with_state"): lambda data, *args: data,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch.jit._pickle", f"build_{k}list"): list for k in ("int", "float", "bool", "double", "tensor")},
    ("torch.jit._pickle", "restore_type_tag"): lambda value, type_str: value,
}


class _ScriptUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, zf: zipfile.ZipFile, root: str):
        super().__init__(io.BytesIO(data))
        self._zf, self._root = zf, root
        self._storages: dict[str, torch.Tensor] = {}
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            # One placeholder subclass per TorchScript class, so records remember what they were.
            qual = f"{module}.{name}"
            if qual not in self._classes:
                self._classes[qual] = type("ScriptRecord", (ScriptRecord,), {"class_name": qual})
            return self._classes[qual]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]  # stands for the storage class in persistent ids
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise WeightsError(f"refusing to unpickle {module}.{name}: only TorchScript module records, "
                           "tensors and containers are read (the archive's code is never run)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], torch.dtype)):
            raise WeightsError(f"unsupported persistent reference {str(pid)[:80]}")
        _, dtype, key, _location, numel = pid
        key = str(key)
        if key not in self._storages:
            name, itemsize = f"{self._root}/data/{key}", dtype.itemsize
            if self._zf.getinfo(name).file_size != int(numel) * itemsize:  # checked before reading it
                raise WeightsError(f"storage {key} declares {numel} x {itemsize} bytes, the archive holds "
                                   f"{self._zf.getinfo(name).file_size}")
            raw = self._zf.read(name)
            self._storages[key] = (torch.frombuffer(bytearray(raw), dtype=dtype) if raw
                                   else torch.empty(0, dtype=dtype))
        return self._storages[key]


def is_torchscript(path: str | Path) -> bool:
    """True for a TorchScript archive (a zip with code/ or constants.pkl under its root)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise WeightsError(f"{path}: truncated or damaged zip archive (a partial download?): {e}") from e
    return any((n.count("/") >= 2 and n.split("/")[1] == "code") or n.endswith("/constants.pkl") for n in names)


def _flatten(root: ScriptRecord) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    stack, seen = [("", root, 0)], {id(root)}
    while stack:  # iterative, and each record once: a hostile pickle could nest deeply, loop or share
        prefix, rec, depth = stack.pop()
        if depth > MAX_MODULE_DEPTH:
            raise WeightsError(f"modules nested more than {MAX_MODULE_DEPTH} deep at {prefix[:-1]}")
        for k, v in (rec.state.items() if isinstance(rec.state, dict) else ()):
            if isinstance(v, torch.Tensor):
                out[f"{prefix}{k}"] = v
            elif isinstance(v, ScriptRecord) and id(v) in seen:  # checked when met, before descending
                raise WeightsError(f"module {prefix}{k} appears twice in the module tree (a cycle or a shared "
                                   "module); the Inception archive holds a plain tree")
            elif isinstance(v, ScriptRecord):
                seen.add(id(v))
                stack.append((f"{prefix}{k}.", v, depth + 1))
    return out


def read_torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor attribute of a TorchScript module tree, as "a.b.c" -> tensor, without
    compiling or running the archive's code."""
    try:
        with zipfile.ZipFile(path) as zf:
            check_archive(zf, Path(path).stat().st_size, str(path))
            pkls = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
            if len(pkls) != 1:
                raise WeightsError(f"{path}: expected one <root>/data.pkl in the archive, found {pkls[:4]}")
            root = pkls[0].split("/")[0]
            if f"{root}/byteorder" in zf.namelist() and zf.read(f"{root}/byteorder").strip() != b"little":
                raise WeightsError(f"{path}: big-endian tensor data is not supported")
            obj = _ScriptUnpickler(zf.read(pkls[0]), zf, root).load()
    except CheckpointError as e:
        raise WeightsError(f"{path}: {e}" if str(path) not in str(e) else str(e)) from e
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, RuntimeError, AttributeError,
            IndexError, zipfile.BadZipFile, zlib.error, OSError, MemoryError) as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        raise WeightsError(f"{path}: truncated or corrupt TorchScript archive ({type(e).__name__}: {msg})") from e
    if not isinstance(obj, ScriptRecord):
        raise WeightsError(f"{path}: data.pkl holds a {type(obj).__name__}, not a TorchScript module")
    try:
        flat = _flatten(obj)
    except WeightsError as e:
        raise WeightsError(f"{path}: {e}") from e
    if not flat:
        raise WeightsError(f"{path}: the TorchScript module holds no tensors")
    return flat


class DetectorHashError(WeightsError):
    """The detector file's SHA-256 is not the one expected (by the caller or by its name)."""

    def __init__(self, message: str, sha256: str):
        super().__init__(message)
        self.sha256 = sha256
        """The file's full SHA-256, for pinning it once the file is trusted."""


def load_inception(path: str | Path | None, check_hash: bool = True,
                   expected_sha256: str | None = None) -> tuple[InceptionV3, dict]:
    """The FID network from a local weight file, in eval mode, with
    ``{"format": "pytorch-fid" | "nvidia", "sha256": hex, "path": str}`` ("pytorch-fid" is
    the key layout, which torch-fidelity's file shares).

    The hash is checked against ``expected_sha256`` (a prefix is enough) or, for
    pytorch-fid's and torch-fidelity's files, the 8 hex digits in the name; it is always
    reported. A mismatch raises DetectorHashError.
    """
    if path is None or not Path(path).is_file():
        where = "no path given" if path is None else f"{path} does not exist"
        nv, tf = PUBLIC["inception_nvidia"], PUBLIC["inception_fidelity"]
        raise WeightsError(f"{missing_message('inception_fid', 'FID')}, or NVIDIA's {nv.filename} ({nv.key}) "
                           f"from {nv.source}, or torch-fidelity's {tf.filename} ({tf.key}) from {tf.source}; "
                           f"any of them works ({where})")
    if check_hash:
        try:
            digest = verify(path, expected_sha256)
        except WeightsError as e:
            raise DetectorHashError(str(e), sha256(path)) from None
    else:
        digest = sha256(path)
    # The file is read and its layout told before the 95 MB network is allocated: refusing a
    # wrong file costs nothing.
    if is_torchscript(path):
        fmt, flat = "nvidia", read_torchscript_tensors(path)
    else:
        try:
            obj = torch_load(path)
        except (CheckpointError, zipfile.BadZipFile) as e:
            raise WeightsError(f"{path}: neither a pytorch-fid / torch-fidelity state dict nor NVIDIA's TorchScript "
                               f"Inception could be read: {e}") from e
        if not isinstance(obj, dict):
            raise WeightsError(f"{path}: expected a state dict for the FID Inception, found {type(obj).__name__}")
        flat = tensors(obj, path)
        if "Conv2d_1a_3x3.conv.weight" in flat:
            fmt = "pytorch-fid"
        elif any(_canonical(k) == "layers_conv_weight" for k in flat):  # NVIDIA's tensors re-saved by torch.save
            fmt = "nvidia"
        else:
            raise WeightsError(f"{path}: holds neither the Inception keys of pytorch-fid and torch-fidelity "
                               f"(Conv2d_1a_3x3.conv.weight, ...) nor NVIDIA's (layers.conv.weight, ...); "
                               f"first keys: {list(flat)[:5]}")
    # Built without its random init (the file overwrites every weight); only the BN step
    # counters, which old files lack and evaluation never reads, need a value.
    with torch.device("meta"):
        net = InceptionV3()
    net = net.to_empty(device="cpu")
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.num_batches_tracked.zero_()
    sd = convert_nvidia(flat, net.state_dict(), path) if fmt == "nvidia" else flat
    load_into(net, sd, "the FID Inception-v3", path)
    return net.eval(), {"format": fmt, "sha256": digest, "path": str(path)}


UNTRAINED = "untrained"
CALIBRATION_SIDES = (4, 8, 16, 32, 64, 128, 299, 299)


def untrained_inception(seed: int = 0) -> tuple[InceptionV3, dict]:
    """The same architecture with seeded random weights: a stand-in detector when the
    public file is not at hand (random-embedding FID, as in Naeem et al. 2020).

    Its FIDs compare images measured with the same seed and PyTorch version only; they
    are not comparable with any published FID. The batch-norm statistics come from one
    seeded batch of image-like noise, which keeps activations at unit scale through the 94
    random layers (the default statistics let them fade to nothing). Each image's features
    are scaled to unit RMS: raw, their scale swings by orders of magnitude with the input's
    smoothness, and KID's kernel (x.y/d + 1)^3 needs x.y/d near 1 to mean anything.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = InceptionV3()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average: the statistics of exactly this batch
    net.train()
    # Image-like input: uniform noise drawn at sides from 4 to 299 px and resized to 299,
    # so that smooth (upsampled) images and fine texture both meet calibrated statistics.
    batch = torch.cat([F.interpolate(torch.rand(1, 3, side, side, generator=gen) * 2 - 1, size=(299, 299),
                                     mode="bilinear", align_corners=False) for side in CALIBRATION_SIDES])
    with torch.no_grad():
        net(batch)
    net.eval().unit_rms = True
    # The name stands in for a file hash in cache keys: random init depends on the torch version.
    name = f"{UNTRAINED}-seed{seed}-torch{torch.__version__}"
    return net, {"format": UNTRAINED, "sha256": name, "path": f"{UNTRAINED}:{seed}"}


def parse_untrained(spec: str | None) -> int | None:
    """The seed of a detector spec "untrained" or "untrained:SEED"; None for a file path."""
    if spec is None or not (spec == UNTRAINED or spec.startswith(UNTRAINED + ":")):
        return None
    tail = spec[len(UNTRAINED) + 1:]
    try:
        return int(tail) if tail else 0
    except ValueError:
        raise WeightsError(f"--detector {spec}: expected 'untrained' or 'untrained:<integer seed>'") from None
