"""MoCo-v2 ResNet-50 features, as ReStyle's ``MocoLoss`` computes them.

ReStyle keeps the query encoder of ``moco_v2_800ep_pretrain.pt``
(``state_dict['module.encoder_q.*']``) without its projection head (``fc``),
resizes the images with ``F.interpolate(x, size=224)`` -- the default mode,
nearest, kept here so losses match ReStyle's -- feeds them in [-1, 1] without
ImageNet normalisation, and L2-normalises the pooled features.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import resnet
from .similarity import FrozenNet, freeze, similarity_loss
from .weights import WeightsError, load_into, load_weights

PREFIX = "module.encoder_q."

__all__ = ["MocoFeatures", "encoder_q_state", "similarity_loss"]


def encoder_q_state(obj: dict, path: str | Path) -> dict[str, torch.Tensor]:
    """The query encoder's tensors with the prefix stripped, projection head left out."""
    sd = obj.get("state_dict", obj)
    if not isinstance(sd, dict):
        raise WeightsError(f"{path}: 'state_dict' is a {type(sd).__name__}, not a state dict")
    out = {k[len(PREFIX):]: v for k, v in sd.items()
           if k.startswith(PREFIX) and not k.startswith(PREFIX + "fc.") and isinstance(v, torch.Tensor)}
    if not out:
        raise WeightsError(f"{path}: no '{PREFIX}*' tensors; not a MoCo checkpoint "
                           f"(first keys: {list(sd)[:6]})")
    return out


class MocoFeatures(FrozenNet):
    """Images [N, 3, H, W] in [-1, 1] -> unit-norm MoCo features [N, D] (D = 2048 for ResNet-50)."""

    def __init__(self, depth: int = 50, width: float = 1.0, size: int = 224):
        super().__init__()
        self.size = size
        self.net = resnet.ResNet(depth, width)
        self.net.fc = nn.Identity()  # the projection head is not loaded; no random layer is left behind
        freeze(self)

    @classmethod
    def from_file(cls, path: str | Path | None, size: int = 224, check_hash: bool = True) -> MocoFeatures:
        what = "the MoCo feature network"
        sd = encoder_q_state(load_weights(path, "moco_v2", what, check_hash=check_hash), path)
        try:
            arch = resnet.arch_from_state(sd)
        except (KeyError, ValueError) as e:
            raise WeightsError(f"{path}: the MoCo query encoder is not a torchvision ResNet ({e})") from e
        model = cls(arch["depth"], arch["width"], size)
        load_into(model.net, sd, what, path)
        return model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net.embed(F.interpolate(x, size=self.size)), dim=1)
