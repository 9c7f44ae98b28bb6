"""Checkpoint import/export for the StyleGAN2 networks.

    from trainer.model_io import load_checkpoint, save_checkpoint
    ck = load_checkpoint("ffhq.pt")             # rosinality, NVlabs pickle or ours: detected
    G = ck.generator()
    save_checkpoint("out.pt", "rosinality", g_ema=G)

No reader executes code from a file: torch files load with ``weights_only``
and an allow-list, NVlabs pickles through a restricted unpickler.
"""

from .errors import (ArchitectureMismatch, CheckpointError, FormatChangeWarning, MbstdChangeError,
                     UnsafeCheckpointError)
from .formats import FORMATS, LoadedCheckpoint, detect_format, load_checkpoint, save_checkpoint

__all__ = [
    "ArchitectureMismatch", "CheckpointError", "FORMATS", "FormatChangeWarning", "LoadedCheckpoint",
    "MbstdChangeError", "UnsafeCheckpointError",
    "detect_format", "load_checkpoint", "save_checkpoint",
]
