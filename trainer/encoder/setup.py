"""Building what an encoder run needs: the frozen generator, the encoder, losses, optimizer.

Every missing or unfitting file is found here, before the first step: a
generator file that does not exist, loss-network weights that are not where
the configuration says, an encoder checkpoint for another resolution.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.encoder.config import EncoderTrainConfig, WeightsConfig
from trainer.encoder.formats import load_restyle
from trainer.encoder.ranger import Ranger
from trainer.networks import Generator, GeneratorConfig, layer_swap
from trainer.networks.encoders import Encoder, EncoderConfig, init_backbone
from trainer.networks.restyle import ReStyle
from trainer.networks.weights import WeightsError
from trainer.run.config import ConfigError
from trainer.run.inputs import load_generator, weight_path

# Config field of WeightsConfig -> public file key.
WEIGHT_KEYS = {"arcface": "ir_se50", "moco": "moco_v2", "alexnet": "alexnet", "vgg16": "vgg16",
               "lpips_alex": "lpips_alex", "lpips_vgg": "lpips_vgg"}


def weights_of(cfg: WeightsConfig, name: str) -> str | None:
    return weight_path(getattr(cfg, name), cfg.dir, WEIGHT_KEYS[name])


def build_decoder(cfg: EncoderTrainConfig) -> tuple[Generator, str]:
    """The frozen generator of this domain and a line describing it."""
    d = cfg.decoder
    if cfg.domain == "source":
        return load_generator(d.source, "decoder.source"), f"source generator {d.source}"
    target = load_generator(d.target, "decoder.target")
    if d.target_mode == "finetuned":
        return target, f"fine-tuned generator {d.target}"
    source = load_generator(d.source, "decoder.source (the base of G_swap)")
    try:
        G = layer_swap(source, target, d.swap_res)
    except ValueError as e:
        raise ConfigError(f"decoder: cannot swap {d.source} and {d.target}: {e}") from e
    return G.eval(), f"G_swap at {d.swap_res}px: {d.source} below, {d.target} above"


def decoder_from_meta(g_config: dict) -> Generator:
    """An empty generator of a checkpoint's architecture (its weights come with the checkpoint)."""
    return Generator(GeneratorConfig(**g_config)).eval()


def encoder_config(cfg: EncoderTrainConfig, G: Generator) -> EncoderConfig:
    m = cfg.model
    try:
        return EncoderConfig(backbone=m.backbone, n_styles=G.n_latent, style_dim=G.style_dim,
                             input_size=m.input_size, width=m.width, units=list(m.units))
    except ValueError as e:
        raise ConfigError(f"model: {e}") from e


def build_restyle(cfg: EncoderTrainConfig, G: Generator) -> tuple[ReStyle, str]:
    """Encoder + frozen generator; the encoder starts from model.init, the pretrained body, or
    (with a warning) random weights. Returns the network and a line for the log."""
    if cfg.model.init:
        loaded, _ = load_restyle(cfg.model.init)
        enc = loaded.encoder
        if (enc.cfg.n_styles, enc.cfg.style_dim) != (G.n_latent, G.style_dim):
            raise ConfigError(f"model.init={cfg.model.init} predicts {enc.cfg.n_styles} W+ vectors of "
                              f"{enc.cfg.style_dim} but the {G.size}px generator takes {G.n_latent} of {G.style_dim}")
        note = f"encoder initialised from {cfg.model.init}"
    else:
        enc = Encoder(encoder_config(cfg, G))
        key = "ir_se50" if cfg.model.backbone == "ir_se50" else "resnet34"
        # The file in weights.dir fits only the public layout; a narrow test-size body starts random.
        body = cfg.model.backbone_weights or (weight_path(None, cfg.weights.dir, key) if enc.cfg.public else None)
        try:
            note = init_backbone(enc, body, cfg.weights.check_hashes)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    try:
        return ReStyle(enc, G), note
    except ValueError as e:
        raise ConfigError(str(e)) from e


def build_loss_networks(cfg: EncoderTrainConfig) -> tuple[nn.Module | None, nn.Module | None]:
    """(LPIPS, identity network) for the weights in use; missing files stop here."""
    from trainer.networks.face_id import FaceID
    from trainer.networks.lpips import LPIPS
    from trainer.networks.moco import MocoFeatures

    w, check = cfg.weights, cfg.weights.check_hashes
    lpips = idnet = None
    try:
        if cfg.loss.lpips > 0:
            net = cfg.loss.lpips_net
            lpips = LPIPS.from_files(net, weights_of(w, "alexnet" if net == "alex" else "vgg16"),
                                     weights_of(w, f"lpips_{net}"), check_hash=check)
        if cfg.loss.id > 0:
            idnet = (FaceID.from_file(weights_of(w, "arcface"), check_hash=check) if cfg.id_net == "arcface"
                     else MocoFeatures.from_file(weights_of(w, "moco"), check_hash=check))
    except WeightsError as e:
        raise WeightsError(f"{e}. Set weights.dir or the weights.* paths, or turn the loss off "
                           "(loss.lpips=0 / loss.id=0).") from e
    return lpips, idnet


def make_optimizer(cfg: EncoderTrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optim.optimizer == "ranger":
        return Ranger(params, lr=cfg.optim.lr)
    return torch.optim.Adam(params, lr=cfg.optim.lr)
