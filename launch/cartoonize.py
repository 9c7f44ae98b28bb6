"""Cartoonizes face photos with Cross-Domain Style Mixing, beside the toonify and W+ mixing baselines.

    accelerate launch -m launch.cartoonize --photos photos/ --character hero \\
        --target-data data/characters --encoder-source runs/00004-encoder/encoder-restyle.pt \\
        --encoder-target runs/00005-encoder/encoder-restyle.pt --g-source ffhq.pt \\
        --g-target runs/00003-gan/network.pt --out cartoons/ --detector inception-2015-12-05.pt

Steps: G_swap (mapping and layers below --swap-res from --g-source, the rest
from --g-target); the character's latent from the look-up table (--lut, built
and saved when missing: --k references per character sampled with --seed,
inverted by the target encoder or by projection into G_swap, averaged in W+,
all ranks in parallel); each photo inverted by the source encoder; styles
mixed in StyleSpace (conv styles of W+ index < --mix-index (m) from the photo, the rest
and every tRGB style from the character) and decoded with fixed noise.

Writes to --out: cdsm/, toonify/, wplus/ (one PNG per photo and method),
sheets/ (per row: photo, reconstruction, CDSM, toonify, W+ mix, then
references), lut.pt (unless --lut elsewhere) and report.json (FID/KID of each
method's cartoons against the character's images when a detector is given,
identity similarity to the photo when --arcface is given, and refused files).
Photos that are not face-sized or unreadable are listed and skipped; the rest
of their batch goes on.

--bundle FILE (from launch.bundle) takes the generators, encoders, swap
resolution, CDSM settings and look-up table from one file instead of
--g-source/--g-target/--encoder-source/--encoder-target/--lut/--swap-res/
--mix-index/--no-trgb-replace/--noise-seed (giving one of those too is an
error). The bundle's table is used as it is: a character it does not hold is
an error naming the ones it has (build the entry with the separate files, then
pack a new bundle). Its thumbnails are the sheets' references.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

METHODS = ("cdsm", "toonify", "wplus")


def build_parser() -> argparse.ArgumentParser:
    from launch._args import add_cdsm_args
    from launch.fid import add_detector_args

    p = argparse.ArgumentParser(prog="accelerate launch -m launch.cartoonize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", required=True, help="folder of face photos (aligned crops)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--character", help="a character in --lut or a sub-folder name of --target-data")
    who.add_argument("--targets", help="folder with one character's images (the folder name names it)")
    p.add_argument("--target-data", help="folder with one sub-folder of images per character")
    p.add_argument("--bundle", help="a launch.bundle file in place of the networks, settings and --lut")
    add_cdsm_args(p, encoder_target="target encoder for the table (needed unless --invert projection)",
                  lut="look-up table file (default: <out>/lut.pt); missing characters are added",
                  iters="encoder refinement passes (ReStyle: 5; with --bundle: its own)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--k", type=int, default=50, help="references averaged per character (CDSM: 50)")
    p.add_argument("--seed", type=int, default=0, help="seeds the reference sampling")
    p.add_argument("--invert", choices=["encoder", "projection"], default="encoder",
                   help="how references are inverted: target encoder, or optimisation in G_swap")
    p.add_argument("--projection-steps", type=int, default=1000, help="projection steps per reference batch")
    p.add_argument("--references", type=int, default=3, help="character references shown per sheet row")
    p.add_argument("--min-side", type=int, default=64, help="smallest accepted photo side in pixels")
    p.add_argument("--arcface", help="model_ir_se50.pth for identity similarity (skipped when absent)")
    p.add_argument("--lpips-backbone", help="alexnet-owt-7be5be79.pth for projection's LPIPS term")
    p.add_argument("--lpips-lin", help="the lpips package's alex.pth for projection's LPIPS term")
    p.add_argument("--kid", action="store_true", help="also KID of each method's cartoons")
    add_detector_args(p)
    p.set_defaults(batch=8)
    return p


BUNDLED = ("g_source", "g_target", "encoder_source", "encoder_target", "lut", "swap_res", "mix_index",
           "noise_seed")
"""Options a bundle replaces (and --no-trgb-replace)."""


def check_sources(args: argparse.Namespace) -> str | None:
    """What is wrong with the choice between --bundle and the separate files (None: nothing);
    fills in the defaults the separate files use."""
    if args.bundle:
        given = [f"--{k.replace('_', '-')}" for k in BUNDLED if getattr(args, k) is not None]
        given += ["--no-trgb-replace"] if args.no_trgb_replace else []
        if given:
            return f"--bundle holds {', '.join(given)}: give the bundle or these options, not both"
        return None
    missing = [f"--{k.replace('_', '-')}" for k in ("encoder_source", "g_source", "g_target") if not getattr(args, k)]
    if missing:
        return f"without --bundle, {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required"
    for key, default in (("iters", 5), ("swap_res", 32), ("mix_index", 6), ("noise_seed", 0)):
        if getattr(args, key) is None:
            setattr(args, key, default)
    return None


def _from_bundle(args: argparse.Namespace, device):
    """The bundle's networks on ``device``; its settings written into ``args`` for the rest of the run."""
    from eval.bundle import read_bundle

    b = read_bundle(args.bundle)
    args.swap_res, args.mix_index, args.noise_seed = b.mix.swap_resolution, b.mix.m, b.mix.noise_seed
    args.no_trgb_replace = not b.mix.trgb_from_character
    args.iters = args.iters if args.iters is not None else b.iters
    args.loaded_bundle = b
    enc_t = b.encoder_target.to(device) if b.encoder_target is not None else None
    return b.encoder_source.to(device), enc_t, b.G_swap.to(device)


def _networks(args: argparse.Namespace, device):
    """(source encoder, target encoder or None, G_swap) on ``device``."""
    if args.bundle:
        return _from_bundle(args, device)
    from trainer.encoder.formats import load_encoder
    from trainer.model_io import load_checkpoint
    from trainer.networks.swap import g_swap

    enc_s = load_encoder(args.encoder_source).to(device)
    enc_t = load_encoder(args.encoder_target).to(device) if args.encoder_target else None
    if args.invert == "encoder" and enc_t is None:
        raise ValueError("--invert encoder needs --encoder-target (or use --invert projection)")
    G = g_swap(load_checkpoint(args.g_source).generator(), load_checkpoint(args.g_target).generator(),
               args.swap_res).to(device)
    return enc_s, enc_t, G


def _inverter(args: argparse.Namespace, enc_t, G):
    """images [N, 3, S, S] -> W+ for the character table."""
    import torch

    from eval.projection import ProjectionConfig, project

    if args.invert == "encoder":
        return torch.no_grad()(lambda x: enc_t.invert(x, args.iters)[-1].latent)
    lpips = None
    if args.lpips_backbone or args.lpips_lin:
        from trainer.networks.lpips import LPIPS

        lpips = LPIPS.from_files("alex", args.lpips_backbone, args.lpips_lin, not args.no_check_hash).to(G.input.input.device)
    else:
        print("[cartoonize] projection without LPIPS weights: L2 only", file=sys.stderr)
    cfg = ProjectionConfig(steps=args.projection_steps, lpips=1.0 if lpips else 0.0)
    return lambda x: project(G, x, lpips, cfg).latents


def character_images(args: argparse.Namespace) -> tuple[str, list[Path] | None]:
    """(character name, its image files when a folder holds them)."""
    from datasets.imageio import image_files
    from eval.cdsm_run import character_folders

    if args.targets:
        return Path(args.targets).resolve().name, image_files(args.targets, recursive=False)
    if args.target_data:
        chars = character_folders(args.target_data)
        return args.character, chars.get(args.character)
    return args.character, None


def character_latent(args, dist, G, enc_t, size: int, check, out: Path):
    """The character's table entry, built on every rank when the table lacks it."""
    from eval.cdsm import LookUpTable, generator_fingerprint
    from eval.cdsm_run import build_entries, update_table

    name, files = character_images(args)
    if args.bundle:
        table = args.loaded_bundle.table
        if name not in table:
            raise KeyError(f"{args.bundle}: no character {name!r} in the bundle; it holds: "
                           f"{', '.join(table.names()) or '(none)'}")
        return table.get(name), []
    path = Path(args.lut) if args.lut else out / "lut.pt"
    fp = generator_fingerprint(G)
    table = LookUpTable.load(path, fp) if path.is_file() else LookUpTable(fp, {"swap_res": args.swap_res})
    if name in table:  # to rebuild an entry, delete the table or name another --lut
        return table.get(name), []
    if files is None:  # neither the table nor the data know it
        known = sorted(set(table.names()) | set(_data_names(args)))
        raise KeyError(f"unknown character {name!r}; known: {', '.join(known) or '(none)'}")
    built = build_entries({name: files}, args.k, args.seed, size, _inverter(args, enc_t, G), dist,
                          args.batch, args.invert, check)
    answer = None
    if dist.is_main:  # only the main process holds the averages: its errors travel to every rank
        try:
            entries, refused = built()
            table.meta.update({"k": args.k, "seed": args.seed, "method": args.invert})
            update_table(table, entries, path)
            answer = (entries[0], refused)
        except ValueError as e:
            answer = str(e)
    answer = dist.broadcast_object(answer)
    if isinstance(answer, str):
        raise ValueError(answer)
    return answer


def _data_names(args) -> list[str]:
    from eval.cdsm_run import character_folders

    return list(character_folders(args.target_data)) if args.target_data else []


def cartoonize_photos(args, dist, enc_s, G, entry, size: int, check, out: Path) -> tuple[int, list, dict | None]:
    """Writes every method's output for this rank's photos.

    Returns (photos done, refused files, mean identity similarity per method or None).
    """
    import torch
    from tqdm import tqdm

    from datasets.imageio import image_files, save_png, to_uint8
    from eval.cdsm import MixConfig, cartoonize, toonify, wplus_mix
    from eval.cdsm_run import my_batches, read_batch, sheet_row

    cfg = MixConfig(args.mix_index, not args.no_trgb_replace, args.swap_res, args.noise_seed)
    cfg.check(G)
    files = image_files(args.photos, recursive=False)
    if not files:
        raise FileNotFoundError(f"{args.photos}: no photos")
    refs = _references(args, entry, size, check)
    w_char = entry.latent[None].to(dist.device)
    ident = Identity(args, dist.device)
    done, refused = 0, []
    for index in tqdm(my_batches(len(files), args.batch, dist.rank, dist.world), desc="cartoonize", unit="batch",
                      disable=not dist.is_main):
        b = read_batch(files, index, size, check)
        refused += b.refused
        if b.images is None:
            continue
        with torch.no_grad():
            x = b.images.to(dist.device)
            last = enc_s.invert(x, args.iters)[-1]
            outs = {"cdsm": cartoonize(G, last.latent, w_char, cfg), "toonify": toonify(G, last.latent, cfg),
                    "wplus": wplus_mix(G, last.latent, w_char, cfg)}
            ident.add(x, outs)
        for j, i in enumerate(b.index):
            stem = files[i].stem
            for method, imgs in outs.items():
                save_png(to_uint8(imgs[j:j + 1].cpu())[0], out / method / f"{stem}.png")
            cells = [b.images[j], last.image[j].cpu()] + [outs[m][j].cpu() for m in METHODS] + refs
            save_png(to_uint8(sheet_row(cells, size)[None])[0], out / "sheets" / f"{stem}.png")
        done += len(b.index)
    return done, refused, ident.means(dist)


def _references(args, entry, size: int, check) -> list:
    """The character images a sheet row shows: the bundle's thumbnails, else the table's files."""
    import torch

    from eval.cdsm_run import read_batch

    if args.bundle:
        thumbs = args.loaded_bundle.references.get(entry.name)
        if thumbs is not None:
            x = torch.from_numpy(thumbs[:args.references]).permute(0, 3, 1, 2).float() / 127.5 - 1
            return list(x)
    shown = read_batch([Path(p) for p in entry.images], list(range(min(args.references, len(entry.images)))),
                       size, check).images
    return list(shown) if shown is not None else []


class Identity:
    """Running sums of the ArcFace cosine similarity between photos and each method's output."""

    def __init__(self, args, device):
        import torch

        from trainer.networks.face_id import FaceID

        self.net = FaceID.from_file(args.arcface, not args.no_check_hash).to(device) if args.arcface else None
        self.sums = torch.zeros(len(METHODS) + 1, dtype=torch.float64, device=device)

    def _embed(self, x):
        import torch.nn.functional as F

        x = F.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False)  # the face crop's frame
        return F.normalize(self.net(x), dim=1)

    def add(self, photos, outs: dict) -> None:
        if self.net is None:
            return
        e = self._embed(photos)
        for k, m in enumerate(METHODS):
            self.sums[k] += (e * self._embed(outs[m])).sum()
        self.sums[-1] += len(photos)

    def means(self, dist) -> dict[str, float] | None:
        if self.net is None:
            return None
        dist.all_reduce_sum(self.sums)
        n = float(self.sums[-1])
        return {m: float(self.sums[k]) / n for k, m in enumerate(METHODS)} if n else None


def style_metrics(args, dist, out: Path, ref_files: list[Path] | None) -> dict[str, dict]:
    """FID (and KID) of each method's cartoons against the character's images, when a detector is given."""
    from eval.features import FolderSource
    from eval.fid import MetricConfig, compare, measure
    from launch.fid import detector_path, load_detector

    if not detector_path(args) or not ref_files:
        return {}
    detector, sha = load_detector(args, dist.device)
    cfg = MetricConfig(args.preprocess, args.ddof, args.batch, args.kid)
    real = measure(FolderSource(str(ref_files[0].parent), files=ref_files), detector, dist, cfg, sha, None,
                   desc="references")
    fakes = {m: measure(FolderSource(str(out / m)), detector, dist, cfg, sha, None, desc=m) for m in METHODS}
    # Compared after every collective: an error here (too few images for KID) cannot strand a rank.
    return {m: compare(real, fake, cfg) for m, fake in fakes.items()} if dist.is_main else {}


def run(args: argparse.Namespace, dist) -> dict:
    from eval.cdsm_run import FaceCheck

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    check = FaceCheck(args.min_side)
    enc_s, enc_t, G = _networks(args, dist.device)
    size = enc_s.size
    entry, refused_refs = character_latent(args, dist, G, enc_t, size, check, out)
    done, refused, ids = cartoonize_photos(args, dist, enc_s, G, entry, size, check, out)
    dist.barrier()  # every rank's PNGs are on disk before anyone measures the folders
    _, ref_files = character_images(args)
    # A bundle's table may name files of another machine: only those still here are measured.
    metrics = style_metrics(args, dist, out, ref_files or [Path(p) for p in entry.images if Path(p).is_file()])
    counts = dist.gather_objects((done, refused))
    if not dist.is_main:
        return {}
    report = {"character": entry.name, "references": len(entry.images), "k": entry.k, "method": entry.method,
              "photos": sum(c[0] for c in counts), "refused": [r for c in counts for r in c[1]] + refused_refs,
              "settings": {"m": args.mix_index, "trgb_replace": not args.no_trgb_replace, "swap_res": args.swap_res,
                           "noise_seed": args.noise_seed, "iters": args.iters},
              "metrics": {m: {**metrics.get(m, {}), **({"id_similarity": ids[m]} if ids else {})}
                          for m in METHODS}}
    (out / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = check_sources(args)
    if problem:
        parser.error(problem)
    from launch._args import run_on_every_rank
    from trainer.model_io import CheckpointError

    dist, report = run_on_every_rank(run, args, (FileNotFoundError, ValueError, KeyError, CheckpointError))
    if report is None:
        return 2
    if dist.is_main:
        for f, why in report["refused"]:
            print(f"skipped: {f}: {why}", file=sys.stderr)
        print(json.dumps({"character": report["character"], "photos": report["photos"],
                          "refused": len(report["refused"]), "metrics": report["metrics"]}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
