"""StyleGAN2 building blocks, with parameter names and storage conventions of
rosinality/stylegan2-pytorch so that state dicts load without renaming.

Equalized learning rate: weights are stored unscaled (N(0, 1) / lr_mul at
init) and multiplied at run time by ``lr_mul / sqrt(fan_in)``; biases by
``lr_mul``. Mixed precision: a layer with ``dtype`` float16/bfloat16 runs its
convolution in that dtype (styles and demodulation stay float32) and
``clamp`` bounds its activations, as NVlabs does with ``conv_clamp``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ops import bias_act, upfirdn2d

LRELU_GAIN = math.sqrt(2.0)


def compute_dtype(layer_dtype: torch.dtype, x: torch.Tensor) -> torch.dtype:
    """A reduced-precision layer runs in its dtype; others in float32 or wider."""
    if layer_dtype in (torch.float16, torch.bfloat16):
        return layer_dtype
    return torch.promote_types(x.dtype, torch.float32)


def make_kernel(k: list[float]) -> torch.Tensor:
    """2-D blur kernel from 1-D taps, normalised to sum 1 (rosinality ``make_kernel``)."""
    k = torch.tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


class PixelNorm(nn.Module):
    """Normalises z to unit second moment per sample (eps 1e-8)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalized lr; ``activation="fused_lrelu"`` adds lrelu(0.2) * sqrt(2)."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: str | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.activation = activation
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight * self.scale)
        b = None if self.bias is None else self.bias * self.lr_mul
        act = "lrelu" if self.activation else "linear"
        return bias_act.bias_act(out, b, dim=1, act=act)


class EqualConv2d(nn.Module):
    """Conv2d with equalized lr (scale 1/sqrt(in * k * k))."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale = 1 / math.sqrt(in_ch * kernel_size ** 2)
        self.stride, self.padding = stride, padding
        self.dtype = torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(self.dtype, x)
        w = (self.weight * self.scale).to(dtype)
        b = None if self.bias is None else self.bias.to(dtype)
        return F.conv2d(x.to(dtype), w, b, stride=self.stride, padding=self.padding)


class FusedLeakyReLU(nn.Module):
    """Bias add + leaky ReLU (slope 0.2, gain sqrt 2) through ``ops.bias_act``."""

    def __init__(self, channels: int, bias: bool = True):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None
        self.clamp: float | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bias_act.bias_act(x, self.bias, dim=1, act="lrelu", clamp=self.clamp)


class Blur(nn.Module):
    """FIR filter with padding; ``upsample_factor`` scales the kernel by factor**2
    (the gain zero insertion needs)."""

    def __init__(self, kernel: list[float], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        k = make_kernel(kernel)
        if upsample_factor > 1:
            k = k * upsample_factor ** 2
        self.register_buffer("kernel", k)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p0, p1 = self.pad
        return upfirdn2d.upfirdn2d(x, self.kernel, padding=(p0, p1, p0, p1))


class Upsample(nn.Module):
    """2x upsampling by zero insertion and the blur kernel (ToRGB skip path)."""

    def __init__(self, kernel: list[float], factor: int = 2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(kernel) * factor ** 2)
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p0, p1 = self.pad
        return upfirdn2d.upfirdn2d(x, self.kernel, up=self.factor, padding=(p0, p1, p0, p1))


class ModulatedConv2d(nn.Module):
    """Weight modulation by a per-sample style, optional demodulation, optional
    2x upsampling (transposed conv then blur), as a grouped convolution."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False,
                 blur_kernel: list[float] = (1, 3, 3, 1)):
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_ch, out_ch, kernel_size
        self.upsample, self.demodulate = upsample, demodulate
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(list(blur_kernel), pad=((p + 1) // 2 + factor - 1, p // 2 + 1),
                             upsample_factor=factor)
        self.scale = 1 / math.sqrt(in_ch * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel_size, kernel_size))
        # Bias 1: an all-zero w leaves the weights unmodulated.
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)
        self.dtype = torch.float32

    def modulated_weight(self, style: torch.Tensor) -> torch.Tensor:
        """[N, out, in, k, k] weights for styles s [N, in], in float32."""
        w = self.scale * self.weight * style[:, None, :, None, None]
        if self.demodulate:
            w = w * torch.rsqrt(w.square().sum(dim=[2, 3, 4]) + 1e-8)[:, :, None, None, None]
        return w

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """``style`` is s = A(w) [N, in], not w: callers choose it (StyleSpace)."""
        n, c, h, w_ = x.shape
        dtype = compute_dtype(self.dtype, x)
        weight = self.modulated_weight(style.to(torch.promote_types(style.dtype, torch.float32)))
        weight = weight.to(dtype)
        x = x.to(dtype).reshape(1, n * c, h, w_)
        k = self.kernel_size
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(n * c, self.out_channel, k, k)
            out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=n)
            out = self.blur(out.reshape(n, self.out_channel, *out.shape[2:]))
        else:
            weight = weight.reshape(n * self.out_channel, c, k, k)
            out = F.conv2d(x, weight, padding=self.padding, groups=n)
            out = out.reshape(n, self.out_channel, *out.shape[2:])
        return out


class NoiseInjection(nn.Module):
    """Adds per-pixel noise [N, 1, H, W] scaled by a learned scalar (init 0)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        if noise is None:
            return x
        return x + (self.weight * noise).to(x.dtype)


class ConstantInput(nn.Module):
    """The learned 4x4 input, repeated over the batch."""

    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.repeat(batch, 1, 1, 1)


class StyledConv(nn.Module):
    """Modulated conv + noise + bias/lrelu. ``resolution`` is its output size."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int,
                 resolution: int, upsample: bool = False,
                 blur_kernel: list[float] = (1, 3, 3, 1)):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, kernel_size, style_dim,
                                    upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch)
        self.resolution = resolution

    def forward(self, x: torch.Tensor, style: torch.Tensor,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB (no demodulation) plus the upsampled skip."""

    def __init__(self, in_ch: int, style_dim: int, resolution: int, upsample: bool = True,
                 blur_kernel: list[float] = (1, 3, 3, 1)):
        super().__init__()
        if upsample:
            self.upsample = Upsample(list(blur_kernel))
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.resolution = resolution
        self.clamp: float | None = None

    def forward(self, x: torch.Tensor, style: torch.Tensor,
                skip: torch.Tensor | None = None) -> torch.Tensor:
        out = bias_act.bias_act(self.conv(x, style), self.bias.reshape(-1), clamp=self.clamp)
        out = out.to(torch.promote_types(out.dtype, torch.float32))  # RGB sum stays float32
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class ConvLayer(nn.Sequential):
    """[Blur] + EqualConv2d + [FusedLeakyReLU]: rosinality's discriminator conv,
    indices 0/1/2 as in its state dicts. Downsampling blurs then strides by 2."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, downsample: bool = False,
                 blur_kernel: list[float] = (1, 3, 3, 1), bias: bool = True,
                 activate: bool = True):
        layers: list[nn.Module] = []
        if downsample:
            p = (len(blur_kernel) - 2) + (kernel_size - 1)
            layers.append(Blur(list(blur_kernel), pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_ch, out_ch, kernel_size, padding=padding, stride=stride,
                                  bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_ch, bias=bias))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Residual discriminator block: two 3x3 convs (the second downsamples) and a
    1x1 downsampling skip, summed and scaled by 1/sqrt(2)."""

    def __init__(self, in_ch: int, out_ch: int, blur_kernel: list[float] = (1, 3, 3, 1)):
        super().__init__()
        self.conv1 = ConvLayer(in_ch, in_ch, 3)
        self.conv2 = ConvLayer(in_ch, out_ch, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(in_ch, out_ch, 1, downsample=True, activate=False, bias=False,
                              blur_kernel=blur_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        return (out + self.skip(x).to(out.dtype)) / math.sqrt(2)


def set_precision(module: nn.Module, dtype: torch.dtype, clamp: float | None) -> None:
    """Sets the compute dtype and activation clamp of every conv layer inside ``module``."""
    for m in module.modules():
        if isinstance(m, (ModulatedConv2d, EqualConv2d)):
            m.dtype = dtype
        if isinstance(m, (FusedLeakyReLU, ToRGB)):
            m.clamp = clamp
