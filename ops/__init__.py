"""Fused ops for StyleGAN2, one module per op.

    from ops import bias_act, upfirdn2d
    y = upfirdn2d.upsample2d(x, upfirdn2d.setup_filter([1, 3, 3, 1]))
    y = bias_act.bias_act(y, b, act="lrelu")

Each op takes ``impl="auto"|"cuda"|"ref"``. Importing this package compiles
nothing; CUDA extensions build on first use (see ``ops._build``). Which
implementation ran is queryable with ``last_impl(op)`` and ``impl_counts()``.
"""

from . import bias_act, upfirdn2d
from ._build import OpsBuildError
from ._dispatch import (OpsFallbackWarning, impl_counts, is_strict, last_impl, reset_records,
                        set_default_impl, set_strict)

__all__ = [
    "OpsBuildError", "OpsFallbackWarning", "bias_act", "impl_counts", "is_strict", "last_impl",
    "reset_records", "set_default_impl", "set_strict", "upfirdn2d",
]
