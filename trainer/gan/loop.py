"""The GAN fine-tuning loop: phases Gmain, Gpl, Dmain, Dr1 over the shard stream.

Each phase is one optimizer step: zero the gradients, accumulate over the
micro-batches, average the gradients of exactly the trainable parameters
across ranks, step (unless non-finite). The regularisation phases run every
``interval`` steps with their loss multiplied by the interval (lazy
regularisation). Progress is counted in images shown to D (kimg) and
reported every tick.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

import ops
from datasets.imageio import to_uint8
from datasets.loader import to_device
from trainer.gan import setup
from trainer.gan.augment import AugmentPipe
from trainer.gan.config import GANConfig
from trainer.gan.loss import Backward, GANLoss
from trainer.gan.state import Start, check_resume_compatible, counters
from trainer.run.checkpoint import CheckpointManager
from trainer.run.config import ConfigError, to_dict, to_yaml
from trainer.run.distributed import Dist, rng_state, seed_rank
from trainer.run.log import RunLog
from trainer.run.loss_scale import DynamicLossScale
from trainer.run.meters import Meters
from trainer.run.stop import stop_point
from trainer.run.steps import NonFiniteError, check_batch, make_loader, restore_rank, resumed_note
from trainer.run.zero import OptimizerStep, make_step

__all__ = ["NonFiniteError", "PHASES", "run_phase", "sample_grid", "training_loop"]


@dataclass
class Phase:
    name: str
    interval: int
    params: list[torch.nn.Parameter]
    opt: OptimizerStep
    run: Callable[[torch.Tensor, torch.Tensor, float, float, Backward], dict]
    """(real micro-batch, z micro-batch, gain, loss scale, backward) -> stats."""


PHASES = ("Gmain", "Gpl", "Dmain", "Dr1")


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def training_loop(cfg: GANConfig, dist: Dist, start: Start) -> RunLog:
    device = dist.device
    log = RunLog(start.run_dir, dist.is_main)
    ops.set_default_impl(cfg.model.ops_impl)
    per_rank, micro = check_batch(cfg.optim.batch, dist.world, cfg.optim.batch_gpu)
    meta = start.meta or {}

    # Load data.
    loader = make_loader(cfg.loader, per_rank, dist, cfg.run.seed)

    # Construct networks. Identical on every rank: rank 0's initialisation is broadcast.
    seed_rank(cfg.run.seed, 0)
    nets = setup.build_networks(cfg, loader.image_size, meta.get("g_config"), meta.get("d_config"),
                                meta.get("src_config"))
    G, D, G_ema, G_src = (m.to(device) if m is not None else None for m in (nets.G, nets.D, nets.G_ema, nets.G_src))
    for m in (G, D, G_ema):
        dist.broadcast_module(m)
    g_frozen = setup.generator_frozen_names(G, cfg.freeze.g_res, cfg.freeze.g_mapping, cfg.freeze.noise)
    try:
        d_frozen = D.freeze_names(cfg.freeze.d, cfg.freeze.d_convention)
    except ValueError as e:
        raise ConfigError(f"freeze.d: {e}") from None
    g_params, d_params = setup.apply_freeze(G, g_frozen), setup.apply_freeze(D, d_frozen)
    augment = AugmentPipe(cfg.ada.pipe).to(device) if cfg.ada.mode != "noaug" else None
    if augment is not None:
        augment.set_p(cfg.ada.p)
    loss = GANLoss(G, D, augment, cfg.loss, cfg.freeze, G_src, reduce_mean=dist.all_reduce_mean)
    mp = cfg.model.mixed_precision == "fp16"
    pl_on, r1_on = cfg.loss.pl_weight > 0 and cfg.loss.pl_interval > 0, cfg.loss.r1_gamma > 0 and cfg.loss.r1_interval > 0
    # Lazy-regularisation scaling follows the configured intervals even with a penalty off (as
    # rosinality and NVlabs do).
    opt_G = setup.make_adam(g_params, cfg.optim.g_lr, cfg.optim.betas, cfg.optim.eps, cfg.loss.pl_interval)
    opt_D = setup.make_adam(d_params, cfg.optim.d_lr, cfg.optim.betas, cfg.optim.eps, cfg.loss.r1_interval)
    scale_G, scale_D = DynamicLossScale(mp), DynamicLossScale(mp)
    # One step (all-reduce or DeepSpeed engine) per network, shared by its two phases.
    step_G = make_step(cfg.dist, "G", G, g_params, opt_G, scale_G, dist, cfg.run.check_sync)
    step_D = make_step(cfg.dist, "D", D, d_params, opt_D, scale_D, dist, cfg.run.check_sync)
    phases = [Phase("Gmain", 1, g_params, step_G, lambda x, z, g, s, b: loss.g_main(z, g, s, b)),
              Phase("Dmain", 1, d_params, step_D, lambda x, z, g, s, b: loss.d_main(x, z, g, s, b))]
    if pl_on:
        phases.insert(1, Phase("Gpl", cfg.loss.pl_interval, g_params, step_G,
                               lambda x, z, g, s, b: loss.g_pl(z, g, s, b)))
    if r1_on:
        phases.append(Phase("Dr1", cfg.loss.r1_interval, d_params, step_D,
                            lambda x, z, g, s, b: loss.d_r1(x, g, s, b)))
    ada_kimg = cfg.ada.kimg_pretrained if nets.pretrained else cfg.ada.kimg

    # Resume. Everything that decides the next step is restored; RNG and data position per rank.
    ckpt = CheckpointManager(start.ckpt_root, cfg.run.keep_ckpts, dist.rank, dist.world)
    fails = torch.zeros(len(PHASES), dtype=torch.int64)
    train = {"pl_mean": loss.pl_mean, "ada_acc": torch.zeros(2, dtype=torch.float64, device=device), "fails": fails,
             "counters": counters(0, 0, 0, 0, 0), "scale_G": scale_G.state_dict(), "scale_D": scale_D.state_dict()}
    state = {"G": G, "D": D, "G_ema": G_ema, "opt_G": step_G.state(), "opt_D": step_D.state(),
             "train": train, **({"augment": augment} if augment is not None else {}),
             **({"G_src": G_src} if G_src is not None else {})}
    seed_rank(cfg.run.seed, dist.rank)
    if start.resume_from is not None:
        changed = check_resume_compatible(meta, to_dict(cfg))
        rank_state, _ = ckpt.load(start.resume_from, state)
        # The loaded param_groups carry the old run's lr/betas/eps: the configuration decides.
        setup.apply_hyperparameters(opt_G, opt_D, cfg)
        if augment is not None and cfg.ada.mode == "fixed":
            augment.set_p(cfg.ada.p)
        scale_G.load_state_dict(train["scale_G"])
        scale_D.load_state_dict(train["scale_D"])
        loader = restore_rank(rank_state, meta, dist, cfg.run.seed, loader,
                              lambda seed: make_loader(cfg.loader, per_rank, dist, seed))
        log.info(resumed_note(start.resume_from, meta, dist.world, changed))
    c = {k: int(v) for k, v in train["counters"].items()}
    step, cur_nimg, tick, tick_nimg, bad_steps = c["step"], c["nimg"], c["tick"], c["tick_nimg"], c["nonfinite"]

    log.write_config(to_yaml(cfg))
    log.info(f"run folder {start.run_dir}; {dist.world} process(es) on {device}; batch {cfg.optim.batch} "
             f"({per_rank} per process, micro-batch {micro}); {G.size}px; "
             + setup.describe_freeze(G, D, g_frozen, d_frozen))
    grid_z = setup.grid_latents(cfg.run.grid_size, G.style_dim, cfg.run.seed).to(device)
    meters = Meters(device)
    data = iter(loader)
    tick_start = time.time()
    total_nimg = int(round(cfg.run.total_kimg * 1000))
    done = cur_nimg >= total_nimg

    def save() -> str:
        train["counters"] = counters(step, cur_nimg, tick, tick_nimg, bad_steps)
        train["scale_G"], train["scale_D"] = scale_G.state_dict(), scale_D.state_dict()
        meta_out = {"step": step, "nimg": cur_nimg, "world": dist.world, "run_dir": str(start.run_dir),
                    "config": to_dict(cfg), "g_config": G.cfg.to_dict(), "d_config": D.cfg.to_dict(),
                    "src_config": G_src.cfg.to_dict() if G_src is not None else None}
        path = ckpt.save(step, state, {"rng": rng_state(), "loader": loader.state_dict()}, meta_out)
        log.info(f"checkpoint {path}")
        return path

    # Train.
    while not done:
        # Fetch data: the per-rank batch, split into micro-batches.
        batch = next(data)
        reals = to_device(batch.images, device).split(micro)

        # Execute phases.
        signs = torch.zeros(2, dtype=torch.float64, device=device)
        for ph in phases:
            if step % ph.interval:
                continue
            ok, outs = run_phase(ph, reals, (g_params, d_params), G.style_dim)
            # Consecutive failures per phase: a phase failing at every one of its turns stops
            # the run even when the phases between its turns succeed.
            fails[PHASES.index(ph.name)] = 0 if ok else fails[PHASES.index(ph.name)] + 1
            for st in outs:
                meters.add_all(st)
                if "Loss/signs/real" in st:
                    signs += torch.stack([st["Loss/signs/real"].double().sum(), signs.new_tensor(st["Loss/signs/real"].numel())])
            meters.add("Debug/sync_checks", float(cfg.run.check_sync))

        # Update G_ema.
        setup.update_ema(G_ema, G, setup.ema_beta(cfg.optim.batch, cfg.optim.ema_kimg, cur_nimg, cfg.optim.ema_rampup))
        step += 1
        cur_nimg += cfg.optim.batch
        bad_steps = int(fails.max())

        # Update ADA p from the sign of D on reals (summed over ranks every step, so the
        # accumulator is the same everywhere and checkpoints as one value).
        if cfg.ada.mode == "ada":
            train["ada_acc"] += dist.all_reduce_sum(signs)
            if step % cfg.ada.interval == 0:
                rt = float(train["ada_acc"][0] / train["ada_acc"][1].clamp(min=1))
                adjust = _sign(rt - cfg.ada.target) * cfg.optim.batch * cfg.ada.interval / (ada_kimg * 1000)
                augment.set_p(min(max(float(augment.p) + adjust, 0.0), 1.0))
                meters.add("Progress/ada_rt", rt)
                train["ada_acc"].zero_()
        done = cur_nimg >= total_nimg
        if bad_steps >= cfg.run.max_nonfinite:
            save()
            raise NonFiniteError(f"a phase had NaN/Inf losses or gradients {bad_steps} times in a row (kimg "
                                 f"{cur_nimg / 1000:.3f}); saved the last good state. Check the data, "
                                 f"lower the learning rates, or train with model.mixed_precision=no.")
        if not done:  # a stop request (signal, stop file, launcher gone) agreed by every rank
            stop_point(start.stop, dist, save, log.info)

        # Tick: report, grids, checkpoint.
        if not done and cur_nimg < tick_nimg + cfg.run.tick_kimg * 1000:
            continue
        tick += 1
        elapsed = time.time() - tick_start
        stats = meters.reduce(dist)
        kimg_tick = (cur_nimg - tick_nimg) / 1000
        stats.update({"Progress/kimg": cur_nimg / 1000, "Progress/tick": tick,
                      "Timing/sec_per_kimg": elapsed / max(kimg_tick, 1e-9),
                      "Timing/kimg_per_sec": kimg_tick / max(elapsed, 1e-9),
                      "Progress/augment_p": float(augment.p) if augment is not None else 0.0,
                      "Resources/gpu_mem_gib": dist.max_memory_gib(), "Progress/nonfinite_steps": bad_steps,
                      "Progress/loss_scale_G": scale_G.scale, "Progress/loss_scale_D": scale_D.scale,
                      # this rank's share: the whole state at zero_stage 0, 1/world of it at 1 and 2
                      "Resources/opt_state_mib_G": step_G.state_bytes() / 2**20,
                      "Resources/opt_state_mib_D": step_D.state_bytes() / 2**20})
        stats.update({f"Ops/{op}/{impl}": n for op, d in ops.impl_counts().items() for impl, n in d.items()})
        ops.reset_records()
        log.stats(step, stats, kimg=cur_nimg / 1000)
        log.info(f"tick {tick} kimg {cur_nimg / 1000:.3f} step {step} sec/kimg {stats['Timing/sec_per_kimg']:.2f} "
                 f"G {stats.get('Loss/G/loss', float('nan')):.3f} D {stats.get('Loss/D/loss', float('nan')):.3f} "
                 f"r1 {stats.get('Loss/r1_penalty', float('nan')):.3g} p {stats['Progress/augment_p']:.3f} "
                 f"rt {stats.get('Loss/signs/real', float('nan')):.3f} mem {stats['Resources/gpu_mem_gib']:.2f}GiB")
        if dist.is_main:
            log.image_grid(sample_grid(G_ema, grid_z), f"fakes-tick{tick:05d}", step)
        tick_nimg, tick_start = cur_nimg, time.time()
        if tick % cfg.run.ckpt_ticks == 0 or done:
            save()
        if dist.is_main and ((cfg.run.export_ticks and tick % cfg.run.export_ticks == 0) or done):
            for name, fmt in (("network-rosinality.pt", "rosinality"), ("network.pt", "toonmix")):
                setup.export_networks(start.run_dir / name, fmt, G_ema, G, D)
            log.info(f"exported G_ema, G and D to {start.run_dir}/network.pt and network-rosinality.pt")
    dist.barrier()
    return log


def run_phase(ph: Phase, reals: tuple[torch.Tensor, ...], nets_params: tuple[list, list],
              style_dim: int) -> tuple[bool, list[dict]]:
    """One optimizer step of ``ph`` over the micro-batches; returns (stepped, stats per micro-batch)."""
    # Only this phase's network collects gradients; frozen parameters never do.
    for params in nets_params:
        for p in params:
            p.requires_grad_(params is ph.params)
    ph.opt.zero_grad()
    gain = ph.interval / len(reals)  # lazy-regularisation weight; mean over micro-batches
    outs = []
    for x in reals:
        z = torch.randn(x.shape[0], style_dim, device=x.device)
        outs.append(ph.run(x, z, gain, ph.opt.scale.scale, ph.opt.backward))
    return ph.opt.step(), outs


@torch.no_grad()
def sample_grid(G_ema: torch.nn.Module, z: torch.Tensor, chunk: int = 8):
    """uint8 images of the fixed grid latents (const noise: comparable across ticks)."""
    imgs = [G_ema(zc, noise_mode="const") for zc in z.split(chunk)]
    return to_uint8(torch.cat(imgs))
