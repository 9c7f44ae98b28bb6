"""grid_sample with an explicit second derivative with respect to the input.

``grid_sample(input, grid)`` is ``F.grid_sample`` with ``mode="bilinear"``,
``padding_mode="zeros"``, ``align_corners=False`` (the settings ADA uses) and
the same values and first-order gradients. R1 through ADA's geometric
augmentation differentiates ``d D(aug(x)) / d x`` once more, which runs the
derivative of ``grid_sampler_2d_backward``. PyTorch had none for years
(pytorch/pytorch#34704: "derivative for grid_sampler_2d_backward is not
implemented", still reported on 2.0); torch 2.13 has one (a test checks it).
This module does not depend on which: the op's backward is itself an autograd
Function whose own backward is one more ``grid_sample``.

Why that is the whole second derivative: with zero padding, bilinear sampling
is linear in ``input`` with weights that depend on ``grid`` alone, so
``grad_input = S(grid)^T grad_output`` is linear in ``grad_output`` and does
not depend on ``input``. Its derivative with respect to ``grad_output``,
applied to an incoming ``g``, is ``S(grid) g = grid_sample(g, grid)``; its
derivative with respect to ``input`` is zero. Second derivatives that involve
the grid (through ``grad_grid``, or of ``grad_input`` with respect to ``grid``)
are not implemented and raise ``NotImplementedError``; ADA's grid is built
from random numbers and needs none.

``_grid_sample_ref`` is the plain call, kept beside the Function as in the
other ops modules. There is no CUDA kernel of our own: the forward and first
backward are PyTorch's native kernels on every device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# aten::grid_sampler_2d_backward enums: interpolation 0 = bilinear, padding 0 = zeros.
_BILINEAR = 0
_ZEROS = 0
_ALIGN_CORNERS = False


def grid_sample(input: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Samples ``input`` [N, C, H, W] at ``grid`` [N, Ho, Wo, 2] (x, y in [-1, 1]).

    Bilinear, zeros outside, ``align_corners=False``. Differentiable to any
    order with respect to ``input``; first order with respect to ``grid``.
    """
    if input.ndim != 4 or grid.ndim != 4 or grid.shape[-1] != 2:
        raise ValueError(f"grid_sample expects input [N, C, H, W] and grid [N, Ho, Wo, 2], "
                         f"got {tuple(input.shape)} and {tuple(grid.shape)}")
    if input.shape[0] != grid.shape[0]:
        raise ValueError(f"grid_sample: batch sizes differ ({input.shape[0]} vs {grid.shape[0]})")
    if input.dtype != grid.dtype:
        raise ValueError(f"grid_sample: input and grid dtypes differ ({input.dtype} vs {grid.dtype})")
    return _GridSample2d.apply(input, grid)


def _grid_sample_ref(input: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The plain PyTorch call with the settings above."""
    return F.grid_sample(input, grid, mode="bilinear", padding_mode="zeros", align_corners=_ALIGN_CORNERS)


class _GridSample2d(torch.autograd.Function):
    """Forward: the native op. Backward: through ``_GridSample2dBackward.apply``,
    so that the gradient is part of the graph when ``create_graph=True``."""

    @staticmethod
    def forward(ctx, input: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(input, grid)
        return _grid_sample_ref(input, grid)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        input, grid = ctx.saved_tensors
        mask = (bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1]))
        if not any(mask):
            return None, None
        grad_input, grad_grid = _GridSample2dBackward.apply(grad_output, input, grid, mask)
        return grad_input, grad_grid


class _GridSample2dBackward(torch.autograd.Function):
    """(grad_output, input, grid) -> (grad_input, grad_grid), with the output
    mask from the forward's ``needs_input_grad`` (a gradient nobody needs is
    neither computed nor returned)."""

    @staticmethod
    def forward(ctx, grad_output: torch.Tensor, input: torch.Tensor, grid: torch.Tensor,
                mask: tuple[bool, bool]):
        # Unused outputs arrive as None instead of zero tensors, which lets
        # backward tell "grad_grid feeds a loss" from "grad_grid is unused".
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(grid)
        grad_input, grad_grid = torch.ops.aten.grid_sampler_2d_backward(
            grad_output, input, grid, _BILINEAR, _ZEROS, _ALIGN_CORNERS, list(mask))
        # The CPU kernel fills grad_grid even when masked out: drop what was not asked for.
        return (grad_input if mask[0] else None), (grad_grid if mask[1] else None)

    @staticmethod
    def backward(ctx, gg_input: torch.Tensor | None, gg_grid: torch.Tensor | None):
        (grid,) = ctx.saved_tensors
        if gg_grid is not None:
            raise NotImplementedError(
                "grid_sample_gradfix: second derivatives through the gradient with respect to "
                "grid are not supported (only d(grad_input)/d(grad_output) is)")
        if gg_input is None:
            return None, None, None, None
        if ctx.needs_input_grad[2]:
            raise NotImplementedError(
                "grid_sample_gradfix: the derivative of grad_input with respect to grid is not "
                "supported; detach the grid when differentiating twice")
        grad_grad_output = None
        if ctx.needs_input_grad[0]:
            # grad_input is S(grid)^T grad_output, so its adjoint is S(grid): sampling
            # again, through the Function so that higher orders keep working.
            grad_grad_output = _GridSample2d.apply(gg_input, grid)
        # grad_input does not depend on input (zero), and gg_grid is None.
        return grad_grad_output, None, None, None
