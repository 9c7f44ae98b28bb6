"""ReStyle-pSp: iterative refinement of W+ with an encoder and a frozen generator.

Pass 0 feeds the image beside the average image (the generator's output for
``latent_avg``) and adds ``latent_avg`` to the predicted residual; pass t > 0
feeds the image beside the previous reconstruction and adds the previous W+.
Reconstructions are average-pooled to the encoder's input size, as ReStyle's
``face_pool`` does. The submodule names give ReStyle's ``encoder.*`` and
``decoder.*`` state-dict keys.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .encoders import Encoder
from .generator import Generator


class Pass(NamedTuple):
    image: torch.Tensor
    """Reconstruction at the encoder's input size [N, 3, S, S]."""
    latent: torch.Tensor
    """W+ [N, n_styles, style_dim]."""


class ReStyle(nn.Module):
    def __init__(self, encoder: Encoder, decoder: Generator, latent_avg: torch.Tensor | None = None):
        super().__init__()
        if encoder.cfg.n_styles != decoder.n_latent or encoder.cfg.style_dim != decoder.style_dim:
            raise ValueError(f"the encoder predicts {encoder.cfg.n_styles}x{encoder.cfg.style_dim} W+ but the "
                             f"{decoder.size}px generator takes {decoder.n_latent}x{decoder.style_dim}: "
                             "a generator of another resolution than the encoder was trained for")
        self.encoder, self.decoder = encoder, decoder
        for p in decoder.parameters():
            p.requires_grad_(False)
        if latent_avg is None:
            if torch.isnan(decoder.w_avg).any():
                raise ValueError("the generator has no w_avg (latent_avg): load it from a checkpoint that "
                                 "stores one, or call update_w_avg() first")
            latent_avg = decoder.w_avg.detach().clone()
        if latent_avg.ndim == 1:
            latent_avg = latent_avg[None].repeat(decoder.n_latent, 1)
        self.register_buffer("latent_avg", latent_avg.float().clone())
        self.register_buffer("avg_image", torch.zeros(3, encoder.cfg.input_size, encoder.cfg.input_size))
        self.autocast: torch.dtype | None = None
        """Reduced precision for the encoder only (the generator keeps its own precision)."""
        self.refresh_average_image()

    @property
    def size(self) -> int:
        return self.encoder.cfg.input_size

    def train(self, mode: bool = True) -> "ReStyle":
        super().train(mode)
        self.decoder.eval()  # frozen: never in training mode
        return self

    @torch.no_grad()
    def refresh_average_image(self) -> None:
        """The first pass's companion image: the generator at latent_avg, fixed noise."""
        img = self.decoder.synthesis(self.latent_avg[None].to(self.avg_image.device), noise_mode="const").img
        self.avg_image.copy_(self.pool(img)[0])

    def pool(self, img: torch.Tensor) -> torch.Tensor:
        return img if img.shape[-1] == self.size else F.adaptive_avg_pool2d(img, (self.size, self.size))

    def step(self, x: torch.Tensor, prev: Pass | None, noise_mode: str = "random") -> Pass:
        """One refinement pass from ``prev`` (None: the first pass)."""
        if prev is None:
            companion = self.avg_image[None].expand(x.shape[0], -1, -1, -1)
            base = self.latent_avg[None]
        else:
            companion, base = prev.image, prev.latent
        with torch.autocast(x.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
            codes = self.encoder(torch.cat([x, companion.to(x.dtype)], dim=1))
        latent = codes.float() + base
        img = self.decoder.synthesis(latent, noise_mode=noise_mode).img
        return Pass(self.pool(img), latent)

    @torch.no_grad()
    def invert(self, x: torch.Tensor, n_iters: int = 5, noise_mode: str = "const") -> list[Pass]:
        """Every pass's reconstruction and W+ for images ``x`` in [-1, 1] at the input size."""
        out: list[Pass] = []
        prev = None
        for _ in range(n_iters):
            prev = self.step(x, prev, noise_mode)
            out.append(prev)
        return out
