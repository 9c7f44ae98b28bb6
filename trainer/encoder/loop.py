"""The ReStyle encoder training loop: N refinement passes per batch, one optimizer step.

Pass 0 starts from the average image and latent_avg; every later pass sees
the previous reconstruction (detached, as ReStyle does). Each pass has its
own loss and backward; the gradients of all passes accumulate and are
averaged across ranks once, then the optimizer steps. Progress is counted
in training images (kimg) and reported every tick.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

import ops
from datasets.errors import DataError
from datasets.imageio import to_uint8
from datasets.loader import ShardLoader, to_device
from eval.encoder_metrics import evaluate
from trainer.encoder import setup
from trainer.encoder.config import EncoderTrainConfig
from trainer.encoder.data import ImageSource
from trainer.encoder.formats import save_restyle
from trainer.encoder.loss import EncoderLoss
from trainer.encoder.sync_bn import convert_batchnorm
from trainer.networks.encoders import Encoder, EncoderConfig
from trainer.networks.restyle import Pass, ReStyle
from trainer.run.checkpoint import CheckpointManager
from trainer.run.config import ConfigError, to_dict, to_yaml
from trainer.run.distributed import Dist, rng_state, seed_rank
from trainer.run.log import RunLog
from trainer.run.loss_scale import DynamicLossScale
from trainer.run.meters import Meters
from trainer.run.start import Start, changed_settings
from trainer.run.stop import stop_point
from trainer.run.steps import NonFiniteError, check_batch, counters, make_loader, restore_rank, resumed_note
from trainer.run.zero import make_step

ENCODER_META = ("config", "g_config", "enc_config")
AUTOCAST = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Changing these across a resume changes what the saved weights or optimizer state mean.
FATAL_CHANGES = ("domain", "model.backbone", "model.width", "model.units", "model.input_size", "optim.optimizer",
                 "model.mixed_precision", "decoder.source", "decoder.target", "decoder.target_mode",
                 "decoder.swap_res")


def training_loop(cfg: EncoderTrainConfig, dist: Dist, start: Start) -> RunLog:
    device = dist.device
    log = RunLog(start.run_dir, dist.is_main)
    ops.set_default_impl(cfg.model.ops_impl)
    per_rank, _ = check_batch(cfg.optim.batch, dist.world)
    meta = start.meta or {}

    # Load data.
    loader = make_loader(cfg.loader, per_rank, dist, cfg.run.seed)

    # Construct networks. A resumed run rebuilds them from the checkpoint alone; a new one
    # loads the generator and initialises the encoder (rank 0's draw is broadcast).
    seed_rank(cfg.run.seed, 0)
    if start.resume_from is not None:
        G = setup.decoder_from_meta(meta["g_config"])
        net = ReStyle(Encoder(EncoderConfig(**meta["enc_config"])), G, torch.zeros(G.n_latent, G.style_dim))
        what, note = "generator from the checkpoint", "encoder from the checkpoint"
    else:
        G, what = setup.build_decoder(cfg)
        net, note = setup.build_restyle(cfg, G)
    net = net.to(device).train()
    net.autocast = AUTOCAST[cfg.model.mixed_precision]
    if dist.world > 1 and cfg.model.sync_bn:
        convert_batchnorm(net.encoder)
    dist.broadcast_module(net.encoder)
    lpips, idnet = setup.build_loss_networks(cfg)
    loss = EncoderLoss(cfg.loss, lpips, idnet).to(device)
    params = list(net.encoder.parameters())
    opt = setup.make_optimizer(cfg, params)
    scale = DynamicLossScale(cfg.model.mixed_precision == "fp16")
    optimizer = make_step(cfg.dist, "encoder", net.encoder, params, opt, scale, dist, cfg.run.check_sync)

    # Resume. Weights, optimizer, loss scale, counters; RNG and data position per rank.
    ckpt = CheckpointManager(start.ckpt_root, cfg.run.keep_ckpts, dist.rank, dist.world)
    train = {"counters": counters(0, 0, 0, 0, 0), "scale": scale.state_dict()}
    state = {"net": net, "opt": optimizer.state(), "train": train}
    seed_rank(cfg.run.seed, dist.rank)
    if start.resume_from is not None:
        changed = check_resume_compatible(meta, to_dict(cfg))
        rank_state, _ = ckpt.load(start.resume_from, state)
        for group in opt.param_groups:  # the configuration decides the learning rate
            group["lr"] = cfg.optim.lr
        scale.load_state_dict(train["scale"])  # avg_image came with the checkpoint: not recomputed
        loader = restore_rank(rank_state, meta, dist, cfg.run.seed, loader,
                              lambda seed: make_loader(cfg.loader, per_rank, dist, seed))
        log.info(resumed_note(start.resume_from, meta, dist.world, changed))
    c = {k: int(v) for k, v in train["counters"].items()}
    step, cur_nimg, tick, tick_nimg, bad_steps = c["step"], c["nimg"], c["tick"], c["tick_nimg"], c["nonfinite"]

    log.write_config(to_yaml(cfg))
    log.info(f"run folder {start.run_dir}; {dist.world} process(es) on {device}; batch {cfg.optim.batch} "
             f"({per_rank} per process); {cfg.domain} encoder ({net.encoder.cfg.backbone}, "
             f"{sum(p.numel() for p in params) / 1e6:.2f}M parameters) into the {G.size}px {what}; {note}")
    if loader.image_size != net.size:
        log.info(f"note: {loader.image_size}px training images are resized to the encoder's {net.size}px input")
    grid_x = grid_images(cfg, net.size, device) if dist.is_main else None
    val = held_out(cfg, net.size, dist)
    meters = Meters(device)
    data = iter(loader)
    tick_start = time.time()
    total_nimg = int(round(cfg.run.total_kimg * 1000))
    done = cur_nimg >= total_nimg

    def save() -> str:
        train["counters"] = counters(step, cur_nimg, tick, tick_nimg, bad_steps)
        train["scale"] = scale.state_dict()
        meta_out = {"step": step, "nimg": cur_nimg, "world": dist.world, "run_dir": str(start.run_dir),
                    "config": to_dict(cfg), "g_config": net.decoder.cfg.to_dict(), "enc_config": net.encoder.cfg.to_dict()}
        path = ckpt.save(step, state, {'rng': rng_state(), 'loader': loader.state_dict()}, meta_out)
        log.info(f"checkpoint {path}")
        return path

    # Train.
    while not done:
        # Fetch data.
        x = fit_size(to_device(next(data).images, device), net.size)

        # Refinement passes: a loss and a backward each; the gradients accumulate.
        stats_before = [b.detach().clone() for b in net.encoder.buffers()]
        prev = None
        for t in range(cfg.optim.n_iters):
            out = net.step(x, prev, noise_mode="random")
            with torch.autocast(device.type, dtype=net.autocast or torch.float32, enabled=net.autocast is not None):
                total, terms = loss(out.image, x, out.latent, net.latent_avg)
            optimizer.backward(total * scale.scale)
            prev = Pass(out.image.detach(), out.latent.detach())
            for k, v in terms.items():
                meters.add(f"Loss/{k}/pass{t + 1}", v)

        # Optimizer step: gradients averaged over ranks; skipped everywhere if non-finite.
        stepped = optimizer.step()
        # A skipped step's forwards also moved the BatchNorm statistics, and an overflowing
        # forward can make them Inf even when the gradients stay finite: undo both.
        buffers = list(net.encoder.buffers())
        if not stepped or not all(torch.isfinite(b).all() for b in buffers if b.is_floating_point()):
            with torch.no_grad():
                for b, old in zip(buffers, stats_before):
                    b.copy_(old)
        bad_steps = 0 if stepped else bad_steps + 1
        step += 1
        cur_nimg += cfg.optim.batch
        done = cur_nimg >= total_nimg
        if bad_steps >= cfg.run.max_nonfinite:
            save()
            raise NonFiniteError(f"losses or gradients were NaN/Inf {bad_steps} steps in a row (kimg "
                                 f"{cur_nimg / 1000:.3f}); saved the last good state. Check the data, lower "
                                 "optim.lr, or train with model.mixed_precision=no.")
        if not done:  # a stop request (signal, stop file, launcher gone) agreed by every rank
            stop_point(start.stop, dist, save, log.info)

        # Tick: report, reconstruction grid, checkpoint, export.
        if not done and cur_nimg < tick_nimg + cfg.run.tick_kimg * 1000:
            continue
        tick += 1
        elapsed = time.time() - tick_start
        stats = meters.reduce(dist)
        stats.update({"Progress/kimg": cur_nimg / 1000, "Progress/tick": tick, "Progress/nonfinite_steps": bad_steps,
                      "Timing/img_per_sec": (cur_nimg - tick_nimg) / max(elapsed, 1e-9),
                      "Timing/sec_per_kimg": elapsed / max((cur_nimg - tick_nimg) / 1000, 1e-9),
                      "Resources/gpu_mem_gib": dist.max_memory_gib(), "Progress/loss_scale": scale.scale,
                      "Resources/opt_state_mib": optimizer.state_bytes() / 2**20})  # this rank's share
        if val and (tick % cfg.run.val_ticks == 0 or done):
            stats.update(validate(net, val, cfg.optim.n_iters, lpips, idnet if cfg.id_net == "arcface" else None, log))
        stats.update({f"Ops/{op}/{impl}": n for op, d in ops.impl_counts().items() for impl, n in d.items()})
        ops.reset_records()
        log.stats(step, stats, kimg=cur_nimg / 1000)
        last = f"pass{cfg.optim.n_iters}"
        log.info(f"tick {tick} kimg {cur_nimg / 1000:.3f} step {step} img/s {stats['Timing/img_per_sec']:.2f} "
                 + " ".join(f"{k} {stats[f'Loss/{k}/{last}']:.4f}" for k in ("total", "l2", "lpips", "id")
                            if f"Loss/{k}/{last}" in stats)
                 + f" (pass {cfg.optim.n_iters}) mem {stats['Resources/gpu_mem_gib']:.2f}GiB")
        if dist.is_main:
            log.image_grid(reconstruction_grid(net, grid_x, cfg.optim.n_iters), f"reconstructions-tick{tick:05d}", step,
                           nrow=cfg.optim.n_iters + 1)
        tick_nimg, tick_start = cur_nimg, time.time()
        if tick % cfg.run.ckpt_ticks == 0 or done:
            save()
        if dist.is_main and ((cfg.run.export_ticks and tick % cfg.run.export_ticks == 0) or done):
            path = save_restyle(start.run_dir / "encoder-restyle.pt", net, restyle_opts(cfg, dist.world))
            log.info(f"exported {path}")
    dist.barrier()
    return log


def check_resume_compatible(meta: dict, cfg_dict: dict) -> list[str]:
    """Changed keys (noted); raises if a change makes the checkpoint mean something else."""
    changed = changed_settings(meta["config"], cfg_dict)
    fatal = [k for k in changed if k in FATAL_CHANGES]
    if fatal:
        raise ConfigError(f"cannot resume with changed {fatal}: the checkpoint's encoder, generator or "
                          "optimizer state belongs to the old setting; start a new run")
    return changed


def fit_size(x: torch.Tensor, size: int) -> torch.Tensor:
    """Images at the encoder's input size (area-weighted down, bilinear up)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def grid_images(cfg: EncoderTrainConfig, size: int, device: torch.device) -> torch.Tensor:
    """The first grid_size training images in manifest order (the same in every tick and run)."""
    loader = ShardLoader(replace(cfg.loader, batch_size=cfg.run.grid_size, workers=0), 0, 1, "eval")
    batch = next(iter(loader))
    return fit_size(to_device(batch.images, device), size)


def held_out(cfg: EncoderTrainConfig, size: int, dist: Dist) -> list[tuple[list[str], torch.Tensor]]:
    """The validation images, read once on the main process (empty elsewhere). A bad
    run.val_data stops every rank with the main process's message, not a hang."""
    batches, error = [], None
    if dist.is_main and cfg.run.val_data:
        try:
            source = ImageSource(cfg.run.val_data, size, min(cfg.run.val_images, 32), cfg.run.val_images)
            batches = [(names, x.to(dist.device)) for names, x in source.batches()]
            error = None if batches else f"run.val_data={cfg.run.val_data}: no readable images"
        except DataError as e:
            error = f"run.val_data={cfg.run.val_data}: {e}"
    error = dist.broadcast_object(error)
    if error:
        raise DataError(error)
    return batches


def validate(net: ReStyle, val: list, n_iters: int, lpips, face_id, log: RunLog) -> dict[str, float]:
    """Held-out metrics per pass (``Val/<metric>/pass<t>``) for the tick's stats; a line in the log."""
    was_training = net.training
    net.eval()
    report = evaluate(net, val, n_iters, lpips, face_id, val[0][1].device, progress=False)
    net.train(was_training)
    last = report["passes"][-1]
    log.info(f"validation on {report['images']} images, pass {last['pass']}: "
             + " ".join(f"{k} {v:.4f}" for k, v in last.items() if k != "pass"))
    return {f"Val/{k}/pass{row['pass']}": v for row in report["passes"] for k, v in row.items() if k != "pass"}


@torch.no_grad()
def reconstruction_grid(net: ReStyle, x: torch.Tensor, n_iters: int) -> np.ndarray:
    """uint8 images, one row of 1 + n_iters per input: the input, then every pass (fixed noise)."""
    was_training = net.training
    net.eval()
    passes = net.invert(x, n_iters)
    net.train(was_training)
    cols = torch.stack([x] + [p.image for p in passes], dim=1)  # [N, 1 + n_iters, 3, S, S]
    return to_uint8(cols.flatten(0, 1))


def restyle_opts(cfg: EncoderTrainConfig, world: int) -> dict:
    """ReStyle's option names for what this run trained (read by ReStyle's scripts)."""
    return {"n_iters_per_batch": cfg.optim.n_iters, "batch_size": cfg.optim.batch, "learning_rate": cfg.optim.lr,
            "optim_name": cfg.optim.optimizer, "l2_lambda": cfg.loss.l2, "lpips_lambda": cfg.loss.lpips,
            "id_lambda": cfg.loss.id if cfg.id_net == "arcface" else 0.0,
            "moco_lambda": cfg.loss.id if cfg.id_net == "moco" else 0.0, "w_norm_lambda": cfg.loss.w_norm,
            "toonmix_config": to_dict(cfg), "toonmix_world": world}
