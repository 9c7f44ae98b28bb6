"""Fused ops for StyleGAN2: upfirdn2d and bias_act.

Each op takes ``impl="auto"|"cuda"|"ref"``. Importing this package compiles
nothing; CUDA extensions build on first use (see ``ops._build``). Which
implementation ran is queryable with ``last_impl(op)`` and ``impl_counts()``.
"""

from ._build import OpsBuildError
from ._dispatch import (OpsFallbackWarning, impl_counts, is_strict, last_impl, reset_records,
                        set_strict)
from .bias_act import bias_act
from .upfirdn2d import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d

__all__ = [
    "OpsBuildError", "OpsFallbackWarning", "bias_act", "downsample2d", "filter2d",
    "impl_counts", "is_strict", "last_impl", "reset_records", "set_strict", "setup_filter",
    "upfirdn2d", "upsample2d",
]
