"""Configuration of triplet fine-tuning of a blended generator (``launch.train_triplet``).

Fine-Tooning's method: the blended generator (source below model.swap_res,
target above) is trained so that the face embedding of its image of z moves
towards that of the source (photo) generator's image of the same z and away from
that of a more cartoon-like blend (target from model.negative_swap_res up).
Defaults are that project's (lr 1e-5, Adam); the distance is the cosine
distance 1 - cos, the margin that of torch's TripletMarginWithDistanceLoss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from trainer.run.start import RunConfig
from trainer.run.zero import DistConfig, check_dist_config


@dataclass
class TripletRunConfig(RunConfig):
    """Where a triplet run writes, how long it lasts and how often it reports."""

    desc: str = "triplet"
    """Suffix of the numbered run folder name (00003-<desc>)."""
    total_kimg: float = 20.0
    """Stop after this many thousand samples (all ranks together); a budget, not a recipe."""
    tick_kimg: float = 0.5
    """Report, write the grid and count checkpoints every this many kimg."""
    grid_size: int = 8
    """Columns of the grid (each: positive, trained blend, negative)."""


@dataclass
class TripletModelConfig:
    """The three generators."""

    source: str | None = None
    """The photo (FFHQ) generator: the positives, the mapping network and the blend's low layers."""
    target: str | None = None
    """The cartoon (fine-tuned) generator: the blend's high layers."""
    swap_res: int = 32
    """The trained blend takes the target's layers from this resolution up."""
    negative_swap_res: int = 16
    """The negative (more cartoon-like) blend takes the target's layers from here up (one more block)."""
    train: Literal["target_layers", "synthesis"] = "target_layers"
    """Which blend parameters train: those from the target (at or above swap_res) or all of
    synthesis. The mapping network never trains: it is the source's, shared by all three."""
    ops_impl: Literal["auto", "cuda", "ref"] = "auto"
    """Fused-op implementation of the generators."""


@dataclass
class TripletWeightsConfig:
    """The face-embedding network (a local file; nothing is downloaded)."""

    face: str | None = None
    """model_ir_se50.pth (ArcFace IR-SE50); default: that file in dir."""
    dir: str | None = None
    """Folder holding the public files under their public names."""
    check_hashes: bool = True
    """Verify files against the hash in their names (where the name carries one)."""


@dataclass
class TripletLossConfig:
    """The triplet loss over face embeddings."""

    margin: float = 1.0
    """max(0, d(a, p) - d(a, n) + margin) with d = 1 - cosine similarity (torch's default margin)."""
    truncation: float = 0.7
    """Truncation psi of the sampled latents (towards the source's w_avg)."""


@dataclass
class TripletOptimConfig:
    """Batch and Adam."""

    batch: int = 8
    """Global batch (all ranks); must divide by the number of processes."""
    lr: float = 1e-5
    """Adam learning rate (Fine-Tooning: 1e-5)."""
    betas: list[float] = field(default_factory=lambda: [0.0, 0.99])
    """Adam betas (StyleGAN2's)."""


@dataclass
class TripletConfig:
    """Everything a triplet fine-tuning run needs (no data: the generators make the samples)."""

    run: TripletRunConfig = field(default_factory=TripletRunConfig)
    """Run folder, length, reporting and checkpoints."""
    model: TripletModelConfig = field(default_factory=TripletModelConfig)
    """The generators and what trains."""
    weights: TripletWeightsConfig = field(default_factory=TripletWeightsConfig)
    """The face-embedding network."""
    loss: TripletLossConfig = field(default_factory=TripletLossConfig)
    """Loss settings."""
    optim: TripletOptimConfig = field(default_factory=TripletOptimConfig)
    """Optimisation."""
    dist: DistConfig = field(default_factory=DistConfig)
    """Gradient and optimizer-state distribution: the trainer's all-reduce or DeepSpeed ZeRO 1/2."""

    def __post_init__(self) -> None:
        m = self.model
        pow2 = all(r >= 4 and r & (r - 1) == 0 for r in (m.swap_res, m.negative_swap_res))
        checks = [
            (self.optim.batch >= 1 and self.optim.lr > 0, "optim.batch must be >= 1 and optim.lr > 0"),
            (pow2, "model.swap_res and model.negative_swap_res must be powers of two >= 4"),
            (m.negative_swap_res < m.swap_res, "model.negative_swap_res must be below model.swap_res "
                                               "(the negative takes more of the target)"),
            (self.loss.margin >= 0 and 0 < self.loss.truncation <= 1, "loss.margin >= 0, 0 < loss.truncation <= 1"),
            (len(self.optim.betas) == 2, "optim.betas must hold two numbers"),
            (self.run.total_kimg > 0 and self.run.tick_kimg > 0, "run.total_kimg and run.tick_kimg must be > 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        check_dist_config(self.dist, "adam")
