"""StyleCLIP latent optimisation: edit latents towards a text prompt, on every rank.

    accelerate launch -m launch.styleclip --ckpt ffhq.pt --clip weights/clip-vit-base-patch32 \\
        --prompt "a smiling face with red hair" --seeds 0-7 --truncation 0.7 --out runs/red-hair --video
    accelerate launch -m launch.styleclip --ckpt ffhq.pt --g-target runs/00003-gan/network.pt --swap-res 32 \\
        --clip weights/clip-vit-base-patch32 --prompt "a surprised face" --lut cartoons/lut.pt \\
        --character hero --arcface weights/model_ir_se50.pth --id-lambda 0.005 --out runs/hero-surprised
    accelerate launch -m launch.styleclip --ckpt ffhq.pt --direction runs/red-hair/direction.npz \\
        --latents runs/projections/*.npz --out runs/red-hair-applied     (no optimising)

Latents: --seeds (mapped, truncated), --latents (launch.project's .npz,
launch.invert's or any W/W+ .npy), or --lut with --character (a look-up
table entry of launch.cartoonize; the generator must be the table's G_swap).
Each is optimised on its own (eval/styleclip.py: CLIP distance + --l2-lambda
||w - w0||^2 + --id-lambda ArcFace identity, Adam with StyleCLIP's schedule),
batched over ranks. The edit direction (optimised minus start) is rendered at
--strengths, one row per latent. With --direction FILE the saved directions
are applied instead: the one of latent --direction-index, or their mean.

Writes to --out: sheet.png (rows: latents, columns: strengths), direction.npz
(per_latent [N, L, D], mean [L, D], start w0 [N, L, D], prompt),
edited.npz (w at strength 1, for launch.cartoonize-style reuse), report.json
(per latent: CLIP similarity before and after, L2 change of W+, ArcFace
similarity with --arcface, final loss; the losses per step), and with
--video sweep.mp4 (every latent from strength 0 to the largest and back).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from launch._args import add_generator_args, add_video_args, int_list, latents_from, load_generator


def _finite(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.styleclip", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_generator_args(p)
    p.add_argument("--clip", help="CLIP folder in Hugging Face's layout (openai/clip-vit-base-patch32)")
    p.add_argument("--prompt", help="the text the edit should match")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--seeds", type=int_list, default=None, help="z seeds (default 0-3)")
    src.add_argument("--latents", nargs="+", help="W/W+ files: launch.project's .npz, .npy")
    src.add_argument("--lut", help="a look-up table (launch.cartoonize); with --character")
    p.add_argument("--character", help="with --lut: the character whose averaged W+ is edited")
    p.add_argument("--truncation", type=float, default=0.7, help="truncation psi for --seeds")
    p.add_argument("--direction", help="apply this direction.npz instead of optimising")
    p.add_argument("--direction-index", default="mean", help="with --direction: a latent's index, or mean")
    p.add_argument("--steps", type=int, default=300, help="Adam steps (StyleCLIP: 300)")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (StyleCLIP: 0.1)")
    p.add_argument("--l2-lambda", type=float, default=0.008, help="weight of ||w - w0||^2 (StyleCLIP: 0.008)")
    p.add_argument("--id-lambda", type=float, default=0.0, help="weight of the ArcFace term (StyleCLIP faces: 0.005)")
    p.add_argument("--arcface", help="model_ir_se50.pth: the identity term and its similarity in the report")
    p.add_argument("--no-check-hash", action="store_true", help="do not verify the ArcFace file's hash")
    p.add_argument("--space", choices=["wplus", "w"], default="wplus", help="optimise W+ or one W per latent")
    p.add_argument("--strengths", type=_finite, nargs="+", default=[0.0, 0.5, 1.0, 1.5],
                   help="sheet columns, e.g. --strengths -1 0 1 2")
    p.add_argument("--batch", type=int, default=4, help="latents per optimisation batch")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default=None, help="cpu or cuda, one process only (default: the rank's device)")
    add_video_args(p, "each latent swept from strength 0 to the largest and back")
    return p


def start_latents(args: argparse.Namespace, G):
    """W+ [N, L, D] to edit, and what each row is (seed, file or character)."""
    if args.lut:
        from eval.cdsm import LookUpTable, generator_fingerprint

        if not args.character:
            raise ValueError("--lut needs --character NAME")
        table = LookUpTable.load(args.lut, expect_fingerprint=generator_fingerprint(G))
        return table.get(args.character).latent[None].to(G.w_avg.device), [f"character {args.character}"]
    if args.character:
        raise ValueError("--character needs --lut")
    seeds = args.seeds or [0, 1, 2, 3]
    ws = latents_from(G, seeds, args.latents, args.truncation, G.w_avg.device)
    names = [f"latent {i}" for i in range(len(ws))] if args.latents else [f"seed {s}" for s in seeds]
    return ws, names


def load_direction(path: str, index: str, G):
    """The saved direction to apply: [L, D] of latent ``index`` or the mean, and its prompt."""
    import numpy as np
    import torch

    try:
        z = np.load(path)
        per, mean, prompt = z["per_latent"], z["mean"], str(z["prompt"])
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise ValueError(f"{path}: not a direction file of launch.styleclip ({type(e).__name__}: {e})") from None
    want = (G.n_latent, G.style_dim)
    if per.ndim != 3 or per.shape[1:] != want or mean.shape != want:
        raise ValueError(f"{path}: directions of shape {per.shape[1:]} (mean {mean.shape}), this generator's "
                         f"W+ is {want}")
    if index == "mean":
        return torch.from_numpy(mean).float(), prompt
    if not index.isdigit() or int(index) >= len(per):
        raise ValueError(f"--direction-index {index!r}: 'mean' or 0-{len(per) - 1}")
    return torch.from_numpy(per[int(index)]).float(), prompt


def check(args: argparse.Namespace, dist) -> None:
    """Option errors every rank finds alike, before any work."""
    if args.batch < 1:
        raise ValueError("--batch must be >= 1")
    if args.direction is None and (args.prompt is None or not args.prompt.strip()):
        raise ValueError("an empty prompt: give --prompt TEXT (or --direction FILE to apply a saved edit)")
    if args.direction is None and args.direction_index != "mean":
        raise ValueError("--direction-index needs --direction FILE")
    if args.id_lambda > 0 and not args.arcface:
        raise ValueError("--id-lambda > 0 needs the ArcFace network: --arcface model_ir_se50.pth")
    if args.device and dist.world > 1:
        raise ValueError("--device is for one process; under a launcher each rank uses its own device")


def run(args: argparse.Namespace, dist) -> dict:
    """Every rank optimises its batches; the main process writes the outputs. Any rank's error
    (a file one node lacks, a bad latent) travels in the one gather, so all ranks stop alike."""
    import torch

    from trainer.model_io import CheckpointError

    found, error = {}, None
    try:
        G, w_all, names, found, applied_prompt = _edit_my_batches(args, dist)
    except (ValueError, KeyError, RuntimeError, OSError, CheckpointError) as e:
        error = f"{type(e).__name__}: {e}"
    gathered = dist.gather_objects((found, error))
    errors = [e for _, e in gathered if e]
    if errors:
        raise ValueError(errors[0].removeprefix("ValueError: "))
    if not dist.is_main:
        return {}
    found = {i: e for g, _ in gathered for i, e in g.items()}
    direction = torch.stack([found[i]["direction"] for i in range(len(w_all))]).to(w_all.device)
    return write_outputs(args, G, w_all.detach(), direction, names, found,
                         args.prompt if args.direction is None else applied_prompt)


def _edit_my_batches(args: argparse.Namespace, dist):
    """(G, every start latent, their names, this rank's results by latent index, the applied prompt)."""
    import torch
    from tqdm import tqdm

    from eval.cdsm_run import my_batches
    from eval.clip import CLIPScorer
    from eval.styleclip import StyleCLIPConfig, measure, optimise
    from trainer.networks.face_id import FaceID

    check(args, dist)
    cfg = StyleCLIPConfig(args.steps, args.lr, args.l2_lambda, args.id_lambda, args.space)
    device = torch.device(args.device) if args.device else dist.device
    G = load_generator(args, device)
    fixed, applied_prompt = load_direction(args.direction, args.direction_index, G) if args.direction else (None, None)
    clip = CLIPScorer.from_folder(args.clip).to(device) if (args.clip or fixed is None) else None
    text = clip.text([args.prompt]) if clip is not None and args.prompt else None
    face_id = FaceID.from_file(args.arcface, not args.no_check_hash).to(device) if args.arcface else None
    w_all, names = start_latents(args, G)
    if fixed is None and cfg.space == "w" and not torch.equal(w_all, w_all[:, :1].expand_as(w_all)):
        raise ValueError("--space w needs start latents whose W+ entries are all equal (seeds, W files); "
                         "use --space wplus for projected, inverted or look-up-table W+")
    found = {}
    batches = my_batches(len(w_all), args.batch, dist.rank, dist.world)
    with tqdm(total=len(batches) * cfg.steps, desc="styleclip (this rank's latents)", unit="step",
              disable=not dist.is_main or fixed is not None) as steps:
        for index in batches:
            w0 = w_all[index]
            if fixed is None:
                edit = optimise(G, clip, text, w0, cfg, face_id, progress=lambda s, loss: (
                    steps.update(1), steps.set_postfix(loss=f"{loss:.4f}")))
                d, losses = edit.direction, edit.losses.T.tolist()
            else:
                d, losses = fixed.to(device)[None].expand_as(w0), [[] for _ in index]
            stats = measure(G, clip, text, w0, d, face_id)
            for k, i in enumerate(index):
                found[i] = {"direction": d[k].cpu(), "losses": losses[k], **{m: v[k] for m, v in stats.items()}}
    return G, w_all, names, found, applied_prompt


def write_outputs(args: argparse.Namespace, G, w0, direction, names: list[str], found: dict,
                  prompt: str | None) -> dict:
    """Renders everything first, then writes the files, report.json last (an old one is removed
    first, so a failed run never leaves a report beside other files)."""
    import numpy as np

    from datasets.imageio import grid, save_png, save_video
    from eval.style_mix import render
    from eval.styleclip import at_strength

    out = Path(args.out)
    (out / "report.json").unlink(missing_ok=True)
    cols = [render(G, at_strength(w0, direction, s), args.batch) for s in args.strengths]
    sheet = np.concatenate([np.concatenate([c[i] for c in cols], axis=1) for i in range(len(w0))], axis=0)
    frames = None
    if args.video:  # every latent in a square-ish grid per frame, strength 0 to the largest and back
        top = max(args.strengths)
        frames = [grid(render(G, at_strength(w0, direction, top * t / 15), args.batch)) for t in range(16)]
    save_png(sheet, out / "sheet.png")
    np.savez(out / "direction.npz", per_latent=direction.cpu().numpy(), mean=direction.mean(0).cpu().numpy(),
             w0=w0.cpu().numpy(), prompt=np.array(prompt or ""))
    np.savez(out / "edited.npz", w=at_strength(w0, direction, 1.0).cpu().numpy())
    video = save_video(frames + frames[-2:0:-1], out / "sweep", fps=10, fmt=args.video_format) if frames else None
    keys = ("clip_before", "clip_after", "l2_change", "id_similarity")
    report = {"prompt": prompt, "generator": args.ckpt, "g_target": args.g_target,
              "applied_direction": args.direction, "strengths": args.strengths,
              "settings": {k: getattr(args, k) for k in ("steps", "lr", "l2_lambda", "id_lambda", "space")},
              "latents": [{"name": names[i], **{k: found[i][k] for k in keys if k in found[i]},
                           "final_loss": found[i]["losses"][-1] if found[i]["losses"] else None,
                           "losses": found[i]["losses"]} for i in range(len(names))],
              "sheet": str(out / "sheet.png"), "video": video and str(video)}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from launch._args import run_on_every_rank
    from trainer.model_io import CheckpointError

    dist, report = run_on_every_rank(run, args, (OSError, ValueError, KeyError, RuntimeError, CheckpointError))
    if report is None:
        return 2
    if dist.is_main:
        rows = report["latents"]
        summary = {"latents": len(rows), "sheet": report["sheet"], "video": report["video"]}
        for k in ("clip_before", "clip_after", "id_similarity"):
            if rows and k in rows[0]:
                summary[f"mean_{k}"] = round(sum(r[k] for r in rows) / len(rows), 4)
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
