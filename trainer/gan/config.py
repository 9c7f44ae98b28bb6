"""Configuration of GAN fine-tuning (``launch.train_gan``), one dataclass per section.

Defaults are the published settings (rosinality / NVlabs StyleGAN2 at 1024 px,
CDSM for the style-mixing note); the files in ``launch/configs/`` change what a
run needs. ``python -m launch.train_gan --help`` prints every key below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from datasets.loader import LoaderConfig
from trainer.gan.augment import AugmentConfig
from trainer.run.start import RunConfig
from trainer.run.zero import DistConfig, check_dist_config

__all__ = ["GANConfig", "RunConfig"]


@dataclass
class ModelConfig:
    """The networks: a starting checkpoint, or a fresh architecture."""

    init: str | None = None
    """Starting checkpoint (rosinality .pt with g_ema/latent_avg or a full training file,
    NVlabs .pkl, or ours). None: random initialisation with the fields below."""
    channel_multiplier: float = 2.0
    """Random init only: channels min(channel_max, 16384 * m // resolution)."""
    channel_max: int = 512
    """Random init only: channel cap."""
    style_dim: int = 512
    """Random init only: z and w dimension."""
    n_mlp: int = 8
    """Random init only: mapping-network depth."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Reduced precision in the num_fp16_res highest-resolution blocks of G and D
    (NVlabs' scheme); fp16 adds a dynamic loss scale per optimizer."""
    num_fp16_res: int = 4
    """Blocks run in reduced precision when mixed_precision is not "no"."""
    conv_clamp: float | None = 256.0
    """Activation clamp used with mixed precision (NVlabs 256)."""
    ops_impl: Literal["auto", "cuda", "ref"] = "auto"
    """Fused-op implementation: CUDA kernels when available ("auto"), or forced."""


@dataclass
class LossConfig:
    """Non-saturating logistic loss with lazy R1 and path-length regularisation."""

    r1_gamma: float = 10.0
    """R1 weight (gamma); the penalty is gamma/2 * |grad D(x)|^2."""
    r1_interval: int = 16
    """Lazy R1: every this many steps, weighted by the interval (0: never)."""
    pl_weight: float = 2.0
    """Path-length regularisation weight (0: off)."""
    pl_interval: int = 4
    """Lazy path length: every this many steps."""
    pl_decay: float = 0.01
    """Decay of the running path-length mean."""
    pl_batch_shrink: int = 2
    """The path-length pass uses batch / this many samples."""
    style_mixing: float = 0.9
    """Probability of mixing two latents at a random crossover (CDSM target G: 0)."""


@dataclass
class OptimConfig:
    """Batch, Adam and EMA."""

    batch: int = 32
    """Global batch (all ranks); must divide by the number of processes."""
    batch_gpu: int | None = None
    """Micro-batch per forward; the per-rank batch is accumulated in batch/world/batch_gpu
    rounds per phase. None: the whole per-rank batch at once."""
    g_lr: float = 0.002
    """Generator learning rate (before the lazy-regularisation scaling)."""
    d_lr: float = 0.002
    """Discriminator learning rate (before the lazy-regularisation scaling)."""
    betas: list[float] = field(default_factory=lambda: [0.0, 0.99])
    """Adam betas (before the lazy-regularisation scaling)."""
    eps: float = 1e-8
    """Adam epsilon."""
    ema_kimg: float = 10.0
    """EMA half-life in kimg of the global batch: beta = 0.5 ** (batch / (ema_kimg * 1000))."""
    ema_rampup: float | None = None
    """If set, the half-life is at most cur_kimg * ema_rampup (NVlabs ramp-up, e.g. 0.05)."""


@dataclass
class AdaConfig:
    """Adaptive discriminator augmentation (the bgc pipeline before D)."""

    mode: Literal["ada", "fixed", "noaug"] = "ada"
    """"ada": adapt p; "fixed": keep p; "noaug": no augmentation."""
    p: float = 0.0
    """Initial (or fixed) augmentation probability."""
    target: float = 0.6
    """Target of the overfitting heuristic r_t = E[sign(D(real))]."""
    interval: int = 4
    """Adjust p every this many steps."""
    kimg: float = 500.0
    """p can move from 0 to 1 in this many kimg (training from scratch)."""
    kimg_pretrained: float = 100.0
    """Speed used instead when starting from a pretrained checkpoint (NVlabs' resume value)."""
    pipe: AugmentConfig = field(default_factory=AugmentConfig)
    """Transform multipliers and strengths (defaults: bgc)."""


@dataclass
class FreezeConfig:
    """Transfer-learning controls: FreezeD, FreezeG, FreezeSG and the structure loss."""

    d: int = 0
    """FreezeD: how many discriminator layers to freeze (see d_convention)."""
    d_convention: Literal["nvlabs", "cartoon"] = "nvlabs"
    """"nvlabs": freeze the first d layers from the top (fromrgb, conv0, conv1, skip per block);
    "cartoon": Cartoon-StyleGAN2, keep the d lowest-resolution blocks and final layers trainable."""
    g_res: int = 0
    """FreezeG: freeze generator layers whose output resolution is below this (0: off).
    Cartoon-StyleGAN2's freezeG=N at size S is g_res = S >> (N - 1)."""
    g_mapping: bool = False
    """Also freeze the mapping network (Cartoon-StyleGAN2's FreezeG does)."""
    noise: bool = False
    """Keep every noise-input strength (the learned scale of each layer's per-pixel noise) at its
    starting value: the source's when fine-tuning, zero from scratch. On a few hundred images D
    rewards pixel noise and one strength can run away into speckle within a kimg."""
    style: int = 0
    """FreezeSG: the first this many W+ vectors come from the source generator's mapping."""
    structure_layers: int = 0
    """Structure loss over the lowest this many generator blocks (0: off)."""
    structure_weight: float = 1.0
    """Weight per layer of the structure loss."""
    structure_target: Literal["features", "rgb"] = "features"
    """Compare block features or the running RGB outputs."""
    source: str | None = None
    """Source generator for FreezeSG and the structure loss; default: model.init's."""


@dataclass
class GANConfig:
    """Everything a GAN fine-tuning run needs."""

    loader: LoaderConfig
    """Training shards and the streaming loader (batch_size and seed are derived)."""
    run: RunConfig = field(default_factory=RunConfig)
    """Run folder, length, reporting and checkpoints."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Starting point and precision."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Losses and regularisation."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimisation and EMA."""
    ada: AdaConfig = field(default_factory=AdaConfig)
    """Augmentation."""
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    """Freezing and structure loss."""
    dist: DistConfig = field(default_factory=DistConfig)
    """Gradient and optimizer-state distribution: the trainer's all-reduce or DeepSpeed ZeRO 1/2."""

    def __post_init__(self) -> None:
        checks = [
            (self.optim.batch >= 1, "optim.batch must be >= 1"),
            (self.run.total_kimg > 0 and self.run.tick_kimg > 0, "run.total_kimg and run.tick_kimg must be > 0"),
            (self.run.keep_ckpts >= 1, "run.keep_ckpts must be >= 1"),
            (self.loss.r1_interval >= 0 and self.loss.pl_interval >= 0, "intervals must be >= 0"),
            (self.loss.pl_batch_shrink >= 1, "loss.pl_batch_shrink must be >= 1"),
            (0 <= self.loss.style_mixing <= 1, "loss.style_mixing must be in [0, 1]"),
            (0 <= self.ada.p <= 1 and self.ada.interval >= 1, "ada.p must be in [0, 1], ada.interval >= 1"),
            (self.freeze.style >= 0 and self.freeze.structure_layers >= 0, "freeze counts must be >= 0"),
            (len(self.optim.betas) == 2, "optim.betas must hold two numbers"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        check_dist_config(self.dist, "adam")

    @property
    def needs_source(self) -> bool:
        """FreezeSG and the structure loss compare with a frozen source generator."""
        return self.freeze.style > 0 or self.freeze.structure_layers > 0
