"""ReStyle-pSp encoders: an image and the current reconstruction in, a W+ residual out.

Two bodies, as ReStyle ships them (``restyle_psp_encoders.py``):
- ``ir_se50`` (BackboneEncoder): a 3x3 conv/BN/PReLU input layer over 6 channels,
  the IR-SE50 body, then one ``GradualStyleBlock`` per W+ vector on the body's
  16x16 map (at 256 px input);
- ``resnet34`` (ResNetBackboneEncoder): a 7x7/2 conv, BN, PReLU, the 16
  BasicBlocks of ResNet34 (no max-pool), the same style blocks.
State-dict keys match ReStyle's ``encoder.*`` entries. ``width``/``units``
shrink the body for tests; the public layout is width 1 with default units.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import nn

from . import irse
from .layers import EqualLinear
from .resnet import ResNet
from .weights import PUBLIC, load_into, load_weights, tensors

RESTYLE_TYPES = {"ir_se50": "BackboneEncoder", "resnet34": "ResNetBackboneEncoder"}


@dataclass
class EncoderConfig:
    """Architecture of a ReStyle encoder (stored with every checkpoint and export)."""

    backbone: Literal["ir_se50", "resnet34"] = "ir_se50"
    """Body: IR-SE50 (ReStyle's BackboneEncoder) or ResNet34 (ResNetBackboneEncoder)."""
    n_styles: int = 18
    """W+ vectors predicted: the generator's n_latent (18 at 1024 px)."""
    style_dim: int = 512
    """Width of each W+ vector (the generator's style_dim)."""
    input_size: int = 256
    """Side of the encoder input; the body's output map is input_size / 16."""
    input_nc: int = 6
    """Input channels: the image and the current reconstruction (ReStyle), 3 for plain pSp."""
    width: float = 1.0
    """Channel multiplier of the body (1: the public architecture)."""
    units: list[int] = field(default_factory=lambda: list(irse.UNITS[50]))
    """IR-SE units per stage ([3, 4, 14, 3]: IR-SE50). Ignored by resnet34."""

    def __post_init__(self) -> None:
        if self.input_size < 32 or self.input_size & (self.input_size - 1):
            raise ValueError(f"encoder input_size must be a power of two >= 32, got {self.input_size}")
        if self.backbone not in RESTYLE_TYPES:
            raise ValueError(f"encoder backbone must be one of {sorted(RESTYLE_TYPES)}, got {self.backbone!r}")
        if len(self.units) != 4 or min(self.units) < 1:
            raise ValueError(f"encoder units must be four positive counts, got {self.units}")

    @property
    def public(self) -> bool:
        """Whether the body has the public layout (pretrained body weights fit)."""
        return self.width == 1.0 and (self.backbone == "resnet34" or tuple(self.units) == irse.UNITS[50])

    def to_dict(self) -> dict:
        return asdict(self)


class GradualStyleBlock(nn.Module):
    """Strided 3x3 convs (LeakyReLU 0.01) down to 1x1, then an equalized linear layer."""

    def __init__(self, in_ch: int, out_ch: int, spatial: int):
        super().__init__()
        self.out_ch = out_ch
        layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 3, 2, 1), nn.LeakyReLU()]
        for _ in range(int(math.log2(spatial)) - 1):
            layers += [nn.Conv2d(out_ch, out_ch, 3, 2, 1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).reshape(-1, self.out_ch))


class Encoder(nn.Module):
    """[N, input_nc, S, S] in [-1, 1] -> W+ residual [N, n_styles, style_dim]."""

    def __init__(self, cfg: EncoderConfig | None = None, **overrides):
        super().__init__()
        cfg = cfg or EncoderConfig(**overrides)
        self.cfg = cfg
        if cfg.backbone == "ir_se50":
            self.input_layer = irse.input_layer(cfg.input_nc, cfg.width)
            self.body = irse.make_body(tuple(cfg.units), cfg.width)
            last = irse.stage_units(tuple(cfg.units), cfg.width)[-1].depth
        else:
            res = ResNet(34, cfg.width)
            base = res.conv1.out_channels
            self.conv1 = nn.Conv2d(cfg.input_nc, base, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(base)
            self.relu = nn.PReLU(base)
            self.body = nn.Sequential(*[b for stage in res.stages() for b in stage])
            last = res.features
        spatial = cfg.input_size // 16
        self.styles = nn.ModuleList(GradualStyleBlock(last, cfg.style_dim, spatial) for _ in range(cfg.n_styles))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != (self.cfg.input_nc, self.cfg.input_size, self.cfg.input_size):
            raise ValueError(f"encoder input must be [N, {self.cfg.input_nc}, {self.cfg.input_size}, "
                             f"{self.cfg.input_size}], got {tuple(x.shape)}")
        if self.cfg.backbone == "ir_se50":
            x = self.input_layer(x)
        else:
            x = self.relu(self.bn1(self.conv1(x)))
        x = self.body(x)
        return torch.stack([s(x) for s in self.styles], dim=1)


def init_backbone(enc: Encoder, path: str | None, check_hash: bool = True) -> str:
    """Loads the pretrained body ReStyle starts from; returns a line for the log.

    IR-SE50: ``model_ir_se50.pth`` into input_layer and body. ResNet34: torchvision's
    conv1 and bn1 into the input layer, layer1..4 into the body. Either way the
    6-channel input conv takes the file's 3-channel weights for the image channels
    and N(0, 1) for the others (as ReStyle does). Without a file the body stays random
    and a warning says so: an encoder trained from scratch converges far slower.
    """
    key = enc.cfg.backbone if enc.cfg.backbone == "resnet34" else "ir_se50"
    if path is None:
        msg = (f"WARNING: the {enc.cfg.backbone} encoder body starts from RANDOM weights; "
               f"ReStyle starts from {PUBLIC[key].filename} ({PUBLIC[key].source}): set model.backbone_weights")
        warnings.warn(msg, stacklevel=2)
        return msg
    if not enc.cfg.public:
        raise ValueError(f"model.backbone_weights fit only the public {enc.cfg.backbone} layout "
                         f"(width 1, default units); this encoder has width {enc.cfg.width}, units {enc.cfg.units}")
    sd = tensors(load_weights(path, key, f"the {enc.cfg.backbone} encoder", check_hash=check_hash), path)
    conv = "input_layer.0.weight" if key == "ir_se50" else "conv1.weight"
    if conv in sd:
        sd = {**sd, conv: _widen(sd[conv], enc.cfg.input_nc)}
    if key == "ir_se50":
        mine = {k: v for k, v in sd.items() if k.startswith(("input_layer.", "body."))}
        load_into(enc, mine, "the IR-SE50 encoder body", path, allow_missing=("styles.",))
    else:
        offsets = dict(zip((1, 2, 3, 4), (0, 3, 7, 13)))  # first body index of each stage (3, 4, 6, 3 blocks)
        mine = {k: v for k, v in sd.items() if k.startswith(("conv1.", "bn1."))}
        for k, v in sd.items():
            if k.startswith("layer"):
                layer, idx, rest = k.split(".", 2)
                mine[f"body.{offsets[int(layer[5:])] + int(idx)}.{rest}"] = v
        load_into(enc, mine, "the ResNet34 encoder body", path, allow_missing=("styles.", "relu."))
    return f"encoder body initialised from {path}"


def _widen(w: torch.Tensor, in_ch: int) -> torch.Tensor:
    """A pretrained RGB input conv for ``in_ch`` channels: RGB weights first, N(0, 1) after."""
    if w.shape[1] == in_ch:
        return w
    out = torch.randn(w.shape[0], in_ch, *w.shape[2:])
    out[:, :w.shape[1]] = w
    return out
