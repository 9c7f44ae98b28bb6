"""Adaptive discriminator augmentation: the ``bgc`` pipeline of NVlabs stylegan2-ada-pytorch.

``AugmentPipe`` transforms each image of a batch independently; every transform
fires with probability ``p * multiplier``. Pixel blitting (x-flip, 90-degree
rotation, integer translation) and general geometric transforms (isotropic
scaling, rotation, anisotropic scaling, fractional translation) are composed
into one 3x3 matrix per sample, mapping output pixels to input pixels, and
executed in one resampling pass: reflect padding, 2x upsampling with the
orthogonal sym6 wavelet, bilinear sampling, 2x downsampling, crop. Colour
transforms (brightness, contrast, luma flip, hue rotation, saturation) are one
4x4 matrix per sample on homogeneous RGB. Everything is differentiable twice
with respect to the images (R1 through the augmentation). sym6 is not
linear-phase, so, as in NVlabs, a flip or a 90/180/270-degree rotation comes
with a shift of about 0.1 pixel; integer translations are exact.

Random numbers come from the global torch RNG on the images' device, in NVlabs'
order and shapes. Every enabled transform draws its values and then masks them
with ``p``, so RNG consumption does not depend on ``p``. One deliberate
difference: NVlabs resamples whenever a geometric multiplier is non-zero,
whatever ``p``; here the pass is skipped when every sample's matrix is exactly
the identity (always so at ``p = 0``), which returns the input exactly instead
of up to rounding and saves the most expensive step while ``p`` is still 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ops import upfirdn2d
from ops.grid_sample_gradfix import grid_sample

# Low-pass of the sym6 wavelet: orthogonal, so 2x up- then downsampling with it is
# the identity and only the resampling in between changes the image.
_SYM6 = [0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
         0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
         -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148]


@dataclass
class AugmentConfig:
    """Probability multipliers (0 disables a transform) and strengths; defaults are ``bgc``."""

    xflip: float = 1.0
    """Multiplier for horizontal flips."""
    rotate90: float = 1.0
    """Multiplier for rotations by a multiple of 90 degrees."""
    xint: float = 1.0
    """Multiplier for integer translation."""
    xint_max: float = 0.125
    """Range of integer translation, as a fraction of the image size."""
    scale: float = 1.0
    """Multiplier for isotropic scaling."""
    rotate: float = 1.0
    """Multiplier for arbitrary rotation (applied as a pre- and a post-rotation)."""
    aniso: float = 1.0
    """Multiplier for anisotropic scaling."""
    xfrac: float = 1.0
    """Multiplier for fractional translation."""
    scale_std: float = 0.2
    """Log2 standard deviation of isotropic scaling."""
    rotate_max: float = 1.0
    """Range of arbitrary rotation; 1 is the full circle."""
    aniso_std: float = 0.2
    """Log2 standard deviation of anisotropic scaling."""
    xfrac_std: float = 0.125
    """Standard deviation of fractional translation, as a fraction of the image size."""
    brightness: float = 1.0
    """Multiplier for brightness shifts."""
    contrast: float = 1.0
    """Multiplier for contrast scaling."""
    lumaflip: float = 1.0
    """Multiplier for luma flips (reflection along the grey axis)."""
    hue: float = 1.0
    """Multiplier for hue rotation (around the grey axis)."""
    saturation: float = 1.0
    """Multiplier for saturation scaling."""
    brightness_std: float = 0.2
    """Standard deviation of the brightness shift."""
    contrast_std: float = 0.5
    """Log2 standard deviation of contrast."""
    hue_max: float = 1.0
    """Range of hue rotation; 1 is the full circle."""
    saturation_std: float = 1.0
    """Log2 standard deviation of saturation."""


# ----------------------------------------------------------------------------
# Batched homogeneous matrices. Entries are numbers or per-sample tensors [N].

def _matrix(rows: list[list], device: torch.device) -> torch.Tensor:
    """[N, R, C] if any entry is a tensor [N], else one [R, C] matrix."""
    ref = next((e for row in rows for e in row if isinstance(e, torch.Tensor)), None)
    if ref is None:
        return torch.tensor(rows, dtype=torch.float32, device=device)
    elems = [e if isinstance(e, torch.Tensor) else torch.full_like(ref, float(e))
             for row in rows for e in row]
    return torch.stack(elems, dim=-1).reshape(*ref.shape, len(rows), len(rows[0]))


def _translate2d(tx, ty, device) -> torch.Tensor:
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], device)


def _scale2d(sx, sy, device) -> torch.Tensor:
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], device)


def _rotate2d(theta: torch.Tensor, device) -> torch.Tensor:
    c, s = torch.cos(theta), torch.sin(theta)
    return _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]], device)


def _translate3d(t: torch.Tensor, device) -> torch.Tensor:
    return _matrix([[1, 0, 0, t], [0, 1, 0, t], [0, 0, 1, t], [0, 0, 0, 1]], device)


def _scale3d(s: torch.Tensor, device) -> torch.Tensor:
    return _matrix([[s, 0, 0, 0], [0, s, 0, 0], [0, 0, s, 0], [0, 0, 0, 1]], device)


def _rotate3d(v: torch.Tensor, theta: torch.Tensor, device) -> torch.Tensor:
    """Rotation by ``theta`` around the unit axis ``v`` (Rodrigues)."""
    vx, vy, vz = v[0], v[1], v[2]
    s, c = torch.sin(theta), torch.cos(theta)
    cc = 1 - c
    return _matrix([[vx * vx * cc + c, vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0],
                    [vy * vx * cc + vz * s, vy * vy * cc + c, vy * vz * cc - vx * s, 0],
                    [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c, 0],
                    [0, 0, 0, 1]], device)


def _gate(value: torch.Tensor, prob: torch.Tensor, neutral: float) -> torch.Tensor:
    """``value`` for samples whose uniform draw falls below ``prob``, else ``neutral``.
    The draw happens whatever ``prob`` is, so RNG use does not depend on p."""
    keep = torch.rand([value.shape[0]] + [1] * (value.ndim - 1), device=value.device) < prob
    return torch.where(keep, value, torch.full_like(value, neutral))


# ----------------------------------------------------------------------------

class AugmentPipe(torch.nn.Module):
    """The bgc pipeline for [N, 1 or 3, H, W] images in [-1, 1]; ``p`` is a buffer
    (saved with the state dict) that the ADA controller moves."""

    def __init__(self, cfg: AugmentConfig | None = None):
        super().__init__()
        self.cfg = cfg or AugmentConfig()
        self.register_buffer("p", torch.zeros([], dtype=torch.float32))
        # A constant: not persistent, so checkpoints carry only p.
        self.register_buffer("Hz_geom", upfirdn2d.setup_filter(_SYM6), persistent=False)

    def set_p(self, value: float | torch.Tensor) -> None:
        """Sets the overall probability multiplier (no host sync for a tensor)."""
        if not isinstance(value, torch.Tensor) and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"augmentation p must be finite and >= 0, got {value!r}")
        with torch.no_grad():
            self.p.copy_(torch.as_tensor(value, dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"AugmentPipe expects images [N, 1 or 3, H, W], "
                             f"got {getattr(images, 'shape', images)}")
        dtype = images.dtype
        x = images.to(torch.float32)
        p = self.p.to(x.device)
        G_inv = self._geometric_matrix(x, p)
        # One host sync; NVlabs syncs here anyway (the padding is read back to the host).
        if G_inv is not None and not bool((G_inv == torch.eye(3, device=x.device)).all()):
            x = self._resample(x, G_inv)
        C = self._color_matrix(x, p)
        if C is not None:
            x = _apply_color(x, C)
        return x.to(dtype)

    def _geometric_matrix(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor | None:
        """Per-sample G_inv [N, 3, 3] (output pixel -> input pixel), or None if all are off.
        Each transform contributes its inverse on the right, in NVlabs' order."""
        c, n, dev = self.cfg, x.shape[0], x.device
        h, w = x.shape[2], x.shape[3]
        G = None

        def then(m: torch.Tensor) -> None:
            nonlocal G
            G = m if G is None else G @ m

        if c.xflip > 0:
            i = torch.floor(torch.rand([n], device=dev) * 2)
            i = _gate(i, c.xflip * p, 0.0)
            then(_scale2d(1 - 2 * i, 1, dev))  # self-inverse
        if c.rotate90 > 0:
            i = torch.floor(torch.rand([n], device=dev) * 4)
            i = _gate(i, c.rotate90 * p, 0.0)
            then(_rotate2d(math.pi / 2 * i, dev))  # inverse of a rotation by -90 * i degrees
        if c.xint > 0:
            t = (torch.rand([n, 2], device=dev) * 2 - 1) * c.xint_max
            t = _gate(t, c.xint * p, 0.0)
            then(_translate2d(-torch.round(t[:, 0] * w), -torch.round(t[:, 1] * h), dev))
        if c.scale > 0:
            s = torch.exp2(torch.randn([n], device=dev) * c.scale_std)
            s = _gate(s, c.scale * p, 1.0)
            then(_scale2d(1 / s, 1 / s, dev))
        # Rotation is split into a pre- and a post-rotation around the anisotropic
        # scaling, each with probability p_rot, so that P(pre or post) = rotate * p.
        p_rot = 1 - torch.sqrt((1 - c.rotate * p).clamp(0, 1))

        def rotation() -> None:
            theta = (torch.rand([n], device=dev) * 2 - 1) * math.pi * c.rotate_max
            then(_rotate2d(_gate(theta, p_rot, 0.0), dev))

        if c.rotate > 0:
            rotation()
        if c.aniso > 0:
            s = torch.exp2(torch.randn([n], device=dev) * c.aniso_std)
            s = _gate(s, c.aniso * p, 1.0)
            then(_scale2d(1 / s, 1 / (1 / s), dev))  # inverse of (s, 1 / s), rounded as composed
        if c.rotate > 0:
            rotation()
        if c.xfrac > 0:
            t = torch.randn([n, 2], device=dev) * c.xfrac_std
            t = _gate(t, c.xfrac * p, 0.0)
            then(_translate2d(-(t[:, 0] * w), -(t[:, 1] * h), dev))
        return G

    def _resample(self, x: torch.Tensor, G_inv: torch.Tensor) -> torch.Tensor:
        """Executes G_inv: pad, upsample 2x, bilinear sampling, downsample 2x, crop."""
        n, ch, h, w = x.shape
        dev = x.device
        taps_pad = self.Hz_geom.shape[0] // 4  # filter support, in input pixels, per side
        # Reflect-pad enough that every transformed corner (plus the filter support) is
        # covered, so no zero padding shows through; at most size - 1 (reflect's limit).
        cx, cy = (w - 1) / 2, (h - 1) / 2
        corners = _matrix([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], dev)
        cp = (G_inv @ corners.t())[:, :2, :].permute(1, 0, 2).flatten(1)  # [xy, N * corner]
        margin = torch.cat([-cp, cp]).max(dim=1).values  # [x0, y0, x1, y1]
        margin = margin + torch.tensor([taps_pad * 2 - cx, taps_pad * 2 - cy] * 2, device=dev)
        margin = margin.max(torch.zeros(4, device=dev))
        margin = margin.min(torch.tensor([w - 1, h - 1] * 2, dtype=torch.float32, device=dev))
        mx0, my0, mx1, my1 = margin.ceil().to(torch.int32).tolist()
        x = F.pad(x, [mx0, mx1, my0, my1], mode="reflect")
        G_inv = _translate2d((mx0 - mx1) / 2, (my0 - my1) / 2, dev) @ G_inv

        # Upsample, and move the matrix to the 2x grid. Input coordinate u lands near
        # 2u - 0.5 there (0.4 at low frequencies: sym6's delay), hence the half-pixel shift.
        x = upfirdn2d.upsample2d(x, self.Hz_geom, up=2)
        G_inv = _scale2d(2, 2, dev) @ G_inv @ _scale2d(1 / 2, 1 / 2, dev)
        G_inv = _translate2d(-0.5, -0.5, dev) @ G_inv @ _translate2d(0.5, 0.5, dev)

        # Sample the 2x image of the unpadded size plus the filter margin, in the
        # normalised [-1, 1] coordinates of affine_grid / grid_sample.
        shape = [n, ch, (h + taps_pad * 2) * 2, (w + taps_pad * 2) * 2]
        G_inv = (_scale2d(2 / x.shape[3], 2 / x.shape[2], dev) @ G_inv
                 @ _scale2d(1 / (2 / shape[3]), 1 / (2 / shape[2]), dev))
        grid = F.affine_grid(G_inv[:, :2, :], shape, align_corners=False)
        x = grid_sample(x, grid)
        # The flipped filter makes down(up(.)) the identity; the negative padding crops the margin.
        return upfirdn2d.downsample2d(x, self.Hz_geom, down=2, padding=-taps_pad * 2, flip_filter=True)

    def _color_matrix(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor | None:
        """Per-sample C [N, 4, 4] acting on [r, g, b, 1], or None if all are off.
        Each transform multiplies on the left, in NVlabs' order."""
        c, n, dev = self.cfg, x.shape[0], x.device
        rgb = x.shape[1] > 1  # hue and saturation mean nothing for one channel
        v = torch.tensor([1.0, 1.0, 1.0, 0.0], device=dev) / math.sqrt(3)  # luma (grey) axis
        vv = torch.outer(v, v)
        eye = torch.eye(4, device=dev)
        C = None

        def then(m: torch.Tensor) -> None:
            nonlocal C
            C = m if C is None else m @ C

        if c.brightness > 0:
            b = torch.randn([n], device=dev) * c.brightness_std
            then(_translate3d(_gate(b, c.brightness * p, 0.0), dev))
        if c.contrast > 0:
            s = torch.exp2(torch.randn([n], device=dev) * c.contrast_std)
            then(_scale3d(_gate(s, c.contrast * p, 1.0), dev))
        if c.lumaflip > 0:
            i = torch.floor(torch.rand([n, 1, 1], device=dev) * 2)
            i = _gate(i, c.lumaflip * p, 0.0)
            then(eye - 2 * vv * i)  # Householder reflection of the luma component
        if c.hue > 0 and rgb:
            theta = (torch.rand([n], device=dev) * 2 - 1) * math.pi * c.hue_max
            then(_rotate3d(v, _gate(theta, c.hue * p, 0.0), dev))
        if c.saturation > 0 and rgb:
            s = torch.exp2(torch.randn([n, 1, 1], device=dev) * c.saturation_std)
            s = _gate(s, c.saturation * p, 1.0)
            then(vv + (eye - vv) * s)  # scales the chroma, keeps the luma
        return C


def _apply_color(x: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    n, ch, h, w = x.shape
    x = x.reshape(n, ch, h * w)
    if ch == 3:
        x = C[:, :3, :3] @ x + C[:, :3, 3:]
    else:  # grey: the mean of the RGB rows, applied to r = g = b
        C = C[:, :3, :].mean(dim=1, keepdim=True)
        x = x * C[:, :, :3].sum(dim=2, keepdim=True) + C[:, :, 3:]
    return x.reshape(n, ch, h, w)
