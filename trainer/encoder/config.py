"""Configuration of ReStyle encoder training (``launch.train_encoder``), one dataclass per section.

Defaults are ReStyle-pSp's published settings (IR-SE50 body, 5 refinement
passes, L2 1.0 / LPIPS 0.8 / ID 0.1, Ranger at lr 1e-4, batch 8, 256 px).
``python -m launch.train_encoder --help`` prints every key below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from datasets.loader import LoaderConfig
from trainer.networks import irse
from trainer.run.start import RunConfig
from trainer.run.zero import DistConfig, check_dist_config


@dataclass
class EncoderRunConfig(RunConfig):
    """Where an encoder run writes, how long it lasts and how often it reports."""

    desc: str = "encoder"
    """Suffix of the numbered run folder name (00003-<desc>)."""
    total_kimg: float = 4000.0
    """Stop after this many thousand training images (ReStyle: 500k steps of batch 8)."""
    tick_kimg: float = 0.8
    """Report, log an image grid and count checkpoints every this many kimg (ReStyle logs every 100 steps)."""
    ckpt_ticks: int = 25
    """Write a checkpoint every this many ticks (and always at the end)."""
    export_ticks: int = 0
    """Also write encoder-restyle.pt (ReStyle's format) every this many ticks (0: only at the end)."""
    grid_size: int = 6
    """Images in the reconstruction grid (one row each: input, then every refinement pass)."""
    val_data: str | None = None
    """Held-out images (a shard folder or an image folder): per-pass L2, LPIPS (when
    loss.lpips is on), ID similarity (with the ArcFace loss) and MS-SSIM every val_ticks."""
    val_images: int = 64
    """Held-out images used (the first ones, in order)."""
    val_ticks: int = 5
    """Validate every this many ticks (and at the end)."""


@dataclass
class EncoderModelConfig:
    """The encoder network and how it starts."""

    backbone: Literal["ir_se50", "resnet34"] = "ir_se50"
    """IR-SE50 body (ReStyle's BackboneEncoder) or ResNet34 (ResNetBackboneEncoder)."""
    backbone_weights: str | None = None
    """Pretrained body: model_ir_se50.pth or resnet34-b627a593.pth; default: that file in
    weights.dir. Without one the body starts random, with a warning."""
    init: str | None = None
    """Start the whole encoder from a ReStyle-format checkpoint (ours or ReStyle's)."""
    input_size: int = 256
    """Encoder input side; training images and reconstructions are resized to it."""
    width: float = 1.0
    """Channel multiplier of the body (1: public architecture; smaller for tests)."""
    units: list[int] = field(default_factory=lambda: list(irse.UNITS[50]))
    """IR-SE units per stage (IR-SE50: [3, 4, 14, 3])."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast for the encoder and loss networks; fp16 adds a dynamic loss scale."""
    sync_bn: bool = True
    """Normalise with the statistics of the global batch across processes (SyncBN)."""
    ops_impl: Literal["auto", "cuda", "ref"] = "auto"
    """Fused-op implementation used by the generator."""


@dataclass
class DecoderConfig:
    """The frozen generator the encoder inverts into."""

    source: str | None = None
    """Generator of real faces (e.g. FFHQ, rosinality .pt / NVlabs .pkl / ours): the source
    encoder's decoder and the base of G_swap."""
    target: str | None = None
    """Fine-tuned (cartoon) generator, for domain=target."""
    target_mode: Literal["swap", "finetuned"] = "swap"
    """domain=target: decode with G_swap (source mapping and layers below swap_res, target
    above) or with the fine-tuned generator alone."""
    swap_res: int = 32
    """Layer-swap resolution of G_swap (CDSM: 32)."""


@dataclass
class WeightsConfig:
    """Loss-network weight files (local paths; nothing is downloaded)."""

    dir: str | None = None
    """Folder holding the public files under their public names; each path left unset is
    looked up there (e.g. pretrained_models/)."""
    arcface: str | None = None
    """model_ir_se50.pth: the ID loss on faces."""
    moco: str | None = None
    """moco_v2_800ep_pretrain.pt: the MoCo similarity on cartoons."""
    alexnet: str | None = None
    """alexnet-owt-7be5be79.pth (torchvision): LPIPS with lpips_net=alex."""
    vgg16: str | None = None
    """vgg16-397923af.pth (torchvision): LPIPS with lpips_net=vgg."""
    lpips_alex: str | None = None
    """alex.pth of the lpips package (v0.1 linear layers)."""
    lpips_vgg: str | None = None
    """vgg.pth of the lpips package (v0.1 linear layers)."""
    check_hashes: bool = True
    """Verify torchvision files against the hash in their names."""


@dataclass
class EncoderLossConfig:
    """ReStyle's losses, computed after every refinement pass."""

    l2: float = 1.0
    """Weight of the pixel MSE."""
    lpips: float = 0.8
    """Weight of LPIPS."""
    lpips_net: Literal["alex", "vgg"] = "alex"
    """LPIPS feature network (ReStyle: alex)."""
    id: float = 0.1
    """Weight of the identity term (1 - cosine similarity of id_net features)."""
    id_net: Literal["auto", "arcface", "moco"] = "auto"
    """Identity features: ArcFace IR-SE50 (faces) or MoCo-v2 (other domains); auto:
    arcface for domain=source, moco for domain=target."""
    w_norm: float = 0.0
    """Weight of the W+ distance from latent_avg (ReStyle: optional, 0)."""


@dataclass
class EncoderOptimConfig:
    """Batch, optimizer and refinement passes."""

    batch: int = 8
    """Global batch (all ranks); must divide by the number of processes."""
    optimizer: Literal["ranger", "adam"] = "ranger"
    """Ranger (RAdam + Lookahead, ReStyle's default) or Adam."""
    lr: float = 1e-4
    """Learning rate."""
    n_iters: int = 5
    """Refinement passes per batch: a loss and a backward each, one optimizer step per batch."""


@dataclass
class EncoderTrainConfig:
    """Everything an encoder training run needs."""

    loader: LoaderConfig
    """Training shards (real faces for domain=source, cartoons for target); batch_size and seed are derived."""
    domain: Literal["source", "target"] = "source"
    """Which encoder: source (photos into the source generator) or target (cartoons into G_swap)."""
    run: EncoderRunConfig = field(default_factory=EncoderRunConfig)
    """Run folder, length, reporting and checkpoints."""
    model: EncoderModelConfig = field(default_factory=EncoderModelConfig)
    """Encoder architecture and start."""
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    """The frozen generator."""
    loss: EncoderLossConfig = field(default_factory=EncoderLossConfig)
    """Loss weights."""
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    """Loss-network weight files."""
    optim: EncoderOptimConfig = field(default_factory=EncoderOptimConfig)
    """Optimisation."""
    dist: DistConfig = field(default_factory=DistConfig)
    """Gradient and optimizer-state distribution: the trainer's all-reduce or DeepSpeed ZeRO 1/2."""

    def __post_init__(self) -> None:
        checks = [
            (self.optim.batch >= 1 and self.optim.n_iters >= 1, "optim.batch and optim.n_iters must be >= 1"),
            (self.run.val_images >= 1 and self.run.val_ticks >= 1, "run.val_images and run.val_ticks must be >= 1"),
            (self.optim.lr > 0, "optim.lr must be > 0"),
            (self.run.total_kimg > 0 and self.run.tick_kimg > 0, "run.total_kimg and run.tick_kimg must be > 0"),
            (self.run.keep_ckpts >= 1, "run.keep_ckpts must be >= 1"),
            (min(self.loss.l2, self.loss.lpips, self.loss.id, self.loss.w_norm) >= 0, "loss weights must be >= 0"),
            (self.decoder.swap_res >= 4 and self.decoder.swap_res & (self.decoder.swap_res - 1) == 0,
             "decoder.swap_res must be a power of two >= 4"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        check_dist_config(self.dist, self.optim.optimizer)

    @property
    def id_net(self) -> str:
        """The identity network in use: the configured one, or the domain's default."""
        if self.loss.id_net != "auto":
            return self.loss.id_net
        return "arcface" if self.domain == "source" else "moco"
