"""Where a GAN run starts and what its checkpoints hold.

``resolve_start`` turns ``run.*`` settings and ``--resume`` into a run folder,
a checkpoint root and (when resuming) the checkpoint to load, before any
network exists: a resumed run takes its architecture and configuration from
the checkpoint's meta.json, so the original starting file is not needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from datasets.remote import join, read_json
from trainer.checkpoint import CheckpointError, CheckpointManager
from trainer.config_io import ConfigError
from trainer.gan_config import RunConfig
from trainer.runlog import latest_run_dir, next_run_dir


@dataclass
class Start:
    run_dir: Path
    ckpt_root: str
    resume_from: str | None
    """Checkpoint folder to load, or None for a fresh start."""
    meta: dict | None
    """The checkpoint's meta.json (config, architecture, counters)."""


def resolve_start(raw: dict, resume: str | None) -> Start:
    """Run folder and checkpoint for ``resume`` in None | "latest" | "auto" | URL.

    "latest"/"auto" look in ``run.ckpt_url`` or ``run.dir``, else in the newest
    ``run.out/NNNNN-<desc>`` folder; "auto" starts fresh when nothing is there.
    """
    run = raw.get("run") or {}
    defaults = RunConfig()
    out, desc = run.get("out", defaults.out), run.get("desc", defaults.desc)
    run_dir = Path(run["dir"]) if run.get("dir") else None
    if resume not in (None, "latest", "auto"):
        meta = _meta(resume)
        run_dir = run_dir or Path(meta.get("run_dir") or next_run_dir(out, desc))
        root = run.get("ckpt_url") or str(run_dir / "checkpoints")
        newer = [s for s, _ in CheckpointManager(root).list_complete() if s > int(meta["step"])]
        if newer:  # continuing there would interleave two histories and prune the wrong ones
            raise ConfigError(f"{root} holds checkpoints newer than {resume} (steps {newer}); to branch off "
                              "an older checkpoint give a new run.dir (or run.ckpt_url)")
        return Start(run_dir, root, resume, meta)
    if resume is not None and run_dir is None and not run.get("ckpt_url"):
        run_dir = latest_run_dir(out, desc)
    if run_dir is None:
        if resume == "latest":
            raise CheckpointError(f"--resume latest: no run folder {out}/NNNNN-{desc} to resume; "
                                  "set run.dir or run.ckpt_url, or start without --resume")
        run_dir = next_run_dir(out, desc)
    root = run.get("ckpt_url") or str(run_dir / "checkpoints")
    found = CheckpointManager(root).latest() if resume is not None else None
    if found is None and resume == "latest":
        raise CheckpointError(f"--resume latest: no complete checkpoint under {root}")
    return Start(run_dir, root, found, _meta(found) if found else None)


def _meta(ckpt: str) -> dict:
    try:
        meta = read_json(join(ckpt, "meta.json"))
    except (FileNotFoundError, OSError, ValueError) as e:
        raise CheckpointError(f"{ckpt}: cannot read meta.json ({e}); is this a checkpoint folder?") from e
    if "config" not in meta or "g_config" not in meta:
        raise CheckpointError(f"{ckpt}/meta.json is not a GAN checkpoint (keys: {sorted(meta)})")
    return meta


def base_config(start: Start, has_config_file: bool) -> dict | None:
    """A resumed run without --config continues with the checkpoint's configuration."""
    if start.meta is None or has_config_file:
        return None
    return start.meta["config"]


def check_resume_compatible(meta: dict, cfg_dict: dict) -> list[str]:
    """Keys whose change across a resume breaks the run (an error) or changes it (a note)."""
    old = meta["config"]
    changed = [f"{s}.{k}" for s in ("loss", "optim", "ada", "freeze", "model") for k in old.get(s, {})
               if old[s][k] != cfg_dict[s].get(k)]
    fatal = [k for k in changed if k in ("model.mixed_precision", "freeze.d", "freeze.d_convention",
                                         "freeze.g_res", "freeze.g_mapping")]
    source = lambda c: c["freeze"]["style"] > 0 or c["freeze"]["structure_layers"] > 0  # noqa: E731
    if (old["ada"]["mode"] == "noaug") != (cfg_dict["ada"]["mode"] == "noaug"):
        fatal.append("ada.mode (to or from noaug: the augmentation state is part of the checkpoint)")
    if source(old) != source(cfg_dict):
        fatal.append("freeze.style/freeze.structure_layers (whether a source generator is used)")
    if fatal:
        raise ConfigError(f"cannot resume with changed {fatal}: the optimizer state covers other parameters")
    return changed


def counters(step: int, nimg: int, tick: int, tick_nimg: int, nonfinite: int) -> dict[str, torch.Tensor]:
    """Training counters as int64 tensors (checkpointed in place)."""
    return {k: torch.tensor(v, dtype=torch.int64) for k, v in
            dict(step=step, nimg=nimg, tick=tick, tick_nimg=tick_nimg, nonfinite=nonfinite).items()}


def load_networks(ckpt: str) -> tuple[dict, dict]:
    """{"G", "D", "G_ema"} (float32, CPU) from a GAN checkpoint folder, in one process; and its meta."""
    from trainer.networks import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig

    meta = _meta(ckpt)
    nets = {"G": Generator(GeneratorConfig(**meta["g_config"])), "D": Discriminator(DiscriminatorConfig(**meta["d_config"])),
            "G_ema": Generator(GeneratorConfig(**meta["g_config"]))}
    root, _, name = ckpt.rstrip("/").rpartition("/")
    CheckpointManager(root or ".").load(ckpt, nets)
    return nets, meta
