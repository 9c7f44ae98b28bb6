"""Several generators side by side: one image sheet and one FID/KID table against the same data.

``launch.swap_sweep`` (G_swap at several swap resolutions) and ``launch.compare``
(trained variants) both reduce to this. Every generator draws the same z (and
noise) per sample index, so the sheet's columns and the FID samples differ only
by the generator; the reference statistics are extracted (or read from the
cache) once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from datasets.imageio import save_png, to_uint8
from trainer.networks.generator import Generator


def seed_latents(seeds: list[int], style_dim: int) -> torch.Tensor:
    """z per seed as launch.generate draws it (NumPy RandomState(seed).randn)."""
    return torch.from_numpy(np.stack([np.random.RandomState(s).randn(style_dim) for s in seeds])).float()


@torch.no_grad()
def sheet(gens: dict[str, Generator], ws: dict[str, torch.Tensor], path: str | Path) -> np.ndarray:
    """One row per generator: ``ws[name]`` [N, n_latent, D] rendered with its const noise; saved as PNG."""
    rows = []
    for name, G in gens.items():
        img = G.synthesis(ws[name].to(G.input.input.device), noise_mode="const").img
        rows.append(np.concatenate(list(to_uint8(img.cpu())), axis=1))
    grid = np.concatenate(rows, axis=0)
    save_png(grid, path)
    return grid


def fid_table(gens: dict[str, Generator], real, detector, det_sha: str, dist, cfg, n_gen: int, seed: int,
              truncation: float, cache_dir: str | None) -> dict[str, dict] | None:
    """FID (and KID) of every generator against ``real`` (a Source), on every rank; the table on main."""
    from eval.features import GeneratorSource
    from eval.fid import compare, measure

    real_side = measure(real, detector, dist, cfg, det_sha, cache_dir, desc="real")
    sides = {name: measure(GeneratorSource(G, n_gen, seed, truncation, "random", name=name), detector, dist, cfg,
                           det_sha, None, desc=name) for name, G in gens.items()}
    if not dist.is_main:
        return None
    return {name: compare(real_side, side, cfg) for name, side in sides.items()}


def write_table(rows: dict[str, dict], out: Path, title: str, first: str, extra: dict) -> None:
    """<out>.json (rows and settings) and <out>.md (a Markdown table), each atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", f"| {first} | FID | KID | real / generated |", "| --- | --- | --- | --- |"]
    for name, r in rows.items():
        spread = "" if r.get("kid_std") is None else f" ± {r['kid_std']:.2g}"  # None: undefined, see kid_std_note
        kid = f"{r['kid']:.4g}{spread}" if "kid" in r else "n/a"
        lines.append(f"| {name} | {r['fid']:.4g} | {kid} | {r['n_real']} / {r['n_fake']} |")
    for suffix, text in ((".json", json.dumps({"rows": rows, **extra}, indent=1) + "\n"),
                         (".md", "\n".join(lines) + "\n")):
        tmp = out.with_name(f".{out.name}{suffix}.tmp")
        tmp.write_text(text)
        tmp.replace(out.with_suffix(suffix))
