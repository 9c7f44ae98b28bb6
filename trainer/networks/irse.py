"""IR-SE ResNets (ArcFace, InsightFace) in the layout of ``model_ir_se50.pth``.

The same blocks serve twice: the ArcFace network of the identity loss
(``IRSEBackbone`` at 112 px, an L2-normalised 512-d embedding) and the body of
the ReStyle-pSp encoder. Key names follow the public file (TreB1eN's
InsightFace_Pytorch, as pSp/ReStyle load it): ``input_layer.*``, ``body.N.*``
with ``shortcut_layer``/``res_layer``, ``output_layer.*``. ``width`` and
``units`` shrink the network for tests; the public file is width 1, units
(3, 4, 14, 3) (IR-SE50).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

UNITS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
STAGE_CHANNELS = (64, 128, 256, 512)


@dataclass(frozen=True)
class Unit:
    in_ch: int
    depth: int
    stride: int


def stage_units(units: tuple[int, ...] = UNITS[50], width: float = 1.0) -> list[Unit]:
    """The bottleneck units of the body: the first unit of each stage halves the resolution."""
    chans = [max(1, int(c * width)) for c in STAGE_CHANNELS]
    out, prev = [], chans[0]
    for n, ch in zip(units, chans):
        out += [Unit(prev, ch, 2)] + [Unit(ch, ch, 1) for _ in range(n - 1)]
        prev = ch
    return out


class SEModule(nn.Module):
    """Squeeze-and-excitation with 1x1 convolutions (no bias), reduction 16."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        mid = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, mid, 1, bias=False)
        self.fc2 = nn.Conv2d(mid, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class BottleneckIRSE(nn.Module):
    """BN-conv-PReLU-conv-BN-SE with a max-pool (same width) or conv-BN shortcut."""

    def __init__(self, in_ch: int, depth: int, stride: int):
        super().__init__()
        if in_ch == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_ch, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_ch), nn.Conv2d(in_ch, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth), SEModule(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def make_body(units: tuple[int, ...] = UNITS[50], width: float = 1.0) -> nn.Sequential:
    return nn.Sequential(*[BottleneckIRSE(u.in_ch, u.depth, u.stride) for u in stage_units(units, width)])


def input_layer(in_ch: int, width: float = 1.0) -> nn.Sequential:
    ch = max(1, int(STAGE_CHANNELS[0] * width))
    return nn.Sequential(nn.Conv2d(in_ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch), nn.PReLU(ch))


class IRSEBackbone(nn.Module):
    """ArcFace IR-SE: 112x112 RGB in [-1, 1] -> L2-normalised embedding [N, 512]."""

    def __init__(self, input_size: int = 112, units: tuple[int, ...] = UNITS[50], width: float = 1.0,
                 embedding: int = 512, drop_ratio: float = 0.6):
        super().__init__()
        if input_size % 16:
            raise ValueError(f"IR-SE input size must divide by 16, got {input_size}")
        last = max(1, int(STAGE_CHANNELS[-1] * width))
        side = input_size // 16
        self.input_layer = input_layer(3, width)
        self.body = make_body(units, width)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(last), nn.Dropout(drop_ratio), nn.Flatten(),
                                          nn.Linear(last * side * side, embedding), nn.BatchNorm1d(embedding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.output_layer(self.body(self.input_layer(x))), dim=1)


def arch_from_state(sd: dict[str, torch.Tensor]) -> dict:
    """``units``, ``width`` and (when present) ``embedding``/``input_size`` of an IR-SE state dict."""
    ch0 = sd["input_layer.0.weight"].shape[0]
    width = ch0 / STAGE_CHANNELS[0]
    depths = []
    i = 0
    while f"body.{i}.res_layer.1.weight" in sd:
        depths.append(sd[f"body.{i}.res_layer.1.weight"].shape[0])
        i += 1
    units, prev = [], None
    for d in depths:
        if d != prev:
            units.append(0)
            prev = d
        units[-1] += 1
    # A width where two stages collapse to the same channel count is not one this code writes.
    out = {"units": tuple(units), "width": width}
    if "output_layer.3.weight" in sd:
        lin = sd["output_layer.3.weight"]
        last = sd["output_layer.0.weight"].shape[0]
        out["embedding"] = lin.shape[0]
        out["input_size"] = int(round((lin.shape[1] / last) ** 0.5)) * 16
    return out
