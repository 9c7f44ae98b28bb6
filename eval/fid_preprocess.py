"""Resizing and scaling images for the FID Inception, as the reference implementations do.

FID values are only comparable when images reach the network the same way, so each
reference's preprocessing is reproduced exactly; all take uint8 images [N, 3, H, W]
and return float32 [N, 3, 299, 299] in the network range:

- ``"tf"``: NVIDIA's detector, the original TF FID code and torch-fidelity. TF1's legacy bilinear
  resize (output pixel i samples input coordinate ``i * in / 299``, neighbours
  clamped to the last pixel, no antialiasing), then ``(x - 128) / 128``.
- ``"clean"``: clean-fid. PIL bicubic on each channel as a float image (mode "F"),
  clipped to [0, 255], then ``(x - 128) / 128``. Runs on the CPU.
- ``"torch-bilinear"``: pytorch-fid. ``x / 255``, ``F.interpolate`` bilinear with
  ``align_corners=False``, then ``2x - 1``.

``quantize`` turns generator output in [-1, 1] into the uint8 images these expect,
truncating like NVIDIA's metrics; ``FIDDetector`` runs preprocessing and network
together in full float32.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

MODES = ("tf", "clean", "torch-bilinear")
SIZE = 299


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 in [0, 255], got {images.dtype} "
                        "(generator output in [-1, 1]: pass it through quantize() first)")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"images must be [N, 3, H, W] with H, W > 0, got {list(images.shape)}")


def _resize_tf(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    if (h, w) == (SIZE, SIZE):
        return x
    # NVIDIA's detector: with align_corners=False, output pixel i samples input pixel
    # ((2i + 1) / 299 + shift) * in / 2 - 1 / 2; the shift 1/in - 1/299 turns that into
    # i * in / 299, TF1's legacy (half_pixel_centers=False) coordinate. "border" padding
    # clamps it to the last pixel as TF does. Same float32 arithmetic as NVIDIA's code.
    theta = torch.eye(2, 3, device=x.device, dtype=torch.float32)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / SIZE
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / SIZE
    theta = theta.unsqueeze(0).repeat(n, 1, 1)
    grid = F.affine_grid(theta, [n, c, SIZE, SIZE], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _resize_pil_bicubic(images: torch.Tensor) -> torch.Tensor:
    arr = images.cpu().numpy()
    out = np.empty((arr.shape[0], arr.shape[1], SIZE, SIZE), dtype=np.float32)
    for i in range(arr.shape[0]):
        for ch in range(arr.shape[1]):
            # A 2-D float32 array becomes a float ("F") image, which keeps PIL from rounding
            # the bicubic result to uint8: the point of clean-fid's resize.
            img = Image.fromarray(arr[i, ch].astype(np.float32))
            out[i, ch] = np.asarray(img.resize((SIZE, SIZE), Image.Resampling.BICUBIC)).clip(0, 255)
    return torch.from_numpy(out).to(images.device)


def preprocess(images: torch.Tensor, mode: str) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float32 [N, 3, 299, 299] in the network range, on the input's device."""
    _check_images(images)
    if mode == "tf":
        return (_resize_tf(images.to(torch.float32)) - 128) / 128
    if mode == "clean":
        return (_resize_pil_bicubic(images) - 128) / 128
    if mode == "torch-bilinear":
        x = F.interpolate(images.to(torch.float32) / 255, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        return 2 * x - 1
    raise ValueError(f"unknown FID preprocessing mode {mode!r}; choose one of {MODES}")


def quantize(img: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] (float) -> uint8, truncating like NVIDIA's metrics."""
    if not isinstance(img, torch.Tensor) or not img.is_floating_point():
        raise TypeError(f"quantize expects a float tensor in [-1, 1], got "
                        f"{img.dtype if isinstance(img, torch.Tensor) else type(img).__name__}")
    return (img * 127.5 + 128).clamp(0, 255).to(torch.uint8)


class FIDDetector(nn.Module):
    """uint8 images [N, 3, H, W] -> float32 [N, 2048] features of ``network`` after ``mode``.

    The network always runs in float32 with TF32 off (both flags restored afterwards)
    and outside autocast: reduced-precision convolutions shift FID by more than the
    differences between implementations that the modes exist to reproduce.
    """

    def __init__(self, network: nn.Module, mode: str = "tf"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown FID preprocessing mode {mode!r}; choose one of {MODES}")
        self.network = network.float().eval()
        self.mode = mode

    def train(self, mode: bool = True) -> FIDDetector:
        # FID features are defined with BatchNorm's stored statistics: never train mode.
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        param = next(self.network.parameters(), None)
        if param is not None:
            images = images.to(param.device)
        x = preprocess(images, self.mode)
        flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        try:
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            with torch.autocast(device_type=x.device.type, enabled=False):
                features = self.network(x)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
        return features.float()
