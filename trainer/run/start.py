"""Where a training run starts: the run settings both trainers share, the run folder, resume.

``resolve_start`` turns ``run.*`` settings and ``--resume`` into a run folder,
a checkpoint root and (when resuming) the checkpoint to load, before any
network exists: a resumed run takes its architecture and configuration from
the checkpoint's meta.json, so the original starting files are not needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from datasets.remote import join, read_json
from trainer.run.checkpoint import CheckpointError, CheckpointManager
from trainer.run.config import ConfigError
from trainer.run.log import latest_run_dir, next_run_dir
from trainer.run.stop import StopRequest


@dataclass
class RunConfig:
    """Where a run writes, how long it lasts and how often it reports."""

    out: str = "runs"
    """Parent folder of the numbered run folders (local path)."""
    dir: str | None = None
    """Use this run folder instead of a new numbered one (created if missing)."""
    desc: str = "gan"
    """Suffix of the numbered run folder name (00003-<desc>)."""
    seed: int = 0
    """Seeds network initialisation, latents, noise, ADA and the data stream."""
    total_kimg: float = 25000.0
    """Stop after this many thousand real images shown to D (all ranks together)."""
    tick_kimg: float = 4.0
    """Report progress, stats and an image grid every this many kimg."""
    ckpt_ticks: int = 10
    """Write a checkpoint every this many ticks (and always at the end)."""
    ckpt_url: str | None = None
    """Checkpoint folder (any fsspec URL); default <run folder>/checkpoints."""
    keep_ckpts: int = 3
    """Complete checkpoints kept; older ones are deleted after a new one is complete."""
    resume: str | None = None
    """"latest" (newest complete checkpoint of this run), "auto" (latest if any, else start),
    or the URL of a checkpoint folder. None: start from model.init."""
    export_ticks: int = 0
    """Also export the trained networks in their public format every this many ticks (0: only at the end)."""
    grid_size: int = 16
    """Images in the fixed-seed grid written every tick."""
    max_nonfinite: int = 20
    """Consecutive steps with NaN/Inf losses or gradients before the run saves and stops."""
    stop_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1", "SIGINT"])
    """Signals that stop the run gracefully: the step in flight ends on every rank, a checkpoint
    is written, the command exits 75 ("requeue me"). An empty list keeps Python's defaults."""
    stop_file: str | None = None
    """A file whose appearance stops the run the same way (rank 0 looks once a second);
    $TOONMIX_STOP_FILE, when set, takes its place (the Slurm scripts set it per job)."""
    collective_timeout_s: float = 600.0
    """Seconds a collective waits for the other ranks before the run fails (a rank that died,
    OOM or kill -9): passed to the process group. Keep it above the longest wait some ranks have
    for others: rank 0 writes grids and exports alone while the rest wait in the next collective.
    Read from --config and the overrides before the group exists, so a value saved only in a
    checkpoint's configuration is not used."""
    check_sync: bool = False
    """After every phase, verify that all ranks hold bitwise-identical gradients and weights
    (a hash gathered from every rank; slow, for debugging and tests)."""

    def __post_init__(self) -> None:
        if self.collective_timeout_s <= 0:
            raise ValueError("run.collective_timeout_s must be > 0")
        from trainer.run.stop import signal_numbers
        signal_numbers(self.stop_signals)  # names an unknown signal now, not at start
        if min(self.ckpt_ticks, self.keep_ckpts, self.max_nonfinite, self.grid_size) < 1 or self.export_ticks < 0:
            raise ValueError("run.ckpt_ticks, run.keep_ckpts, run.max_nonfinite and run.grid_size must be >= 1, "
                             "run.export_ticks >= 0")



@dataclass
class Start:
    run_dir: Path
    ckpt_root: str
    resume_from: str | None
    """Checkpoint folder to load, or None for a fresh start."""
    meta: dict | None
    """The checkpoint's meta.json (config, architecture, counters)."""
    stop: StopRequest | None = None
    """This process's stop request, installed by the command once the run is resolved."""


def resolve_start(raw: dict, resume: str | None, defaults: RunConfig, required: tuple[str, ...]) -> Start:
    """Run folder and checkpoint for ``resume`` in None | "latest" | "auto" | URL.

    "latest"/"auto" look in ``run.ckpt_url`` or ``run.dir``, else in the newest
    ``run.out/NNNNN-<desc>`` folder; "auto" starts fresh when nothing is there.
    ``defaults`` gives out/desc when the settings omit them; ``required`` are the
    meta.json keys a checkpoint of this trainer holds.
    """
    run = raw.get("run") or {}
    out, desc = run.get("out", defaults.out), run.get("desc", defaults.desc)
    run_dir = Path(run["dir"]) if run.get("dir") else None
    if resume not in (None, "latest", "auto"):
        meta = read_meta(resume, required)
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
    return Start(run_dir, root, found, read_meta(found, required) if found else None)


def read_meta(ckpt: str, required: tuple[str, ...] = ("config",)) -> dict:
    try:
        meta = read_json(join(ckpt, "meta.json"))
    except (FileNotFoundError, OSError, ValueError) as e:
        raise CheckpointError(f"{ckpt}: cannot read meta.json ({e}); is this a checkpoint folder?") from e
    missing = [k for k in required if k not in meta]
    if missing:
        raise CheckpointError(f"{ckpt}/meta.json lacks {missing}: a checkpoint of another trainer? "
                              f"(keys: {sorted(meta)})")
    return meta


def base_config(start: Start, has_config_file: bool) -> dict | None:
    """A resumed run without --config continues with the checkpoint's configuration."""
    if start.meta is None or has_config_file:
        return None
    return start.meta["config"]


def changed_settings(old: dict, new: dict, ignore: tuple[str, ...] = ("run.", "loader.")) -> list[str]:
    """Dotted keys whose values differ between two resolved configurations (nested
    sections flattened), leaving out those under ``ignore``: what a resume changes."""
    a, b = _flat(old), _flat(new)
    return sorted(k for k in a if k in b and a[k] != b[k] and not k.startswith(ignore))


def _flat(cfg: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in cfg.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out
