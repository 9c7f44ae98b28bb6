"""What GAN checkpoints hold: resume compatibility, counters, networks for export."""

from __future__ import annotations

from trainer.gan.config import RunConfig
from trainer.run.checkpoint import CheckpointManager
from trainer.run.config import ConfigError
from trainer.run.start import Start, base_config, changed_settings, read_meta
from trainer.run.start import resolve_start as _resolve_start
from trainer.run.steps import counters

GAN_META = ("config", "g_config")

__all__ = ["Start", "base_config", "check_resume_compatible", "counters", "load_networks", "resolve_start"]


def resolve_start(raw: dict, resume: str | None) -> Start:
    """Run folder and checkpoint of a GAN run (see ``trainer.run.start.resolve_start``)."""
    return _resolve_start(raw, resume, RunConfig(), GAN_META)


def check_resume_compatible(meta: dict, cfg_dict: dict) -> list[str]:
    """Keys whose change across a resume breaks the run (an error) or changes it (a note)."""
    old = meta["config"]
    changed = changed_settings(old, cfg_dict)
    fatal = [k for k in changed if k in ("model.mixed_precision", "freeze.d", "freeze.d_convention",
                                         "freeze.g_res", "freeze.g_mapping", "freeze.noise")]
    source = lambda c: c["freeze"]["style"] > 0 or c["freeze"]["structure_layers"] > 0  # noqa: E731
    if (old["ada"]["mode"] == "noaug") != (cfg_dict["ada"]["mode"] == "noaug"):
        fatal.append("ada.mode (to or from noaug: the augmentation state is part of the checkpoint)")
    if source(old) != source(cfg_dict):
        fatal.append("freeze.style/freeze.structure_layers (whether a source generator is used)")
    if fatal:
        raise ConfigError(f"cannot resume with changed {fatal}: the optimizer state covers other parameters")
    return changed


def load_networks(ckpt: str) -> tuple[dict, dict]:
    """{"G", "D", "G_ema"} (float32, CPU) from a GAN checkpoint folder, in one process; and its meta."""
    from trainer.networks import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig

    meta = read_meta(ckpt, GAN_META)
    nets = {"G": Generator(GeneratorConfig(**meta["g_config"])), "D": Discriminator(DiscriminatorConfig(**meta["d_config"])),
            "G_ema": Generator(GeneratorConfig(**meta["g_config"]))}
    root, _, name = ckpt.rstrip("/").rpartition("/")
    CheckpointManager(root or ".").load(ckpt, nets)
    return nets, meta
