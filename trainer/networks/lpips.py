"""LPIPS v0.1 (Zhang et al. 2018) as the ``lpips`` package computes it, on AlexNet or VGG16.

The feature networks keep torchvision's key layout (``features.N.*``) so the
torchvision files load as they are (their ``classifier.*`` is ignored); the
linear heads keep the package's layout (``lin{i}.model.1.weight``, [1, C, 1, 1])
so its ``alex.pth`` / ``vgg.pth`` load as they are. Inputs are RGB in [-1, 1].
The result is one distance per image [N] (the package's [N, 1, 1, 1] squeezed),
not ReStyle's batch mean, so callers can weight or log per image.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .similarity import FrozenNet, freeze
from .weights import load_into, load_weights, tensors

# torchvision's features cfgs: an int is a 3x3 conv (VGG) / "M" a max-pool.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

NETS = {
    # Indices of the ReLUs whose outputs the package taps (its slice boundaries).
    "alex": {"taps": (1, 4, 7, 9, 11), "channels": (64, 192, 384, 256, 256),
             "backbone": "alexnet", "lin": "lpips_alex"},
    "vgg": {"taps": (3, 8, 15, 22, 29), "channels": (64, 128, 256, 512, 512),
            "backbone": "vgg16", "lin": "lpips_vgg"},
}
# The smallest side for which every tap still has at least one pixel (the
# package has no check of its own and fails deep inside a convolution).
MIN_SIZE = {"alex": 31, "vgg": 16}


def alexnet_features() -> nn.Sequential:
    """torchvision ``alexnet().features`` (ReLUs not in place: their outputs are tapped)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))


def vgg16_features() -> nn.Sequential:
    """torchvision ``vgg16().features`` (configuration D, no batch norm)."""
    layers: list[nn.Module] = []
    prev = 3
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(prev, int(v), 3, padding=1), nn.ReLU()]
            prev = int(v)
    return nn.Sequential(*layers)


class FeatureNet(nn.Module):
    """The convolutional part of a torchvision classifier, returning the tapped activations."""

    def __init__(self, net: str):
        super().__init__()
        self.features = alexnet_features() if net == "alex" else vgg16_features()
        self.taps = NETS[net]["taps"]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features[: self.taps[-1] + 1]):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out


class LinLayer(nn.Module):
    """The package's ``NetLinLayer``: dropout (inactive in eval) then a 1x1 conv, no bias;
    the dropout keeps the conv at index 1 so the file's keys match."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LinLayers(nn.Module):
    """``lin0`` ... ``lin4`` as direct children: the state-dict layout of the package's files."""

    def __init__(self, channels: tuple[int, ...]):
        super().__init__()
        for i, c in enumerate(channels):
            self.add_module(f"lin{i}", LinLayer(c))

    def __getitem__(self, i: int) -> LinLayer:
        return getattr(self, f"lin{i}")


def normalize_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """The package's ``normalize_tensor``: eps added to the norm, not clamped under it.

    In float32 whatever the autocast dtype: VGG activations above 256 overflow when
    squared in float16, and 1e-10 underflows there, turning all-zero ReLU columns into NaN.
    """
    x = x.float()
    return x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + eps)


class LPIPS(FrozenNet):
    """LPIPS distance: ``LPIPS(net)(x, y)`` -> [N] for images in [-1, 1] of the same shape."""

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in NETS:
            raise ValueError(f"LPIPS net must be one of {sorted(NETS)}, got {net!r}")
        self.net_name = net
        # Buffers (not persistent): constants of the method, not part of any weight file.
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.net = FeatureNet(net)
        self.lins = LinLayers(NETS[net]["channels"])
        freeze(self)

    @classmethod
    def from_files(cls, net: str, backbone_path: str | Path | None, lin_path: str | Path | None,
                   check_hash: bool = True) -> LPIPS:
        """Loads torchvision's ``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth`` and the
        package's ``alex.pth`` / ``vgg.pth``."""
        model = cls(net)
        spec = NETS[net]
        what = f"LPIPS ({net})"
        sd = tensors(load_weights(backbone_path, spec["backbone"], what, check_hash=check_hash), backbone_path)
        load_into(model.net, sd, f"{what} feature network", backbone_path, allow_unexpected=("classifier.",))
        sd = tensors(load_weights(lin_path, spec["lin"], what, check_hash=check_hash), lin_path)
        load_into(model.lins, sd, f"{what} linear layers", lin_path)
        return model

    def _check(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS needs two RGB batches [N, 3, H, W] of one shape, got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
        if min(x.shape[-2:]) < MIN_SIZE[self.net_name]:
            raise ValueError(f"LPIPS ({self.net_name}) needs images of at least {MIN_SIZE[self.net_name]} px "
                             f"a side, got {tuple(x.shape[-2:])}")

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._check(x, y)
        # Two passes, as the package does: a shared batch could let a backend pick
        # batch-dependent kernels, and LPIPS(x, x) must stay exactly 0.
        fx = self.net((x - self.shift) / self.scale)
        fy = self.net((y - self.shift) / self.scale)
        # Back to the input dtype so a half-precision copy of the network still runs.
        per_tap = [self.lins[i](((normalize_channels(a) - normalize_channels(b)) ** 2).to(x.dtype))
                   .mean(dim=(1, 2, 3)) for i, (a, b) in enumerate(zip(fx, fy))]
        return torch.stack(per_tap).sum(dim=0)
