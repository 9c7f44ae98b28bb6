"""ArcFace identity features, as ReStyle's ``IDLoss`` computes them.

ReStyle's images reach the loss at 256 px (its encoder pools the generator's
output to 256); the face crop ``[35:223, 32:220]`` is in those pixel units,
so other sizes are pooled to 256 first. The crop is then pooled to the
backbone's 112 px and embedded by IR-SE50 (``model_ir_se50.pth``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from . import irse
from .similarity import FrozenNet, freeze, similarity_loss
from .weights import WeightsError, load_into, load_weights, tensors

__all__ = ["CROP", "FaceID", "face_crop", "similarity_loss"]

SIZE = 256
CROP = (slice(35, 223), slice(32, 220))  # rows, columns at 256 px


def face_crop(x: torch.Tensor, out_size: int = 112) -> torch.Tensor:
    """[N, 3, H, W] -> the ArcFace input [N, 3, out_size, out_size]."""
    if tuple(x.shape[-2:]) != (SIZE, SIZE):
        x = F.adaptive_avg_pool2d(x, SIZE)
    return F.adaptive_avg_pool2d(x[:, :, CROP[0], CROP[1]], out_size)


class FaceID(FrozenNet):
    """Images [N, 3, H, W] in [-1, 1] -> unit-norm identity embeddings [N, 512]."""

    def __init__(self, units: tuple[int, ...] = irse.UNITS[50], width: float = 1.0, embedding: int = 512,
                 input_size: int = 112):
        super().__init__()
        self.input_size = input_size
        self.net = irse.IRSEBackbone(input_size, units, width, embedding)
        freeze(self)

    @classmethod
    def from_file(cls, path: str | Path | None, check_hash: bool = True) -> FaceID:
        what = "the identity loss (ArcFace IR-SE50)"
        sd = tensors(load_weights(path, "ir_se50", what, check_hash=check_hash), path)
        try:
            arch = irse.arch_from_state(sd)
        except KeyError as e:
            raise WeightsError(f"{path}: not an IR-SE state dict (no {e})") from e
        if "embedding" not in arch:
            raise WeightsError(f"{path}: IR-SE state dict without output_layer.*; an encoder body, "
                               "not the ArcFace network")
        model = cls(arch["units"], arch["width"], arch["embedding"], arch["input_size"])
        load_into(model.net, sd, what, path)
        return model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(face_crop(x, self.input_size))
