"""Residual StyleGAN2 discriminator, state-dict compatible with rosinality's
``Discriminator``, with FreezeD in both public conventions.

Layer order from the top (NVlabs ``--freezed`` counts these): ``convs.0``
(fromrgb), then per block ``conv1`` (NVlabs conv0), ``conv2`` (conv1, down),
``skip``. Cartoon-StyleGAN2's ``--freezeD=N`` instead keeps the N lowest-
resolution blocks and the final layers trainable and freezes the rest.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .generator import PRECISIONS, channels_at, check_arch
from .layers import ConvLayer, EqualLinear, ResBlock, set_precision


@dataclass
class DiscriminatorConfig:
    """Architecture of a StyleGAN2 residual discriminator."""

    size: int = 1024
    """Input resolution: a power of two from 8 to 1024."""
    channel_multiplier: float = 2.0
    """As for the generator: channels min(channel_max, int(16384 * m) // r)."""
    channel_max: int = 512
    """Upper bound on channels at any resolution."""
    blur_kernel: list[float] = field(default_factory=lambda: [1.0, 3.0, 3.0, 1.0])
    """Taps of the downsampling filter."""
    stddev_group: int = 4
    """Minibatch standard deviation group size (largest divisor of the batch up to this)."""
    stddev_feat: int = 1
    """Channels the minibatch standard deviation adds."""
    num_fp16_res: int = 0
    """Run the blocks at the N highest resolutions in ``precision``."""
    precision: str = "float16"
    """Reduced dtype for those blocks: "float16" or "bfloat16"."""
    conv_clamp: float | None = None
    """Clamp activations to +-conv_clamp; None: off."""

    def __post_init__(self) -> None:
        check_arch("discriminator", self.size, 8, self.precision, self.channel_multiplier, self.channel_max)
        self.blur_kernel = [float(v) for v in self.blur_kernel]

    def channels(self, res: int) -> int:
        return channels_at(res, self.channel_multiplier, self.channel_max)

    def to_dict(self) -> dict:
        return asdict(self)


def minibatch_stddev(x: torch.Tensor, group: int, feat: int = 1) -> torch.Tensor:
    """Appends ``feat`` channels holding the std over groups of samples (NVlabs layout:
    sample i is member i // (N / G) of subgroup i % (N / G))."""
    n, c, h, w = x.shape
    g = max(d for d in range(1, min(group, n) + 1) if n % d == 0)
    y = x.float().reshape(g, -1, feat, c // feat, h, w)
    y = torch.sqrt(y.var(0, unbiased=False) + 1e-8)
    y = y.mean(dim=[2, 3, 4]).reshape(-1, feat, 1, 1).repeat(g, 1, h, w)
    return torch.cat([x, y.to(x.dtype)], dim=1)


class Discriminator(nn.Module):
    def __init__(self, cfg: DiscriminatorConfig | None = None, **overrides):
        super().__init__()
        cfg = cfg or DiscriminatorConfig(**overrides)
        self.cfg = cfg
        self.log_size = int(math.log2(cfg.size))
        ch = cfg.channels
        convs: list[nn.Module] = [ConvLayer(3, ch(cfg.size), 1)]
        in_ch = ch(cfg.size)
        for lg in range(self.log_size, 2, -1):
            out_ch = ch(2 ** (lg - 1))
            convs.append(ResBlock(in_ch, out_ch, cfg.blur_kernel))
            in_ch = out_ch
        self.convs = nn.Sequential(*convs)
        self.final_conv = ConvLayer(in_ch + cfg.stddev_feat, ch(4), 3)
        self.final_linear = nn.Sequential(
            EqualLinear(ch(4) * 4 * 4, ch(4), activation="fused_lrelu"), EqualLinear(ch(4), 1))
        self._apply_precision()

    def _apply_precision(self) -> None:
        set_precision(self, torch.float32, self.cfg.conv_clamp)
        if self.cfg.num_fp16_res > 0:
            lo = max(2 ** (self.log_size + 1 - self.cfg.num_fp16_res), 8)
            dtype = PRECISIONS[self.cfg.precision]
            for j, block in enumerate(self.convs):
                if self.block_resolution(j) >= lo:
                    set_precision(block, dtype, self.cfg.conv_clamp)

    def block_resolution(self, j: int) -> int:
        """Input resolution of ``convs.j`` (fromrgb is at full size)."""
        return self.cfg.size if j == 0 else self.cfg.size >> (j - 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """Logits [N, 1] for images [N, 3, size, size]."""
        if img.ndim != 4 or img.shape[1:] != (3, self.cfg.size, self.cfg.size):
            raise ValueError(f"discriminator expects [N, 3, {self.cfg.size}, {self.cfg.size}], "
                             f"got {tuple(img.shape)}")
        out = self.convs(img).float()
        out = minibatch_stddev(out, self.cfg.stddev_group, self.cfg.stddev_feat)
        out = self.final_conv(out)
        return self.final_linear(out.reshape(out.shape[0], -1))

    # ------------------------------------------------------------------
    # FreezeD.

    def layers_from_top(self) -> list[str]:
        """Module names in NVlabs layer order: fromrgb, then conv0, conv1, skip per block."""
        names = ["convs.0"]
        for j in range(1, len(self.convs)):
            names += [f"convs.{j}.conv1", f"convs.{j}.conv2", f"convs.{j}.skip"]
        return names

    def freeze_names(self, n: int, convention: str = "nvlabs") -> list[str]:
        """Parameter names FreezeD ``n`` freezes.

        ``nvlabs``: the first ``n`` layers of ``layers_from_top()``.
        ``cartoon``: all but the ``n`` lowest-resolution blocks and ``final_*``
        (Cartoon-StyleGAN2 ``--freezeD``).
        """
        if n < 0:
            raise ValueError(f"FreezeD count must be >= 0, got {n}")
        if n == 0:
            return []
        if convention == "nvlabs":
            layers = self.layers_from_top()
            if n > len(layers):
                raise ValueError(f"FreezeD {n} exceeds the {len(layers)} layers of this discriminator")
            prefixes = [p + "." for p in layers[:n]]
        elif convention == "cartoon":
            blocks = len(self.convs) - 1
            if n > blocks:
                raise ValueError(f"FreezeD {n} exceeds the {blocks} blocks of this discriminator")
            prefixes = [f"convs.{j}." for j in range(0, blocks + 1 - n)]
        else:
            raise ValueError(f"FreezeD convention must be 'nvlabs' or 'cartoon', got {convention!r}")
        return [name for name, _ in self.named_parameters() if name.startswith(tuple(prefixes))]

    def freeze(self, n: int, convention: str = "nvlabs") -> list[str]:
        """Sets ``requires_grad=False`` on the FreezeD parameters; returns their names."""
        names = set(self.freeze_names(n, convention))
        for name, p in self.named_parameters():
            p.requires_grad_(name not in names)
        return sorted(names)
