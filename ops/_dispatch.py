"""Choosing between the CUDA and reference implementations, and recording which ran.

``impl="ref"`` always runs plain PyTorch. ``impl="cuda"`` needs a CUDA tensor and
a working build, else raises. ``impl="auto"`` uses CUDA for CUDA tensors and the
reference otherwise; if the CUDA build fails it falls back to the reference with
one warning per op, unless strict mode (``set_strict(True)`` or the environment
variable ``TOONMIX_OPS_STRICT=1``) turns that into an error.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from typing import Callable

import torch

from ._build import OpsBuildError

IMPLS = ("auto", "cuda", "ref")
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the CUDA kernels instantiate

_strict: bool | None = None
_default_impl = "auto"
_warned: set[str] = set()
_last: dict[str, str] = {}
_counts: Counter[tuple[str, str]] = Counter()


class OpsFallbackWarning(UserWarning):
    """Printed once per op when ``auto`` falls back to the reference implementation."""


def set_strict(flag: bool | None) -> None:
    """Make a failed CUDA build an error under ``auto`` (None: follow the environment)."""
    global _strict
    _strict = flag


def set_default_impl(impl: str) -> None:
    """What ``impl="auto"`` means process-wide: "auto" (default), "cuda" or "ref".
    Lets a benchmark or a config choose for every layer without threading ``impl``."""
    global _default_impl
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    _default_impl = impl


def is_strict() -> bool:
    if _strict is not None:
        return _strict
    return os.environ.get("TOONMIX_OPS_STRICT", "0").lower() in ("1", "true", "yes")


def resolve(op: str, impl: str, device_type: str, load: Callable[[], object],
            cuda_supported: bool = True) -> str:
    """Returns "cuda" or "ref" for one call, building the extension if needed.

    ``cuda_supported`` is False for argument combinations the kernel does not
    cover (e.g. a filter that needs a gradient); ``auto`` then runs the reference.
    """
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        impl = _default_impl
    if impl == "ref":
        return _record(op, "ref")
    if impl == "cuda":
        if device_type != "cuda":
            raise ValueError(f"{op}: impl='cuda' needs CUDA tensors, got a {device_type} tensor")
        if not cuda_supported:
            raise ValueError(f"{op}: impl='cuda' does not support these arguments; use 'auto' or 'ref'")
        load()
        return _record(op, "cuda")
    if device_type != "cuda" or not cuda_supported:
        return _record(op, "ref")
    try:
        load()
    except OpsBuildError as e:
        if is_strict():
            raise
        if op not in _warned:
            _warned.add(op)
            warnings.warn(f"{op}: CUDA build unavailable, using the slower reference "
                          f"implementation. {e}", OpsFallbackWarning, stacklevel=3)
        return _record(op, "ref")
    return _record(op, "cuda")


def _record(op: str, impl: str) -> str:
    _last[op] = impl
    _counts[(op, impl)] += 1
    return impl


def last_impl(op: str) -> str | None:
    """The implementation the most recent call of ``op`` used ("cuda", "ref" or None)."""
    return _last.get(op)


def impl_counts() -> dict[str, dict[str, int]]:
    """Calls per op and implementation since start (or the last reset), for logs."""
    out: dict[str, dict[str, int]] = {}
    for (op, impl), n in sorted(_counts.items()):
        out.setdefault(op, {})[impl] = n
    return out


def reset_records() -> None:
    """Forget recorded calls and printed warnings (tests and per-run logs use it)."""
    _last.clear()
    _counts.clear()
    _warned.clear()
