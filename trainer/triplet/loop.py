"""The triplet fine-tuning loop of a blended generator (Fine-Tooning's method, done with a distance).

Per step every rank draws z, maps it with the source mapping network and draws one
set of noise maps; the source generator (positive), the trained blend (anchor) and
the more cartoon-like blend (negative) all render that W+ with that noise. The
loss is max(0, d(a, p) - d(a, n) + margin) over face embeddings with the cosine
distance d = 1 - cos (the public notebook passes the cosine *similarity* as its
distance, which would push the anchor away from the photo). Gradients reach only
the blend's trainable synthesis layers; they are averaged over ranks once per step.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

import ops
from datasets.imageio import to_uint8
from trainer.model_io import save_checkpoint
from trainer.networks.face_id import FaceID
from trainer.networks.generator import Generator
from trainer.networks.swap import g_swap, layer_swap, param_resolution
from trainer.networks.weights import WeightsError, missing_message
from trainer.run.checkpoint import CheckpointManager
from trainer.run.config import to_dict, to_yaml
from trainer.run.distributed import Dist, rng_state, seed_rank
from trainer.run.inputs import load_generator, weight_path
from trainer.run.log import RunLog
from trainer.run.loss_scale import DynamicLossScale
from trainer.run.meters import Meters
from trainer.run.start import Start, changed_settings
from trainer.run.stop import stop_point
from trainer.run.steps import NonFiniteError, check_batch, counters, restore_rng, resumed_note
from trainer.run.zero import make_step
from trainer.triplet.config import TripletConfig

TRIPLET_META = ("config", "kind")


def build_generators(cfg: TripletConfig) -> tuple[Generator, Generator, Generator]:
    """(positive source G, trainable blend, negative blend); the first and last frozen."""
    S = load_generator(cfg.model.source, "model.source")
    T = load_generator(cfg.model.target, "model.target")
    blend = layer_swap(S, T, cfg.model.swap_res)  # G_swap's weights, not frozen: trainable() picks what trains
    negative = g_swap(S, T, cfg.model.negative_swap_res)
    return S, blend, negative


def trainable(cfg: TripletConfig, blend: Generator) -> list[torch.nn.Parameter]:
    """The blend's parameters that train (the mapping network never does)."""
    out = []
    for name, p in blend.named_parameters():
        res = param_resolution(blend, name)
        train = res is not None and (cfg.model.train == "synthesis" or res >= cfg.model.swap_res)
        p.requires_grad_(train)
        if train:
            out.append(p)
    return out


def face_network(cfg: TripletConfig) -> FaceID:
    path = weight_path(cfg.weights.face, cfg.weights.dir, "ir_se50")
    if path is None:
        raise WeightsError(f"weights.face: {missing_message('ir_se50', 'the triplet loss')} (or put it in weights.dir)")
    return FaceID.from_file(path, cfg.weights.check_hashes).eval()


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1 - F.cosine_similarity(a, b, dim=1)


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean hinge over the batch, and its parts for the log."""
    d_pos, d_neg = cosine_distance(anchor, positive), cosine_distance(anchor, negative)
    loss = F.relu(d_pos - d_neg + margin).mean()
    return loss, {"Loss/triplet": loss.detach(), "Loss/d_pos": d_pos.detach().mean(), "Loss/d_neg": d_neg.detach().mean()}


def sample(S: Generator, n: int, psi: float, device) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """W+ from the source mapping (truncated) and one noise map per layer, shared by all three generators."""
    with torch.no_grad():
        ws = S.truncate(S.broadcast(S.mapping(torch.randn(n, S.style_dim, device=device))), psi)
    noise = [torch.randn((n, *getattr(S.noises, f"noise_{i}").shape[1:]), device=device) for i in range(S.num_layers)]
    return ws, noise


def training_loop(cfg: TripletConfig, dist: Dist, start: Start) -> RunLog:
    device = dist.device
    log = RunLog(start.run_dir, dist.is_main)
    ops.set_default_impl(cfg.model.ops_impl)
    per_rank, _ = check_batch(cfg.optim.batch, dist.world)

    # Construct networks. Every rank loads the same files, so no broadcast is needed.
    S, blend, negative = build_generators(cfg)
    S, blend, negative = S.to(device), blend.to(device).train(), negative.to(device)
    face = face_network(cfg).to(device)
    params = trainable(cfg, blend)
    opt = torch.optim.Adam(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
    optimizer = make_step(cfg.dist, "blend", blend, params, opt, DynamicLossScale(False), dist, cfg.run.check_sync)

    # Resume. Blend weights, optimizer, counters; RNG per rank.
    ckpt = CheckpointManager(start.ckpt_root, cfg.run.keep_ckpts, dist.rank, dist.world)
    train = {"counters": counters(0, 0, 0, 0, 0)}
    state = {"blend": blend, "opt": optimizer.state(), "train": train}
    seed_rank(cfg.run.seed, dist.rank)
    if start.resume_from is not None:
        changed = changed_settings(start.meta["config"], to_dict(cfg))
        rank_state, _ = ckpt.load(start.resume_from, state)
        for group in opt.param_groups:  # the loaded groups carry the old run's: the configuration decides
            group.update(lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
        restore_rng(rank_state, start.meta, dist, cfg.run.seed)
        log.info(resumed_note(start.resume_from, start.meta, dist.world, changed))
    c = {k: int(v) for k, v in train["counters"].items()}
    step, cur_nimg, tick, tick_nimg, bad_steps = c["step"], c["nimg"], c["tick"], c["tick_nimg"], c["nonfinite"]

    log.write_config(to_yaml(cfg))
    log.info(f"run folder {start.run_dir}; {dist.world} process(es) on {device}; batch {cfg.optim.batch} "
             f"({per_rank} per process); {S.size}px blend at {cfg.model.swap_res}px, negative at "
             f"{cfg.model.negative_swap_res}px; {sum(p.numel() for p in params) / 1e6:.3f}M parameters train")
    grid = grid_latents(cfg, S, device) if dist.is_main else None
    meters = Meters(device)
    tick_start = time.time()
    total_nimg = int(round(cfg.run.total_kimg * 1000))
    done = cur_nimg >= total_nimg

    def save() -> str:
        train["counters"] = counters(step, cur_nimg, tick, tick_nimg, bad_steps)
        meta = {"step": step, "nimg": cur_nimg, "world": dist.world, "run_dir": str(start.run_dir),
                "config": to_dict(cfg), "kind": "triplet"}
        path = ckpt.save(step, state, {'rng': rng_state()}, meta)
        log.info(f"checkpoint {path}")
        return path

    # Train.
    while not done:
        # Sample one latent and noise per image; render the triplet.
        ws, noise = sample(S, per_rank, cfg.loss.truncation, device)
        with torch.no_grad():
            e_pos = face(S.synthesis(ws, noise=noise).img)
            e_neg = face(negative.synthesis(ws, noise=noise).img)
        e_anchor = face(blend.synthesis(ws, noise=noise).img)

        # Loss and an optimizer step with gradients averaged over ranks.
        loss, terms = triplet_loss(e_anchor, e_pos, e_neg, cfg.loss.margin)
        optimizer.backward(loss)
        stepped = optimizer.step()
        meters.add_all(terms)
        bad_steps = 0 if stepped else bad_steps + 1
        step += 1
        cur_nimg += cfg.optim.batch
        done = cur_nimg >= total_nimg
        if bad_steps >= cfg.run.max_nonfinite:
            save()
            raise NonFiniteError(f"the triplet loss or its gradients were NaN/Inf {bad_steps} steps in a row; "
                                 "saved the last good state. Lower optim.lr.")
        if not done:  # a stop request (signal, stop file, launcher gone) agreed by every rank
            stop_point(start.stop, dist, save, log.info)

        # Tick: report, grid, checkpoint, export.
        if not done and cur_nimg < tick_nimg + cfg.run.tick_kimg * 1000:
            continue
        tick += 1
        elapsed = time.time() - tick_start
        stats = meters.reduce(dist)
        stats.update({"Progress/kimg": cur_nimg / 1000, "Progress/tick": tick, "Progress/nonfinite_steps": bad_steps,
                      "Timing/sec_per_kimg": elapsed / max((cur_nimg - tick_nimg) / 1000, 1e-9),
                      "Resources/gpu_mem_gib": dist.max_memory_gib(),
                      "Resources/opt_state_mib": optimizer.state_bytes() / 2**20})  # this rank's share
        log.stats(step, stats, kimg=cur_nimg / 1000)
        log.info(f"tick {tick} kimg {cur_nimg / 1000:.3f} step {step} triplet {stats['Loss/triplet']:.4f} "
                 f"d_pos {stats['Loss/d_pos']:.4f} d_neg {stats['Loss/d_neg']:.4f} "
                 f"sec/kimg {stats['Timing/sec_per_kimg']:.2f}")
        if dist.is_main:
            log.image_grid(triplet_grid(S, blend, negative, *grid), f"triplets-tick{tick:05d}", step,
                           nrow=cfg.run.grid_size)
        tick_nimg, tick_start = cur_nimg, time.time()
        if tick % cfg.run.ckpt_ticks == 0 or done:
            save()
        if dist.is_main and ((cfg.run.export_ticks and tick % cfg.run.export_ticks == 0) or done):
            for name, fmt in (("network.pt", "toonmix"), ("network-rosinality.pt", "rosinality")):
                save_checkpoint(start.run_dir / name, fmt, g_ema=blend)
            log.info(f"exported the blend to {start.run_dir}/network.pt and network-rosinality.pt")
    dist.barrier()
    return log


def grid_latents(cfg: TripletConfig, S: Generator, device) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Fixed latents and noise for the grid (the same in every tick and run)."""
    g = torch.Generator().manual_seed(cfg.run.seed)
    z = torch.randn(cfg.run.grid_size, S.style_dim, generator=g).to(device)
    with torch.no_grad():
        ws = S.truncate(S.broadcast(S.mapping(z)), cfg.loss.truncation)
    noise = [torch.randn((cfg.run.grid_size, *getattr(S.noises, f"noise_{i}").shape[1:]), generator=g).to(device)
             for i in range(S.num_layers)]
    return ws, noise


@torch.no_grad()
def triplet_grid(S: Generator, blend: Generator, negative: Generator, ws: torch.Tensor, noise: list):
    """uint8 rows: positives, the trained blend, negatives (one column per grid latent)."""
    was = blend.training
    blend.eval()
    rows = [G.synthesis(ws, noise=noise).img for G in (S, blend, negative)]
    blend.train(was)
    return to_uint8(torch.cat(rows))
