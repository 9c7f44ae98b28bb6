"""Lazy, cached, multi-rank-safe builds of the CUDA extensions in ``ops/csrc``.

Nothing here runs at import: an extension is compiled the first time an op is
called on a CUDA tensor with ``impl="auto"`` or ``"cuda"``. Builds go to a folder
keyed by a hash of the sources, the torch and CUDA versions and the GPU
architecture, so a changed source or a different GPU never reuses a stale
binary. Before building, nvcc's CUDA major version must match torch's; after
loading, each extension runs once on a tiny tensor, so a kernel that cannot
launch on this GPU fails at load (where ``auto`` falls back) instead of in
the middle of training. An exclusive file lock serialises ranks that build at once (the first
builds, the rest load its result); only rank 0 prints compiler output.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

CSRC = Path(__file__).resolve().parent / "csrc"

# Flags shared by the runtime build and the offline compile test, so the test
# checks the code the way it is really built. The .cu files include only the
# CUDA runtime, so they need no particular C++ standard from torch.
CXX_FLAGS = ["-O3"]
NVCC_FLAGS = ["-O3", "-std=c++17", "-lineinfo"]

_cache: dict[str, ModuleType | BaseException] = {}


class OpsBuildError(RuntimeError):
    """A CUDA extension failed to build or load; the message names the toolchain."""


def cache_root() -> Path:
    """Where built extensions live: ``$TOONMIX_EXTENSIONS_DIR`` or ``~/.cache/toonmix/extensions``."""
    env = os.environ.get("TOONMIX_EXTENSIONS_DIR")
    return Path(env) if env else Path.home() / ".cache" / "toonmix" / "extensions"


def is_rank0() -> bool:
    """True in the process that should print; launchers set RANK (or LOCAL_RANK)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def gpu_arch(device: int | None = None) -> str:
    """Compute capability of the current (or given) GPU, as TORCH_CUDA_ARCH_LIST wants it."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}.{minor}"


def build_key(name: str, files: list[str], arch: str) -> str:
    """Hash of everything that changes the binary: sources, versions, arch and flags."""
    h = hashlib.sha256()
    for part in (name, torch.__version__, str(torch.version.cuda), arch, sys.version,
                 " ".join(CXX_FLAGS), " ".join(NVCC_FLAGS)):
        h.update(part.encode() + b"\0")
    for f in sorted(files):
        h.update(f.encode() + b"\0" + (CSRC / f).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _first_line(cmd: list[str], last: bool = False) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError) as e:
        return f"unavailable ({e.__class__.__name__})"
    return (out[-1] if last else out[0]) if out else "unavailable"


def toolchain_report() -> str:
    """One paragraph naming the host compiler, CUDA toolkit, torch and GPU."""
    from torch.utils import cpp_extension

    cxx = os.environ.get("CXX", "c++")
    cuda_home = cpp_extension.CUDA_HOME
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else shutil.which("nvcc") or "nvcc"
    gpu = "none visible"
    if torch.cuda.is_available():
        gpu = f"{torch.cuda.get_device_name()} (sm_{gpu_arch().replace('.', '')})"
    return (f"host compiler: {cxx}: {_first_line([cxx, '--version'])}; "
            f"CUDA toolkit: {cuda_home or 'not found'}: {_first_line([nvcc, '--version'], last=True)}; "
            f"torch {torch.__version__} built with CUDA {torch.version.cuda}; GPU: {gpu}")


def nvcc_release() -> tuple[int, int] | None:
    """(major, minor) of the CUDA toolkit the JIT build would use, or None when unknown."""
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME
    nvcc = os.path.join(home, "bin", "nvcc") if home else shutil.which("nvcc") or "nvcc"
    m = re.search(r"release (\d+)\.(\d+)", _first_line([nvcc, "--version"], last=True))
    return (int(m.group(1)), int(m.group(2))) if m else None


def cuda_mismatch() -> str | None:
    """Why nvcc's CUDA cannot build for this torch (a different major version), or None.
    A different minor version builds and runs on a driver new enough for both."""
    found, torch_cuda = nvcc_release(), torch.version.cuda
    if found is None or torch_cuda is None:
        return None
    if found[0] != int(torch_cuda.split(".")[0]):
        return (f"nvcc is CUDA {found[0]}.{found[1]} but torch {torch.__version__} was built with CUDA {torch_cuda}: "
                f"set CUDA_HOME to a CUDA {torch_cuda.split('.')[0]}.x toolkit, or install the torch build for "
                f"CUDA {found[0]}")
    return None


def load_extension(name: str, sources: list[str], headers: list[str],
                   probe: Callable[[ModuleType], None] | None = None) -> ModuleType:
    """Builds (once per key) and imports extension ``name``, then runs ``probe`` on it (one tiny
    call on the current GPU); raises OpsBuildError.

    Kept per GPU architecture (a process that sees two kinds of GPU builds for each). A failure
    is remembered for the life of the process, so a broken toolchain or a kernel that cannot
    launch here costs one attempt, not one per call; ``auto`` then falls back to the reference.
    """
    slot = f"{name}@{gpu_arch()}" if torch.cuda.is_available() else name
    cached = _cache.get(slot)
    if isinstance(cached, ModuleType):
        return cached
    if isinstance(cached, BaseException):
        raise cached
    try:
        module = _build(name, sources, headers)
    except Exception as e:  # compiler, linker, loader: all end the same way
        err = OpsBuildError(
            f"building the CUDA extension '{name}' failed. {toolchain_report()}. "
            f"Set TOONMIX_EXTENSIONS_DIR to choose the build folder. Cause: {str(e)[-3000:]}")
        _cache[slot] = err
        raise err from e
    try:
        if probe is not None:
            probe(module)
    except Exception as e:  # "no kernel image is available", a driver older than the toolkit...
        err = OpsBuildError(
            f"the CUDA extension '{name}' was built but does not run on this GPU: {str(e)[-1000:]}. "
            f"{toolchain_report()}. Usually the toolkit is newer than the driver, or the build does not "
            "target this GPU's architecture")
        _cache[slot] = err
        raise err from e
    _cache[slot] = module
    return module


def _build(name: str, sources: list[str], headers: list[str]) -> ModuleType:
    if not torch.cuda.is_available():
        raise RuntimeError("torch reports no CUDA device")
    mismatch = cuda_mismatch()
    if mismatch:
        raise RuntimeError(mismatch)
    from torch.utils import cpp_extension

    arch = gpu_arch()
    key = build_key(name, sources + headers, arch)
    build_dir = cache_root() / f"{name}-{key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    module_name = f"toonmix_{name}_{key}"
    verbose = is_rank0()
    with open(str(build_dir) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the OS even if this process dies
        # Holding the lock, any torch baton left here is from a killed build.
        (build_dir / "lock").unlink(missing_ok=True)
        start = time.time()
        if verbose:
            print(f"[ops] loading '{name}' for sm_{arch.replace('.', '')} from {build_dir} "
                  "(compiles on first use)", flush=True)
        old_arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch
        try:
            module = cpp_extension.load(
                name=module_name, sources=[str(CSRC / s) for s in sources],
                extra_include_paths=[str(CSRC)], extra_cflags=CXX_FLAGS,
                extra_cuda_cflags=NVCC_FLAGS, build_directory=str(build_dir), verbose=verbose)
        finally:
            if old_arch is None:
                os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
            else:
                os.environ["TORCH_CUDA_ARCH_LIST"] = old_arch
        if verbose:
            print(f"[ops] '{name}' ready in {time.time() - start:.1f} s", flush=True)
    return module
