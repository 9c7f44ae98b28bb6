"""Crafted pickles and ``.pt`` archives that declare far more memory, nesting or sharing than
they hold, each fed to the command that reads it (cases for tests/untrusted_harness.py).

A bomb declares its size rather than containing it: every file is a few KB, except the zip
bomb's 1.7 MB of deflated zeros (it unpacks to 1.7 GB). Each must end in exit status 2 with a
one-line message, within seconds and without its memory.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import pickle
import struct
import zlib
from pathlib import Path

import torch

from tests.nvlabs_pickle import _install_fake_modules, _Persistent
from tests.untrusted_harness import Attack, Case

# ----------------------------------------------------------------------------
# Pickle opcodes (protocol 2), for files no Python object pickles to.

def op_str(s: str) -> bytes:
    return b"X" + struct.pack("<I", len(s.encode())) + s.encode()


def op_global(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def op_long(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def numpy_array_pickle(shape: tuple[int, ...], dtype: str) -> bytes:
    """``{"G_ema": _reconstruct(ndarray, shape, dtype(dtype))}``: numpy's own array constructor,
    asked for an array of ``shape`` that the file holds no data for."""
    dims = b"(" + b"".join(op_long(d) for d in shape) + b"t"
    dt = op_global("numpy", "dtype") + op_str(dtype) + b"\x89\x88\x87R"  # dtype(dtype, False, True)
    return (b"\x80\x02}" + op_str("G_ema") + op_global("numpy._core.multiarray", "_reconstruct")
            + op_global("numpy", "ndarray") + dims + dt + b"\x87Rs.")


# ----------------------------------------------------------------------------
# NVlabs module trees that are not trees.

def write_shared_tree(path: Path, marker: Path, levels: int = 64) -> None:
    """G_ema whose every module holds the next one twice: 2**levels paths from a few KB."""
    reconstruct, _ = _install_fake_modules()
    rec = _Persistent(reconstruct, "Leaf", {"_parameters": {"w": torch.zeros(1)}, "_modules": {}}, str(marker))
    for i in range(levels):
        rec = _Persistent(reconstruct, f"Level{i}", {"_modules": {"a": rec, "b": rec}}, str(marker))
    with open(path, "wb") as f:
        pickle.dump({"G_ema": rec}, f, protocol=4)


class _Loop:
    """A persistent module whose BUILD state names itself as its own child."""

    def __init__(self, reconstruct, marker: Path):
        self.reconstruct, self.marker = reconstruct, marker

    def __reduce__(self):
        meta = {"type": "class", "version": 6, "class_name": "Loop", "state": {},
                "module_src": f"open({str(self.marker)!r}, 'w').write('executed')\n"}
        return self.reconstruct, (meta,), {"_modules": {"self": self}}


def write_cyclic_tree(path: Path, marker: Path) -> None:
    reconstruct, _ = _install_fake_modules()
    with open(path, "wb") as f:
        pickle.dump({"G_ema": _Loop(reconstruct, marker)}, f, protocol=4)


# ----------------------------------------------------------------------------
# torch.save files written by hand: storages declared larger than the bytes present.

class Storage:
    """A storage reference: ``key`` names its record, ``numel`` is the float count it declares."""

    def __init__(self, key: str, numel: int):
        self.key, self.numel = key, numel


class Tensor:
    """Pickles as torch's tensor rebuild call on a ``Storage``."""

    def __init__(self, storage: Storage, size: tuple[int, ...], stride: tuple[int, ...]):
        self.storage, self.size, self.stride = storage, size, stride

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, self.size, self.stride, False, collections.OrderedDict()))


def torch_pickle(obj: object, legacy: bool = False) -> bytes:
    """``obj`` pickled as torch.save does, its ``Storage`` objects as storage references."""
    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, Storage):
                return ("storage", torch.FloatStorage, o.key, "cpu", o.numel) + ((None,) if legacy else ())
            return None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def write_zip(path: Path, members: dict[str, tuple[bytes, int, int]]) -> None:
    """A zip of ``name -> (data as stored, method 0 or 8, declared uncompressed size)``, with the CRC
    of that many zero bytes for deflated members (what they unpack to here)."""
    out, central = io.BytesIO(), io.BytesIO()
    for name, (data, method, size) in members.items():
        crc = _zeros_crc(size) if method else zlib.crc32(data)
        head = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(data), size, len(name), 0)
        central.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, len(data),
                                  size, len(name), 0, 0, 0, 0, 0, out.tell()) + name.encode())
        out.write(head + name.encode() + data)
    start, n = out.tell(), len(members)
    out.write(central.getvalue() + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central.getvalue()), start, 0))
    path.write_bytes(out.getvalue())


@functools.cache
def _zeros_crc(size: int) -> int:
    chunk, crc = bytes(1 << 20), 0
    for _ in range(size >> 20):
        crc = zlib.crc32(chunk, crc)
    return zlib.crc32(bytes(size & ((1 << 20) - 1)), crc)


def deflated_zeros(mib: int) -> bytes:
    """A raw deflate stream of ``mib`` MiB of zeros, made from one compressed MiB repeated
    (each ends in a full flush, so the copies chain)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    one = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    return one * mib + zlib.compressobj(9, zlib.DEFLATED, -15).flush()


def write_zip_bomb(path: Path, mib: int = 1600) -> None:
    """A rosinality-looking .pt whose one float storage is ``mib`` MiB of deflated zeros."""
    numel = (mib << 20) // 4
    pkl = torch_pickle({"g_ema": {"style.1.weight": Tensor(Storage("0", numel), (numel,), (1,))}})
    write_zip(path, {"archive/data.pkl": (pkl, 0, len(pkl)), "archive/byteorder": (b"little", 0, 6),
                     "archive/data/0": (deflated_zeros(mib), 8, mib << 20), "archive/version": (b"3\n", 0, 2)})


def write_torch_zip(path: Path, obj: object, records: dict[str, bytes]) -> None:
    """A torch zip archive, records stored as torch writes them."""
    pkl = torch_pickle(obj)
    members = {"archive/data.pkl": (pkl, 0, len(pkl)), "archive/byteorder": (b"little", 0, 6)}
    members.update({f"archive/data/{k}": (v, 0, len(v)) for k, v in records.items()})
    write_zip(path, {**members, "archive/version": (b"3\n", 0, 2)})


def legacy_bytes(obj: object, storages: dict[str, bytes]) -> bytes:
    """A pre-zip torch.save file: magic, version, system info, the pickle, then each (float)
    storage as its element count and bytes."""
    buf = io.BytesIO()
    for head in (0x1950A86A20F9469CFC6C, 1001,
                 {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(head, buf, protocol=2)
    buf.write(torch_pickle(obj, legacy=True))
    pickle.dump(sorted(storages), buf, protocol=2)
    for key in sorted(storages):
        buf.write(struct.pack("<q", len(storages[key]) // 4) + storages[key])
    return buf.getvalue()


def write_tiny_generator(path: Path) -> None:
    from trainer.model_io import save_checkpoint
    from trainer.networks import Generator, GeneratorConfig

    torch.manual_seed(0)
    G = Generator(GeneratorConfig(size=16, style_dim=16, n_mlp=2, channel_multiplier=0.0625, channel_max=32))
    save_checkpoint(path, "toonmix", g_ema=G.eval())


# ----------------------------------------------------------------------------
# The cases.

def _object_array(tmp: Path, stack: contextlib.ExitStack) -> Attack:
    (tmp / "obj.pkl").write_bytes(numpy_array_pickle((250_000_000,), "O8"))  # 2 GB of None pointers
    return Attack(argv=["launch.convert", "--src", str(tmp / "obj.pkl"), "--dst", str(tmp / "out.pt"),
                        "--to", "rosinality"], expect_message="numpy dtype", timeout=30)


def _huge_array(tmp: Path, stack: contextlib.ExitStack) -> Attack:
    (tmp / "huge.pkl").write_bytes(numpy_array_pickle((100_000, 1_000_000), "f8"))  # 800 GB
    return Attack(argv=["launch.convert", "--src", str(tmp / "huge.pkl"), "--dst", str(tmp / "out.pt"),
                        "--to", "toonmix"], expect_message="declares", timeout=30)


def _shared_tree(tmp: Path, stack: contextlib.ExitStack) -> Attack:
    write_shared_tree(tmp / "shared.pkl", tmp / "ran")
    return Attack(argv=["launch.convert", "--src", str(tmp / "shared.pkl"), "--dst", str(tmp / "out.pt"),
                        "--to", "rosinality"], marker=tmp / "ran", expect_message="appears twice", timeout=30)


def _cyclic_tree(tmp: Path, stack: contextlib.ExitStack) -> Attack:
    write_cyclic_tree(tmp / "loop.pkl", tmp / "ran")
    return Attack(argv=["launch.convert", "--src", str(tmp / "loop.pkl"), "--dst", str(tmp / "out.pt"),
                        "--to", "rosinality"], marker=tmp / "ran", expect_message="appears twice", timeout=30)


def _zip_bomb_generate(tmp: Path, stack: contextlib.ExitStack) -> Attack:
    write_zip_bomb(tmp / "bomb.pt")
    return Attack(argv=["launch.generate", "--ckpt", str(tmp / "bomb.pt"), "--seeds", "0", "--outdir",
                        str(tmp / "out"), "--device", "cpu"], expect_message="zip bomb", timeout=30)


def _zip_bomb_sefa(tmp: Path, stack: contextlib.ExitStack) -> Attack:
    write_tiny_generator(tmp / "g.pt")
    write_zip_bomb(tmp / "factors.pt")
    return Attack(argv=["launch.sefa", "--ckpt", str(tmp / "g.pt"), "--factors", str(tmp / "factors.pt"),
                        "--apply", "--out", str(tmp / "grid.png")], expect_message="zip bomb", timeout=30)


def _legacy_storage(tmp: Path, stack: contextlib.ExitStack) -> Attack:
    numel = 4 << 30  # 16 GB declared, 4 bytes present
    (tmp / "legacy.pt").write_bytes(legacy_bytes(
        {"g_ema": {"style.1.weight": Tensor(Storage("0", numel), (1,), (1,))}}, {"0": bytes(4)}))
    return Attack(argv=["launch.generate", "--ckpt", str(tmp / "legacy.pt"), "--seeds", "0", "--outdir",
                        str(tmp / "out"), "--device", "cpu"], expect_message="declare", timeout=30)


CASES: list[Case] = [
    Case("pickle-object-array", _object_array),
    Case("pickle-huge-array", _huge_array, slow=True),
    Case("pickle-shared-records", _shared_tree),
    Case("pickle-cyclic-record", _cyclic_tree, slow=True),
    Case("pt-zip-bomb-generate", _zip_bomb_generate),
    Case("pt-zip-bomb-sefa-factors", _zip_bomb_sefa, slow=True),
    Case("pt-legacy-declared-storage", _legacy_storage, slow=True),
]
