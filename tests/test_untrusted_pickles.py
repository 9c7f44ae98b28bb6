"""Pickles and ``.pt`` archives that declare more memory, nesting or sharing than they hold are
refused cleanly (exit 2, one line, no traceback), fast and in little memory; the readers
still load genuine files, numpy arrays and re-zipped archives included."""

from __future__ import annotations

import contextlib
import pickle
import sys
import types
import zipfile

import numpy as np
import pytest
import torch

from eval.inception import read_torchscript_tensors
from tests.untrusted_harness import params, run_attack
from tests.untrusted_pickles import (CASES, Storage, Tensor, legacy_bytes, op_global, op_long, op_str,
                                     write_torch_zip)
from trainer.model_io import CheckpointError, UnsafeCheckpointError
from trainer.model_io.safe_pickle import (MAX_MODULE_DEPTH, PersistentRecord, flatten_record, load_nvlabs_pickle,
                                          torch_load)
from trainer.networks.weights import WeightsError


@pytest.mark.parametrize("case", params(CASES))
def test_crafted_file_is_refused_cleanly(case, tmp_path):
    with contextlib.ExitStack() as stack:
        attack = case.build(tmp_path, stack)
        r = run_attack(case.name, attack)
    assert r.refused_cleanly(attack), (r.exit_code, r.stderr[-2000:])
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.peak_mb < 1024 and r.seconds < attack.timeout, (r.peak_mb, r.seconds)


# ----------------------------------------------------------------------------
# The NVlabs reader, called directly.

def _numpy_build(shape_op: bytes, dtype_op: bytes, raw: bytes) -> bytes:
    """{"G_ema": <array>} pickled as numpy does: _reconstruct(ndarray, (0,), "b"), then BUILD
    with (1, shape, dtype, False, raw)."""
    array = (op_global("numpy._core.multiarray", "_reconstruct") + op_global("numpy", "ndarray") + b"K\x00\x85"
             + op_str("b") + b"\x87R")
    state = b"(K\x01" + shape_op + dtype_op + b"\x89B" + len(raw).to_bytes(4, "little") + raw + b"tb"
    return b"\x80\x03}" + op_str("G_ema") + array + state + b"s."


def _dtype(spec: str, state: bytes = b"") -> bytes:
    return op_global("numpy", "dtype") + op_str(spec) + b"\x89\x88\x87R" + state


def test_genuine_numpy_arrays_and_scalars_still_load(tmp_path):
    data = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, -2], dtype=">i8"),
            "s": np.float64(0.5), "i": np.int32(7), "e": np.zeros((0, 4), np.uint8)}
    for protocol in (3, 4):  # NVlabs writes 4 (protocol 2 needs _codecs.encode for bytes)
        (tmp_path / "np.pkl").write_bytes(pickle.dumps(data, protocol=protocol))
        got, want = load_nvlabs_pickle(tmp_path / "np.pkl"), pickle.loads(pickle.dumps(data, protocol=protocol))
        for k, v in want.items():
            assert np.array_equal(got[k], v) and np.asarray(got[k]).dtype == v.dtype, k


def test_numpy_array_holding_fewer_bytes_than_its_shape_is_refused(tmp_path):
    (tmp_path / "a.pkl").write_bytes(_numpy_build(op_long(10 ** 10) + b"\x85", _dtype("f4"), bytes(4)))
    with pytest.raises(CheckpointError, match="declares 40000000000 bytes but holds 4"):
        load_nvlabs_pickle(tmp_path / "a.pkl")


def test_numpy_dtype_given_object_fields_by_its_state_is_refused(tmp_path):
    # numpy's dtype.__setstate__ would accept these fields without flagging the dtype as holding
    # objects: the array's 16 bytes would then be read as two object pointers.
    fields = b"}" + op_str("a") + _dtype("O8") + b"K\x00\x86s"
    state = b"(K\x03" + op_str("|") + b"N" + op_str("a") + b"\x85" + fields + b"K\x08K\x01K\x10tb"
    (tmp_path / "d.pkl").write_bytes(_numpy_build(b"K\x02\x85", _dtype("f8", state), bytes(16)))
    with pytest.raises(UnsafeCheckpointError, match="structured or sub-array numpy dtype"):
        load_nvlabs_pickle(tmp_path / "d.pkl")


def test_pickled_storage_declaring_more_than_its_bytes_is_refused(tmp_path):
    # NVlabs pickles carry each storage as torch.save bytes: these declare 4 GB and hold 4.
    blob = legacy_bytes(Storage("0", 1 << 30), {"0": bytes(4)})
    body = op_global("torch.storage", "_load_from_bytes") + b"B" + len(blob).to_bytes(4, "little") + blob + b"\x85R"
    (tmp_path / "s.pkl").write_bytes(b"\x80\x03}" + op_str("G_ema") + body + b"s.")
    with pytest.raises(CheckpointError, match="declare 4294967296 bytes"):
        load_nvlabs_pickle(tmp_path / "s.pkl")


def test_module_trees_nested_absurdly_deep_are_refused():
    rec = PersistentRecord("Leaf", {"_parameters": {"w": torch.zeros(1)}})
    for i in range(MAX_MODULE_DEPTH + 1):
        rec = PersistentRecord(f"M{i}", {"_modules": {"m": rec}})
    with pytest.raises(CheckpointError, match=f"nested more than {MAX_MODULE_DEPTH} deep"):
        flatten_record(rec, what="G")
    shallow = PersistentRecord("Top", {"_modules": {"a": PersistentRecord("A", {"_buffers": {"b": torch.ones(2)}})}})
    assert list(flatten_record(shallow)) == ["a.b"]


# ----------------------------------------------------------------------------
# torch_load and the TorchScript reader.

def _rezip(src, dst, method=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", method) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))


def test_deflated_zip_bomb_is_refused_but_rezipped_weights_load(tmp_path):
    torch.save({"w": torch.zeros(4 << 20)}, tmp_path / "zeros.pt")  # 16 MB of zeros: deflates 1000:1
    _rezip(tmp_path / "zeros.pt", tmp_path / "bomb.pt")
    with pytest.raises(CheckpointError, match="compressed 1[0-9]{3}:1 .* a zip bomb"):
        torch_load(tmp_path / "bomb.pt")
    w = torch.randn(256, 256)
    torch.save({"w": w}, tmp_path / "w.pt")
    _rezip(tmp_path / "w.pt", tmp_path / "w-deflated.pt")
    assert torch.equal(torch_load(tmp_path / "w-deflated.pt")["w"], w)
    torch.save({"w": w}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert torch.equal(torch_load(tmp_path / "legacy.pt")["w"], w)


def test_storage_declared_larger_than_its_record_is_refused_before_reading(tmp_path):
    write_torch_zip(tmp_path / "s.pt", {"w": Tensor(Storage("0", 1 << 30), (1,), (1,))}, {"0": bytes(4)})
    with pytest.raises(CheckpointError, match="storage 0 declares 4294967296 bytes but the archive holds 4"):
        torch_load(tmp_path / "s.pt")


def test_tensor_viewing_more_than_its_storage_is_refused(tmp_path):
    view = Tensor(Storage("0", 1), (1_000_000, 1_000_000), (0, 0))  # 4 TB as a stride-0 view of 4 bytes
    write_torch_zip(tmp_path / "v.pt", {"g_ema": {"style.1.weight": view}}, {"0": bytes(4)})
    with pytest.raises(CheckpointError, match="declares 4000000000000 bytes but its storage holds 4"):
        torch_load(tmp_path / "v.pt")


def _torchscript_archive(path, root_record):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("m/data.pkl", pickle.dumps(root_record, protocol=2))
        zf.writestr("m/constants.pkl", b"")
        zf.writestr("m/version", b"3\n")
    return path


def test_torchscript_module_tree_with_a_shared_module_or_a_zip_bomb_is_refused(tmp_path, monkeypatch):
    module = types.ModuleType("__torch__")
    module.M = type("M", (), {"__module__": "__torch__"})
    monkeypatch.setitem(sys.modules, "__torch__", module)
    top, shared = module.M(), module.M()
    top.a, top.b = shared, shared
    with pytest.raises(WeightsError, match="appears twice"):
        read_torchscript_tensors(_torchscript_archive(tmp_path / "shared.pt", top))
    path = _torchscript_archive(tmp_path / "ok.pt", module.M())
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("m/data/0", bytes(8 << 20), compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(WeightsError, match="zip bomb"):
        read_torchscript_tensors(path)
