"""Encoder quality per refinement pass: L2, LPIPS, identity similarity and MS-SSIM.

Every image is inverted with fixed noise; each pass's reconstruction is
compared with the input. Means are over images (each image counts once).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable

import torch
from torch import nn

from datasets.errors import DataError
from eval.msssim import MS_SSIM_WEIGHTS, fitting_scales, ms_ssim
from trainer.networks.restyle import ReStyle


@torch.no_grad()
def evaluate(net: ReStyle, batches: Iterable[tuple[list[str], torch.Tensor]], n_iters: int,
             lpips: nn.Module | None = None, face_id: nn.Module | None = None,
             device: torch.device | str = "cpu", progress: bool = True) -> dict:
    """{"images": N, "passes": [{"pass": t, "l2": ..., "lpips": ..., "id_similarity": ..., "ms_ssim": ...}]}."""
    sums: list[dict[str, float]] = [{} for _ in range(n_iters)]
    n, start = 0, time.time()
    for _, x in batches:
        x = x.to(device)
        for t, p in enumerate(net.invert(x, n_iters)):
            y = p.image.clamp(-1, 1)
            values = {"l2": (y - x).square().mean(dim=(1, 2, 3)), "ms_ssim": ms_ssim(y, x)}
            if lpips is not None:
                values["lpips"] = lpips(y, x)
            if face_id is not None:
                values["id_similarity"] = (face_id(y) * face_id(x)).sum(1)
            for k, v in values.items():
                sums[t][k] = sums[t].get(k, 0.0) + float(v.double().sum())
        n += x.shape[0]
        if progress:
            print(f"\revaluated {n} images ({rate_text(n, time.time() - start)})", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    if n == 0:
        raise DataError("no readable images to evaluate")
    side = net.size
    return {"images": n, "size": side, "ms_ssim_scales": min(len(MS_SSIM_WEIGHTS), fitting_scales(side)),
            "passes": [{"pass": t + 1, **{k: v / n for k, v in s.items()}} for t, s in enumerate(sums)]}


def rate_text(n: int, seconds: float) -> str:
    """Progress speed: images per second, or seconds per image when slower than one a second
    (a 1-decimal rate would read 0.0 img/s on a CPU that takes seconds per image)."""
    seconds = max(seconds, 1e-9)
    if n <= 0:
        return f"0 images in {seconds:.1f} s"
    rate = n / seconds
    return f"{rate:.1f} img/s" if rate >= 1 else f"{seconds / n:.1f} s/img"
