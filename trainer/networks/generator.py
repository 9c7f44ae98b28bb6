"""StyleGAN2 generator (config F), state-dict compatible with rosinality's
``Generator`` plus one buffer, ``w_avg`` (rosinality keeps it beside the state
dict as ``latent_avg``).

W+ wiring, written once in ``synthesis``: ``conv1`` w[0], ``to_rgb1`` w[1];
block k (output 8 * 2**k): up conv w[2k+1], conv w[2k+2], ToRGB w[2k+3].
StyleSpace (``stylespace.py``) derives its table from this code by tracing it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from .layers import ConstantInput, EqualLinear, PixelNorm, StyledConv, ToRGB, set_precision

NOISE_MODES = ("random", "const", "none")
PRECISIONS = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def check_arch(what: str, size: int, min_size: int, precision: str, channel_multiplier: float,
               channel_max: int) -> None:
    """Validation shared by the generator and discriminator configs."""
    log = math.log2(size) if size > 0 else -1
    if log != int(log) or not math.log2(min_size) <= log <= 10:
        raise ValueError(f"{what} size must be a power of two in {min_size}..1024, got {size}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if channel_max < 1 or channel_multiplier <= 0:
        raise ValueError(f"channel_max and channel_multiplier must be positive, got {channel_max}, "
                         f"{channel_multiplier}")


def channels_at(res: int, channel_multiplier: float, channel_max: int) -> int:
    """min(channel_max, int(16384 * m) // res): rosinality's table, NVlabs' channel_base."""
    return max(1, min(channel_max, int(16384 * channel_multiplier) // res))


@dataclass
class GeneratorConfig:
    """Architecture of a StyleGAN2 generator."""

    size: int = 1024
    """Output resolution: a power of two from 4 to 1024."""
    style_dim: int = 512
    """Dimension of z and w."""
    n_mlp: int = 8
    """Depth of the mapping network."""
    lr_mlp: float = 0.01
    """Learning-rate multiplier of the mapping network (equalized lr)."""
    channel_multiplier: float = 2.0
    """Channels at resolution r are min(channel_max, int(16384 * channel_multiplier) // r);
    2 is rosinality's default (NVlabs config-f, channel_base 32768)."""
    channel_max: int = 512
    """Upper bound on channels at any resolution."""
    blur_kernel: list[float] = field(default_factory=lambda: [1.0, 3.0, 3.0, 1.0])
    """Taps of the resampling filter."""
    num_fp16_res: int = 0
    """Run the N highest resolutions in ``precision`` (0: all float32)."""
    precision: str = "float16"
    """Reduced dtype for ``num_fp16_res`` blocks: "float16" or "bfloat16"."""
    conv_clamp: float | None = None
    """Clamp activations to +-conv_clamp (NVlabs uses 256 with mixed precision); None: off."""

    def __post_init__(self) -> None:
        check_arch("generator", self.size, 4, self.precision, self.channel_multiplier, self.channel_max)
        if min(self.style_dim, self.n_mlp) < 1:
            raise ValueError(f"style_dim and n_mlp must be positive, got {self.style_dim}, {self.n_mlp}")
        self.blur_kernel = [float(v) for v in self.blur_kernel]

    def channels(self, res: int) -> int:
        return channels_at(res, self.channel_multiplier, self.channel_max)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GeneratorOutput:
    """What ``Generator.forward`` returns when extras are requested."""

    img: torch.Tensor
    """[N, 3, size, size] float32, nominally in [-1, 1] (not clamped)."""
    ws: torch.Tensor
    """[N, n_latent, style_dim] W+ after truncation and mixing."""
    features: list[torch.Tensor]
    """Per-block outputs, one per resolution from 4 upwards (structure loss)."""
    rgbs: list[torch.Tensor]
    """The running RGB image after each block's ToRGB, 4 upwards."""


class Generator(nn.Module):
    def __init__(self, cfg: GeneratorConfig | None = None, **overrides):
        super().__init__()
        cfg = cfg or GeneratorConfig(**overrides)
        self.cfg = cfg
        self.size, self.style_dim = cfg.size, cfg.style_dim
        self.log_size = int(math.log2(cfg.size))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.n_latent = self.log_size * 2 - 2
        blur = cfg.blur_kernel

        # Mapping: style.0 is PixelNorm, style.1..n the FC layers (rosinality keys).
        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(cfg.style_dim, cfg.style_dim, lr_mul=cfg.lr_mlp, activation="fused_lrelu")
            for _ in range(cfg.n_mlp)])
        # NaN until computed or loaded: truncation must not silently pull towards 0.
        self.register_buffer("w_avg", torch.full((cfg.style_dim,), float("nan")))

        ch4 = cfg.channels(4)
        self.input = ConstantInput(ch4)
        self.conv1 = StyledConv(ch4, ch4, 3, cfg.style_dim, 4, blur_kernel=blur)
        self.to_rgb1 = ToRGB(ch4, cfg.style_dim, 4, upsample=False)
        self.convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            r = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, r, r))
        in_ch = ch4
        for lg in range(3, self.log_size + 1):
            r = 2 ** lg
            out_ch = cfg.channels(r)
            self.convs.append(StyledConv(in_ch, out_ch, 3, cfg.style_dim, r, upsample=True, blur_kernel=blur))
            self.convs.append(StyledConv(out_ch, out_ch, 3, cfg.style_dim, r, blur_kernel=blur))
            self.to_rgbs.append(ToRGB(out_ch, cfg.style_dim, r, blur_kernel=blur))
            in_ch = out_ch
        self._apply_precision()

    def _apply_precision(self) -> None:
        set_precision(self, torch.float32, self.cfg.conv_clamp)
        if self.cfg.num_fp16_res > 0:
            lo = max(2 ** (self.log_size + 1 - self.cfg.num_fp16_res), 8)
            for m in list(self.convs) + list(self.to_rgbs):
                if m.resolution >= lo:
                    set_precision(m, PRECISIONS[self.cfg.precision], self.cfg.conv_clamp)

    # ------------------------------------------------------------------
    # Latents.

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z [N, style_dim] -> w [N, style_dim]."""
        return self.style(z)

    @torch.no_grad()
    def update_w_avg(self, n: int = 4096, seed: int = 0) -> torch.Tensor:
        """Sets ``w_avg`` to the mean of ``n`` mapped samples (rosinality ``mean_latent``)."""
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.style_dim, generator=gen).to(self.w_avg.device)
        self.w_avg.copy_(self.mapping(z).mean(0))
        return self.w_avg

    def truncate(self, ws: torch.Tensor, psi: float, cutoff: int | None = None) -> torch.Tensor:
        """Moves W+ [N, L, D] towards ``w_avg`` by ``psi`` (the first ``cutoff`` entries only)."""
        if psi == 1:
            return ws
        if torch.isnan(self.w_avg).any():
            raise RuntimeError("truncation needs w_avg: load a checkpoint with latent_avg or call update_w_avg()")
        t = self.w_avg.lerp(ws, psi)
        if cutoff is None:
            return t
        return torch.cat([t[:, :cutoff], ws[:, cutoff:]], dim=1)

    def broadcast(self, w: torch.Tensor) -> torch.Tensor:
        """w [N, D] -> W+ [N, n_latent, D]."""
        return w[:, None, :].repeat(1, self.n_latent, 1)

    def make_noise(self, batch: int, mode: str, device: torch.device) -> list[torch.Tensor | None]:
        """Per-layer noise for ``mode``: fresh N(0, 1), the stored buffers, or none."""
        if mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {mode!r}")
        if mode == "none":
            return [None] * self.num_layers
        if mode == "const":
            return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        return [torch.randn(batch, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2), device=device)
                for i in range(self.num_layers)]

    # ------------------------------------------------------------------
    # Synthesis.

    def synthesis(self, ws: torch.Tensor | None = None, styles: list[torch.Tensor] | None = None,
                  noise_mode: str = "random", noise: list[torch.Tensor | None] | None = None,
                  trace: Callable | None = None) -> GeneratorOutput:
        """Renders W+ ``ws`` [N, n_latent, D], or StyleSpace ``styles`` (one [N, C]
        tensor per modulated layer in call order). ``trace(layer, w_index)`` is called
        before each modulated layer; StyleSpace uses it to read the wiring."""
        if (ws is None) == (styles is None):
            raise ValueError("synthesis takes exactly one of ws or styles")
        if ws is not None and (ws.ndim != 3 or ws.shape[1] != self.n_latent):
            raise ValueError(f"ws must be [N, {self.n_latent}, {self.style_dim}], got {tuple(ws.shape)}")
        batch = (ws if ws is not None else styles[0]).shape[0]
        device = self.input.input.device
        noise = noise if noise is not None else self.make_noise(batch, noise_mode, device)
        if len(noise) != self.num_layers:
            raise ValueError(f"noise must have {self.num_layers} entries, got {len(noise)}")
        counter = itertools.count()

        def s(layer: nn.Module, w_index: int) -> torch.Tensor:
            k = next(counter)
            if trace is not None:
                trace(layer, w_index)
            if styles is not None:
                return styles[k]
            return layer.conv.modulation(ws[:, w_index])

        out = self.conv1(self.input(batch), s(self.conv1, 0), noise[0])
        skip = self.to_rgb1(out, s(self.to_rgb1, 1))
        features, rgbs = [out], [skip]
        i = 1
        for k, to_rgb in enumerate(self.to_rgbs):
            up, conv = self.convs[2 * k], self.convs[2 * k + 1]
            out = up(out, s(up, i), noise[2 * k + 1])
            out = conv(out, s(conv, i + 1), noise[2 * k + 2])
            skip = to_rgb(out, s(to_rgb, i + 2), skip)
            features.append(out)
            rgbs.append(skip)
            i += 2
        return GeneratorOutput(skip, ws, features, rgbs)

    def forward(self, z: torch.Tensor | None = None, *, w: torch.Tensor | None = None,
                ws: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, mix_z: torch.Tensor | None = None,
                crossover: int | None = None, noise_mode: str = "random",
                noise: list[torch.Tensor | None] | None = None, return_ws: bool = False,
                return_features: bool = False) -> torch.Tensor | GeneratorOutput:
        """Image from exactly one of ``z`` [N, D], ``w`` [N, D] or ``ws`` [N, L, D].

        ``mix_z``: a second z whose W+ replaces entries from ``crossover`` on
        (drawn uniformly in [1, n_latent) when None). Truncation applies to the
        final W+. Returns the image, or a ``GeneratorOutput`` when
        ``return_ws``/``return_features`` is set.
        """
        if sum(v is not None for v in (z, w, ws)) != 1:
            raise ValueError("give exactly one of z, w or ws")
        if ws is None:
            ws = self.broadcast(self.mapping(z) if z is not None else w)
        if mix_z is not None:
            if crossover is None:
                crossover = int(torch.randint(1, self.n_latent, ()))
            ws2 = self.broadcast(self.mapping(mix_z))
            ws = torch.cat([ws[:, :crossover], ws2[:, crossover:]], dim=1)
        ws = self.truncate(ws, truncation_psi, truncation_cutoff)
        out = self.synthesis(ws, noise_mode=noise_mode, noise=noise)
        return out if (return_ws or return_features) else out.img

    def extra_repr(self) -> str:
        return f"size={self.size}, style_dim={self.style_dim}, n_latent={self.n_latent}"
