"""Closed-form factorization (SeFa, Shen & Zhou 2021) of a generator's latent directions.

The style affines A_l of the chosen layers map w to styles s_l = A_l w + b_l. A
unit direction n moves the styles by A_l n, so the directions that move them most
are the top eigenvectors of sum_l A_l^T A_l = W^T W, with W the affine weights
stacked row-wise. As rosinality's ``closed_form_factorization.py``, the
effective (equalized-lr scaled) weights of the conv layers are used and the
tRGB affines are left out unless asked for; as genforce's SeFa, the layers can
be restricted to some W+ entries, and moving then changes only those entries.
Layers and their W+ entries come from the traced StyleSpace table.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.model_io.safe_pickle import torch_load
from trainer.networks.generator import Generator
from trainer.networks.stylespace import style_layers

FORMAT = "toonmix-sefa"


@dataclass
class Factors:
    """Directions in W, strongest first."""

    directions: torch.Tensor
    """[K, style_dim], orthonormal rows."""
    values: torch.Tensor
    """[K] eigenvalues of W^T W (squared singular values), descending."""
    w_indices: list[int] | None
    """The W+ entries whose layers were factorized (and which moving changes); None: all."""
    layers: list[str]
    """The style layers' module names whose affines were stacked."""

    def save(self, path: str | Path, **meta) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save({"format": FORMAT, "directions": self.directions, "values": self.values,
                    "w_indices": self.w_indices, "layers": self.layers, **meta}, tmp)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Factors:
        """Ours, or rosinality's ``factor.pt`` ({"ckpt", "eigvec": [style_dim, K] columns})."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no factor file; write one with `python -m launch.sefa --ckpt G.pt "
                                    f"--factors {path}`")
        try:
            obj = torch_load(path)
        except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:  # truncated or not a torch file
            raise ValueError(f"{path}: not a readable factor file ({type(e).__name__}: {e})") from None
        if isinstance(obj, dict) and obj.get("format") == FORMAT:
            return cls(obj["directions"].float(), obj["values"].float(), obj["w_indices"], list(obj["layers"]))
        if isinstance(obj, dict) and "eigvec" in obj:  # rosinality: columns, no eigenvalues kept
            vec = obj["eigvec"].float().t().contiguous()
            return cls(vec, torch.full((vec.shape[0],), float("nan")), None, [])
        keys = list(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path}: neither a toonmix factor file nor rosinality's (eigvec); found {keys}")


def affine_weights(G: Generator, w_indices: list[int] | None = None, trgb: bool = False
                   ) -> tuple[torch.Tensor, list[str]]:
    """W: the effective affine weights of the chosen style layers stacked [sum channels, style_dim]."""
    modules = dict(G.named_modules())
    chosen = [layer for layer in style_layers(G)
              if (trgb or layer.kind == "conv") and (w_indices is None or layer.w_index in w_indices)]
    if not chosen:
        raise ValueError(f"no style layer is driven by W+ entries {w_indices} (the generator has {G.n_latent})")
    mats = [modules[layer.name].conv.modulation for layer in chosen]
    return torch.cat([(m.weight * m.scale).detach().float() for m in mats]), [layer.name for layer in chosen]


def factorize(G: Generator, w_indices: list[int] | None = None, trgb: bool = False) -> Factors:
    """The eigenvectors of W^T W, strongest first."""
    W, names = affine_weights(G, w_indices, trgb)
    values, vectors = torch.linalg.eigh(W.double().t() @ W.double())  # ascending
    return Factors(vectors.flip(1).t().float().contiguous(), values.flip(0).float(), w_indices, names)


def move(ws: torch.Tensor, factors: Factors, index: int, degree: float) -> torch.Tensor:
    """W+ [N, n_latent, D] moved by ``degree`` along direction ``index`` (only the factorized entries)."""
    if not 0 <= index < factors.directions.shape[0]:
        raise ValueError(f"direction {index} out of range (0..{factors.directions.shape[0] - 1})")
    out = ws.clone()
    step = degree * factors.directions[index].to(ws.device, ws.dtype)
    entries = range(ws.shape[1]) if factors.w_indices is None else factors.w_indices
    for i in entries:
        out[:, i] += step
    return out
