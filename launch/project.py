"""Projects images into W+ (or W) of a generator by optimisation, on every rank.

    accelerate launch -m launch.project --ckpt weights/stylegan2-ffhq-config-f.pt --images photos/ \\
        --out runs/projections --weights-dir weights
    accelerate launch -m launch.project --ckpt ffhq.pt --g-target runs/00003-gan/network.pt \\
        --swap-res 32 --images characters/hero --out runs/hero-proj --weights-dir weights --video

The schedule is stylegan2-ada-pytorch's projector (1000 steps, Adam at 0.1 with
a linear ramp-up and cosine ramp-down, decaying latent noise, optimised noise
maps with the autocorrelation penalty), with pixel L2 plus LPIPS (its VGG
variant by default, as the projector's perceptual distance). With --g-target
the images are projected into G_swap (the layers below --swap-res from --ckpt,
the rest from --g-target), as CDSM inverts its references.

Writes to --out, per image <stem>: <stem>.npz (w: the W+ latent [n_latent,
style_dim]; noise_<i>: the optimised noise maps; loss: the objective per
step), <stem>.png (the projection), sheets/<stem>.png (target beside
projection), and with --video <stem>.mp4 (target beside the projection every
--video-every steps; H.264 through imageio-ffmpeg, --video-format gif or a
missing imageio-ffmpeg: <stem>.gif); then report.json (final objective and L2 per image, and
the files that were refused). Ranks take whole batches; each batch's random
draws are seeded by --seed and its position, so results do not depend on the
number of ranks.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from launch._args import add_generator_args, add_lpips_args, add_video_args, load_generator


def build_parser() -> argparse.ArgumentParser:
    from eval.projection import ProjectionConfig

    d = ProjectionConfig()
    p = argparse.ArgumentParser(prog="accelerate launch -m launch.project", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_generator_args(p)
    p.add_argument("--images", required=True, help="folder of images (square crops)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", type=int, default=d.steps, help="optimisation steps (stylegan2-ada: 1000)")
    p.add_argument("--space", choices=["w+", "w"], default=d.space, help="one latent per W+ entry, or one W")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    p.add_argument("--l2", type=float, default=d.l2, help="weight of the pixel MSE")
    p.add_argument("--lpips", type=float, default=d.lpips, help="weight of LPIPS")
    p.add_argument("--noise-regularize", type=float, default=d.noise_regularize,
                   help="weight of the noise maps' autocorrelation penalty")
    p.add_argument("--fixed-noise", action="store_true", help="keep the noise maps at their seeded start")
    p.add_argument("--w-avg-samples", type=int, default=d.w_avg_samples, help="samples for the mean W and its std")
    p.add_argument("--batch", type=int, default=4, help="images optimised together per rank")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds every random draw (with the batch position)")
    p.add_argument("--size", type=int, default=None, help="project at this side (default: the generator's)")
    p.add_argument("--min-side", type=int, default=64, help="smallest accepted image side in pixels")
    add_video_args(p, "the optimisation (the target beside the projection)")
    p.add_argument("--video-every", type=int, default=10, help="steps between video frames")
    add_lpips_args(p, default_net="vgg")
    return p


def load_lpips(args: argparse.Namespace, device):
    """The LPIPS module from --lpips-backbone/--lpips-lin or --weights-dir; None with --no-lpips."""
    from trainer.networks.lpips import LPIPS
    from trainer.run.inputs import weight_path

    if args.no_lpips or args.lpips == 0:
        return None
    backbone = weight_path(args.lpips_backbone, args.weights_dir, "alexnet" if args.lpips_net == "alex" else "vgg16")
    lin = weight_path(args.lpips_lin, args.weights_dir, f"lpips_{args.lpips_net}")
    return LPIPS.from_files(args.lpips_net, backbone, lin, check_hash=not args.no_check_hash).to(device)


def _frames(targets, every: bool):
    """A snapshot callback collecting [target | projection] uint8 frames per image, or None."""
    import torch

    from datasets.imageio import to_uint8

    frames: list[list] = [[] for _ in range(len(targets))]

    def add(_step: int, imgs: torch.Tensor) -> None:
        pairs = to_uint8(torch.cat([targets.to(imgs.device), imgs], dim=3).cpu())
        for k, im in enumerate(pairs):
            frames[k].append(im)

    return (add if every else None), frames


def save_outputs(out: Path, stem: str, target, res, k: int, frames: list, video_format: str = "mp4") -> dict:
    """Writes one image's files; returns its report entry."""
    import numpy as np
    import torch

    from datasets.imageio import save_png, save_video, to_uint8

    losses = np.asarray(res.losses, dtype=np.float64)  # the batch mean per step (the images share the steps)
    arrays = {"w": res.latents[k].cpu().numpy(), "loss": losses,
              **{f"noise_{i}": n[k].cpu().numpy() for i, n in enumerate(res.noise)}}
    tmp = out / f".{stem}.npz"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    tmp.replace(out / f"{stem}.npz")
    save_png(to_uint8(res.images[k:k + 1].cpu())[0], out / f"{stem}.png")
    save_png(to_uint8(torch.cat([target[None], res.images[k:k + 1].cpu()], dim=3))[0], out / "sheets" / f"{stem}.png")
    if frames:
        save_video(frames, out / stem, fps=10, fmt=video_format)
    l2 = float((res.images[k].cpu() - target).square().mean())
    return {"stem": stem, "l2": l2, "final_loss": float(losses[-1])}


def run(args: argparse.Namespace, dist) -> dict:
    from tqdm import tqdm

    from datasets.imageio import image_files
    from eval.cdsm_run import FaceCheck, my_batches, read_batch
    from eval.projection import ProjectionConfig, project

    if args.steps < 1 or args.batch < 1 or args.video_every < 1:
        raise ValueError("--steps, --batch and --video-every must be >= 1")
    cfg = ProjectionConfig(steps=args.steps, lr=args.lr, noise_regularize=args.noise_regularize,
                           optimize_noise=not args.fixed_noise, l2=args.l2, lpips=args.lpips, space=args.space,
                           w_avg_samples=args.w_avg_samples, seed=args.seed)
    out = Path(args.out)
    (out / "sheets").mkdir(parents=True, exist_ok=True)
    G = load_generator(args, dist.device)
    lpips = load_lpips(args, dist.device)
    files = image_files(args.images, recursive=False)
    if not files:
        raise FileNotFoundError(f"{args.images}: no images")
    size, check = args.size or G.size, FaceCheck(args.min_side)
    entries, refused = [], []
    for index in tqdm(my_batches(len(files), args.batch, dist.rank, dist.world), desc="project", unit="batch",
                      disable=not dist.is_main):
        b = read_batch(files, index, size, check)
        refused += b.refused
        if b.images is None:
            continue
        snap, frames = _frames(b.images, args.video)
        # Seeded by the batch's global position: the same draws on any number of ranks.
        res = project(G, b.images, lpips, replace(cfg, seed=args.seed + index[0] // args.batch),
                      snapshot=snap, snapshot_every=args.video_every)
        for k, i in enumerate(b.index):
            entries.append(save_outputs(out, files[i].stem, b.images[k], res, k, frames[k], args.video_format))
    gathered = dist.gather_objects((entries, refused))
    if not dist.is_main:
        return {}
    report = {"images": sorted((e for g in gathered for e in g[0]), key=lambda e: e["stem"]),
              "refused": [r for g in gathered for r in g[1]], "steps": args.steps, "space": args.space,
              "lpips": None if lpips is None else args.lpips_net, "generator": args.ckpt,
              "g_target": args.g_target, "swap_res": args.swap_res if args.g_target else None}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from launch._args import run_on_every_rank
    from trainer.model_io import CheckpointError

    dist, report = run_on_every_rank(run, args, (FileNotFoundError, ValueError, CheckpointError))
    if report is None:
        return 2
    if dist.is_main:
        for f, why in report["refused"]:
            print(f"skipped: {f}: {why}", file=sys.stderr)
        l2 = [e["l2"] for e in report["images"]]
        print(json.dumps({"images": len(l2), "refused": len(report["refused"]),
                          "mean_l2": sum(l2) / len(l2) if l2 else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
