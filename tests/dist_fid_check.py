"""Run by test_fid under torchrun (1, 2 or 3 processes, gloo): features of every source kind.

A small fixed convolutional detector stands in for Inception (the property
under test is the sharing, gathering and ordering, not the network): each
source's features are extracted on every rank, gathered on the main process
and written with their statistics to <out>/<source>.npz.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from eval.features import FolderSource, GeneratorSource, ShardSource, extract
from eval.frechet import feature_stats
from trainer.model_io import load_checkpoint
from trainer.run.distributed import Dist


class SmallDetector(nn.Module):
    """uint8 images of any size -> 64 features, the same weights on every rank."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(2), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float() / 127.5 - 1)


def main(out: Path, shards: str, generator: str, folder: str, batch: int) -> None:
    dist = Dist()
    det = SmallDetector().eval()
    G = load_checkpoint(generator).generator().eval()
    sources = {"shards": ShardSource(shards), "generator": GeneratorSource(G, 11, seed=3),
               "folder": FolderSource(folder)}
    for name, src in sources.items():
        with torch.no_grad():
            feats = extract(src, det, dist, batch=batch, progress=False)
        if dist.is_main:
            s = feature_stats(feats)
            np.savez(out / f"{name}.npz", features=feats, mu=s.mu, sigma=s.sigma,
                     skipped=np.int64(sum(src.skipped.values())))
    dist.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
