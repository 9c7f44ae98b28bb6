"""Implementation choice, fallback and strict mode, and the lazy build machinery
(hash-keyed cache, lock between ranks, rank-0 output, error report), exercised
without a GPU by standing in for torch's extension loader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

import ops
from ops import bias_act, upfirdn2d
from ops import _build, _dispatch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _clean_state(monkeypatch, tmp_path):
    monkeypatch.setenv("TOONMIX_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.delenv("TOONMIX_OPS_STRICT", raising=False)
    _build._cache.clear()
    _dispatch.reset_records()
    _dispatch.set_strict(None)
    _dispatch.set_default_impl("auto")
    yield
    _build._cache.clear()
    _dispatch.set_strict(None)
    _dispatch.set_default_impl("auto")


def _fake_gpu(monkeypatch, load):
    """Pretend a GPU exists and replace torch's extension loader with `load`."""
    from torch.utils import cpp_extension

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(_build, "gpu_arch", lambda *a: "9.0")
    monkeypatch.setattr(_build, "nvcc_release", lambda: None)  # this machine's toolkit plays no part
    monkeypatch.setattr(cpp_extension, "load", load)


def test_import_needs_no_compiler_and_builds_nothing():
    code = textwrap.dedent("""
        import sys, torch, ops
        from ops import bias_act, upfirdn2d
        assert "torch.utils.cpp_extension" not in sys.modules, "import compiled or loaded the builder"
        x = torch.randn(1, 2, 8, 8)
        y = bias_act.bias_act(upfirdn2d.upsample2d(x, upfirdn2d.setup_filter([1, 3, 3, 1])), torch.zeros(2), act="lrelu")
        assert y.shape == (1, 2, 16, 16)
        print("ok", ops.last_impl("upfirdn2d"), ops.last_impl("bias_act"))
    """)
    env = {"PATH": "/nonexistent", "CXX": "/nonexistent/c++", "PYTHONPATH": str(ROOT), "HOME": os.environ.get("HOME", "/tmp")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok", "ref", "ref"]


def test_auto_on_cpu_uses_ref_and_cuda_on_cpu_is_an_error():
    x = torch.randn(1, 2, 4, 4)
    bias_act.bias_act(x, act="relu")
    upfirdn2d.filter2d(x, upfirdn2d.setup_filter([1, 2, 1]))
    assert ops.last_impl("bias_act") == "ref" and ops.last_impl("upfirdn2d") == "ref"
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        bias_act.bias_act(x, impl="cuda")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        upfirdn2d.upfirdn2d(x, None, impl="cuda")
    assert ops.impl_counts() == {"bias_act": {"ref": 1}, "upfirdn2d": {"ref": 1}}


def test_default_impl_redirects_auto_only():
    x = torch.randn(1, 2, 4, 4)
    ops.set_default_impl("cuda")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        bias_act.bias_act(x)  # auto now means cuda
    assert torch.equal(bias_act.bias_act(x, impl="ref"), x)  # explicit impl still wins
    ops.set_default_impl("ref")
    bias_act.bias_act(x)
    assert ops.last_impl("bias_act") == "ref"
    with pytest.raises(ValueError, match="impl must be one of"):
        ops.set_default_impl("fast")


def test_fallback_warns_once_and_strict_mode_raises():
    calls = []

    def broken():
        calls.append(1)
        raise ops.OpsBuildError("nvcc not found")

    with pytest.warns(ops.OpsFallbackWarning, match="nvcc not found"):
        assert _dispatch.resolve("myop", "auto", "cuda", broken) == "ref"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _dispatch.resolve("myop", "auto", "cuda", broken) == "ref"  # no second warning
    assert _dispatch.last_impl("myop") == "ref"
    with pytest.raises(ops.OpsBuildError):
        _dispatch.resolve("myop", "cuda", "cuda", broken)
    ops.set_strict(True)
    with pytest.raises(ops.OpsBuildError):
        _dispatch.resolve("myop", "auto", "cuda", broken)
    ops.set_strict(None)
    os.environ["TOONMIX_OPS_STRICT"] = "1"
    try:
        assert ops.is_strict()
        with pytest.raises(ops.OpsBuildError):
            _dispatch.resolve("myop", "auto", "cuda", broken)
    finally:
        del os.environ["TOONMIX_OPS_STRICT"]
    # A filter that needs a gradient is not a CUDA case: auto runs ref without building.
    before = len(calls)
    assert _dispatch.resolve("myop", "auto", "cuda", broken, cuda_supported=False) == "ref"
    assert len(calls) == before


def test_build_failure_names_the_toolchain_and_is_remembered(monkeypatch):
    attempts = []

    def failing_load(**kwargs):
        attempts.append(kwargs)
        raise RuntimeError("Error building extension: nvcc fatal: boom")

    _fake_gpu(monkeypatch, failing_load)
    with pytest.raises(ops.OpsBuildError) as err:
        _build.load_extension("bias_act", ["bias_act.cpp", "bias_act.cu"], ["bias_act.h"])
    msg = str(err.value)
    for part in ("bias_act", "host compiler", "CUDA toolkit", f"torch {torch.__version__}",
                 "built with CUDA", "Fake GPU (sm_90)", "nvcc fatal: boom"):
        assert part in msg, part
    with pytest.raises(ops.OpsBuildError):
        _build.load_extension("bias_act", ["bias_act.cpp", "bias_act.cu"], ["bias_act.h"])
    assert len(attempts) == 1


@pytest.mark.parametrize("rank,prints", [("0", True), ("1", False)])
def test_build_uses_keyed_folder_arch_and_rank0_output(monkeypatch, tmp_path, capsys, rank, prints):
    seen = {}

    def fake_load(**kwargs):
        seen.update(kwargs, arch_env=os.environ.get("TORCH_CUDA_ARCH_LIST"))
        assert not (Path(kwargs["build_directory"]) / "lock").exists(), "stale baton not cleared"
        return types.ModuleType(kwargs["name"])

    _fake_gpu(monkeypatch, fake_load)
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "7.0")
    key = _build.build_key("upfirdn2d", upfirdn2d._SOURCES + upfirdn2d._HEADERS, "9.0")
    stale = tmp_path / "ext" / f"upfirdn2d-{key}"
    stale.mkdir(parents=True)
    (stale / "lock").write_text("")  # left by a killed build
    load = lambda: _build.load_extension("upfirdn2d", upfirdn2d._SOURCES, upfirdn2d._HEADERS)  # noqa: E731
    mod = load()
    assert mod is load()  # loaded once per process
    assert seen["build_directory"] == str(stale)
    assert seen["name"] == f"toonmix_upfirdn2d_{key}"
    assert seen["arch_env"] == "9.0" and os.environ["TORCH_CUDA_ARCH_LIST"] == "7.0"
    assert seen["extra_cuda_cflags"] == _build.NVCC_FLAGS and seen["verbose"] is prints
    assert all(Path(s).exists() for s in seen["sources"])
    assert ("[ops]" in capsys.readouterr().out) is prints


def test_a_kernel_that_cannot_run_here_falls_back_at_load_and_strict_mode_raises(monkeypatch):
    builds, probes = [], []
    _fake_gpu(monkeypatch, lambda **kw: builds.append(kw) or types.ModuleType(kw["name"]))

    def probe(mod):  # what a launch on a GPU the build does not target raises
        probes.append(mod)
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

    load = lambda: _build.load_extension("bias_act", ["bias_act.cpp", "bias_act.cu"], ["bias_act.h"], probe)  # noqa: E731
    with pytest.warns(ops.OpsFallbackWarning, match="built but does not run on this GPU: CUDA error: no kernel image"):
        assert _dispatch.resolve("bias_act", "auto", "cuda", load) == "ref"
    assert _dispatch.resolve("bias_act", "auto", "cuda", load) == "ref"
    assert len(builds) == len(probes) == 1  # remembered: one attempt per process
    ops.set_strict(True)
    with pytest.raises(ops.OpsBuildError, match="toolkit is newer than the driver"):
        _dispatch.resolve("bias_act", "auto", "cuda", load)


def test_each_gpu_architecture_gets_its_own_build(monkeypatch):
    arch_seen = []
    _fake_gpu(monkeypatch, lambda **kw: arch_seen.append(os.environ["TORCH_CUDA_ARCH_LIST"])
              or types.ModuleType(kw["name"]))
    load = lambda: _build.load_extension("upfirdn2d", upfirdn2d._SOURCES, upfirdn2d._HEADERS)  # noqa: E731
    first = load()
    monkeypatch.setattr(_build, "gpu_arch", lambda *a: "8.0")  # the process moves to another kind of GPU
    second = load()
    monkeypatch.setattr(_build, "gpu_arch", lambda *a: "9.0")
    assert load() is first and second is not first and arch_seen == ["9.0", "8.0"]


@pytest.mark.parametrize("nvcc, torch_cuda, refused", [((11, 8), "12.4", True), ((12, 8), "12.4", False),
                                                       (None, "12.4", False)])
def test_nvcc_of_another_cuda_major_version_is_refused_before_building(monkeypatch, nvcc, torch_cuda, refused):
    builds = []
    _fake_gpu(monkeypatch, lambda **kw: builds.append(kw) or types.ModuleType(kw["name"]))
    monkeypatch.setattr(_build, "nvcc_release", lambda: nvcc)
    monkeypatch.setattr(torch.version, "cuda", torch_cuda)
    if refused:
        with pytest.raises(ops.OpsBuildError, match="nvcc is CUDA 11.8 but torch .* was built with CUDA 12.4"):
            _build.load_extension("bias_act", ["bias_act.cpp", "bias_act.cu"], ["bias_act.h"])
        assert builds == []
    else:  # a newer minor version, or an nvcc whose version cannot be read, builds
        _build.load_extension("bias_act", ["bias_act.cpp", "bias_act.cu"], ["bias_act.h"])
        assert len(builds) == 1


def test_nvcc_release_reads_the_toolkit_banner(monkeypatch):
    banner = "Cuda compilation tools, release 13.0, V13.0.48"
    monkeypatch.setattr(_build, "_first_line", lambda cmd, last=False: banner)
    assert _build.nvcc_release() == (13, 0)
    monkeypatch.setattr(_build, "_first_line", lambda cmd, last=False: "unavailable (FileNotFoundError)")
    assert _build.nvcc_release() is None


def test_build_key_tracks_sources_arch_and_flags(monkeypatch, tmp_path):
    (tmp_path / "a.cu").write_text("kernel v1")
    monkeypatch.setattr(_build, "CSRC", tmp_path)
    k1 = _build.build_key("op", ["a.cu"], "9.0")
    assert _build.build_key("op", ["a.cu"], "9.0") == k1
    assert _build.build_key("op", ["a.cu"], "8.0") != k1
    monkeypatch.setattr(_build, "NVCC_FLAGS", ["-O0"])
    assert _build.build_key("op", ["a.cu"], "9.0") != k1
    monkeypatch.undo()
    monkeypatch.setattr(_build, "CSRC", tmp_path)
    (tmp_path / "a.cu").write_text("kernel v2")
    assert _build.build_key("op", ["a.cu"], "9.0") != k1


def test_concurrent_ranks_build_one_at_a_time(tmp_path):
    """Two processes load the same extension at once: the lock serialises them."""
    log = tmp_path / "log.jsonl"
    code = textwrap.dedent(f"""
        import json, os, sys, time, types, torch
        from torch.utils import cpp_extension
        from ops import _build
        torch.cuda.is_available = lambda: True
        _build.gpu_arch = lambda *a: "9.0"
        def fake_load(**kw):
            start = time.time(); time.sleep(0.5)
            with open({str(log)!r}, "a") as f:
                f.write(json.dumps({{"rank": os.environ["RANK"], "start": start, "end": time.time()}}) + "\\n")
            return types.ModuleType(kw["name"])
        cpp_extension.load = fake_load
        _build.load_extension("bias_act", ["bias_act.cpp"], [])
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOONMIX_EXTENSIONS_DIR=str(tmp_path / "ext"))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=dict(env, RANK=str(r)), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    spans = sorted((r["start"], r["end"]) for r in map(json.loads, log.read_text().splitlines()))
    assert len(spans) == 2 and spans[0][1] <= spans[1][0]
    assert "[ops]" in outs[0][0] and "[ops]" not in outs[1][0]
