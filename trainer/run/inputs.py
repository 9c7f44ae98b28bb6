"""Input files that a run's configuration names: frozen generators and public weight files.

Errors name the configuration key, so a user knows which setting to fix.
"""

from __future__ import annotations

from pathlib import Path

from trainer.model_io import CheckpointError, load_checkpoint
from trainer.networks import Generator
from trainer.networks.weights import PUBLIC
from trainer.run.config import ConfigError


def weight_path(explicit: str | None, folder: str | None, key: str) -> str | None:
    """The configured path, else the public file name inside ``weights.dir`` if it is there."""
    if explicit:
        return explicit
    if folder and (Path(folder) / PUBLIC[key].filename).is_file():
        return str(Path(folder) / PUBLIC[key].filename)
    return None


def load_generator(path: str | None, key: str) -> Generator:
    """The sampling generator (g_ema) of any supported checkpoint, frozen, in float32 (an NVlabs
    file's fp16 blocks included; its activation clamp is kept)."""
    if not path:
        raise ConfigError(f"{key} is not set: give a generator checkpoint (rosinality .pt, NVlabs .pkl or ours)")
    try:
        return load_checkpoint(path).generator().eval()
    except CheckpointError as e:
        raise CheckpointError(f"{key}={path}: {e}") from e
