"""Packs what cartoonizing needs into one file, for `launch.cartoonize --bundle` and `eval.bundle.Cartoonizer`.

    python -m launch.bundle --out toonify.bundle --g-source ffhq.pt \\
        --g-target runs/00003-gan/network.pt --encoder-source runs/00004-encoder/encoder-restyle.pt \\
        --encoder-target runs/00005-encoder/encoder-restyle.pt --lut cartoons/lut.pt --characters hero,villain
    python -m launch.bundle --out toonify.bundle --run-dir runs/demo     (a `launch.demo` run folder)

The bundle holds the source and target generators and the swap resolution, the
photo encoder, the character encoder (optional: the table already holds the
characters), the CDSM settings (--mix-index, --no-trgb-replace, --noise-seed,
--iters), the look-up table of the chosen characters (--characters, default
all) and up to --thumbs thumbnails per character from the reference files the
table names, where they can still be read.

--run-dir DIR takes DIR/gan_target/network.pt, DIR/encoder_source/encoder-restyle.pt,
DIR/encoder_target/encoder-restyle.pt, DIR/lut.pt, the source generator and swap
resolution from DIR/encoder_target/config.yaml (decoder.source, decoder.swap_res),
and the mix index, passes, noise seed and tRGB rule of the recorded
DIR/stages/cartoonize.json command. Explicit flags override each of them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from launch._args import add_cdsm_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.bundle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the bundle file to write")
    p.add_argument("--run-dir", help="a launch.demo run folder to take the parts from")
    add_cdsm_args(p, encoder_target="target (character) encoder (optional)",
                  lut="look-up table built by launch.cartoonize for this G_swap",
                  swap_res="G_swap's swap resolution (default: the table's, else 32)",
                  iters="source encoder refinement passes (default 5)")
    p.add_argument("--characters", help="comma-separated characters of the table to pack (default: all)")
    p.add_argument("--thumbs", type=int, default=4, help="reference thumbnails per character (0: none)")
    p.add_argument("--thumb-size", type=int, default=128, help="thumbnail side in pixels (never enlarged)")
    return p


def _recorded_command(path: Path) -> dict:
    """Settings of the first launch.cartoonize command a demo stage record holds."""
    if not path.is_file():
        return {}
    cmds = [c for c in json.loads(path.read_text()).get("commands", []) if "launch.cartoonize" in c]
    if not cmds:
        return {}
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # "--noise" is not "--noise-seed"
    for opt in ("--mix-index", "--iters", "--noise-seed", "--swap-res"):
        p.add_argument(opt, type=int)
    p.add_argument("--no-trgb-replace", action="store_true")
    known, _ = p.parse_known_args(shlex.split(cmds[0]))
    return {k: v for k, v in vars(known).items() if v not in (None, False)}


def from_run_dir(run: Path) -> dict:
    """The parts a demo run folder really holds, as option values."""
    import yaml

    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run folder")
    found: dict = {}
    for key, rel in (("g_target", "gan_target/network.pt"), ("encoder_source", "encoder_source/encoder-restyle.pt"),
                     ("encoder_target", "encoder_target/encoder-restyle.pt"), ("lut", "lut.pt")):
        if (run / rel).is_file():
            found[key] = str(run / rel)
    for cfg_file in ("encoder_target/config.yaml", "encoder_source/config.yaml"):
        if (run / cfg_file).is_file():
            decoder = (yaml.safe_load((run / cfg_file).read_text()) or {}).get("decoder") or {}
            if decoder.get("source") and "g_source" not in found:
                found["g_source"], found["g_source_from"] = decoder["source"], run / cfg_file
            if decoder.get("target_mode") == "swap" and decoder.get("swap_res"):
                found.setdefault("swap_res", int(decoder["swap_res"]))
    found.update({k: v for k, v in _recorded_command(run / "stages" / "cartoonize.json").items()
                  if k != "swap_res" or "swap_res" not in found})
    return found


def resolve(args: argparse.Namespace) -> dict:
    """Every option's value: the explicit flag, else the run folder's, else the default."""
    run = from_run_dir(Path(args.run_dir)) if args.run_dir else {}
    opts = {k: getattr(args, k) if getattr(args, k) is not None else run.get(k)
            for k in ("g_source", "g_target", "encoder_source", "encoder_target", "lut", "swap_res", "mix_index",
                      "noise_seed", "iters")}
    opts["no_trgb_replace"] = args.no_trgb_replace or run.get("no_trgb_replace", False)
    if args.g_source is None and "g_source_from" in run and not Path(run["g_source"]).is_file():
        raise FileNotFoundError(f"{run['g_source_from']}: decoder.source {run['g_source']} is not a file from "
                                "here: give --g-source")
    missing = [f"--{k.replace('_', '-')}" for k in ("g_source", "g_target", "encoder_source", "lut") if not opts[k]]
    if missing:
        where = f" and {args.run_dir} does not hold them" if args.run_dir else ""
        raise ValueError(f"a bundle needs {', '.join(missing)}{where}")
    return opts


def thumbnails(files: list[str], n: int, side: int) -> np.ndarray | None:
    """Up to ``n`` of the reference files that can still be read, as uint8 [k, t, t, 3]."""
    from PIL import Image

    from datasets.imageio import open_image

    images = []
    for f in files:
        if len(images) == n:
            break
        try:
            with open_image(f) as im:
                images.append(im.convert("RGB"))
        except (OSError, ValueError):  # moved, deleted or unreadable since the table was built
            continue
    if not images:
        return None
    t = min([side] + [min(im.size) for im in images])
    return np.stack([np.asarray(im.resize((t, t), Image.Resampling.LANCZOS)) for im in images])


def pack(args: argparse.Namespace) -> Path:
    from eval.bundle import Bundle, write_bundle
    from eval.cdsm import LookUpTable, MixConfig, generator_fingerprint
    from trainer.encoder.formats import load_encoder, restyle_dict
    from trainer.model_io import load_checkpoint
    from trainer.networks.swap import g_swap

    o = resolve(args)
    lut_path = Path(o["lut"])
    if not lut_path.is_file():
        raise FileNotFoundError(f"{lut_path}: no such look-up table (launch.cartoonize builds it)")
    table = LookUpTable.load(lut_path)
    names = args.characters.split(",") if args.characters else table.names()
    unknown = [n for n in names if n not in table]
    if unknown or not names:
        raise KeyError(f"{lut_path}: no character(s) {', '.join(unknown) or '(none chosen)'}; "
                       f"the table holds: {', '.join(table.names()) or '(none)'}")
    g_s, g_t = load_checkpoint(o["g_source"]).generator(), load_checkpoint(o["g_target"]).generator()
    print(f"[bundle] generators: source {o['g_source']}, target {o['g_target']}")
    swap_res = int(o["swap_res"] or table.meta.get("swap_res") or 32)
    mix = MixConfig(o["mix_index"] if o["mix_index"] is not None else 6, not o["no_trgb_replace"], swap_res,
                    o["noise_seed"] or 0)
    G = g_swap(g_s, g_t, swap_res)
    if table.fingerprint != generator_fingerprint(G):  # another G_swap: TableMismatch names both
        table = LookUpTable.load(lut_path, generator_fingerprint(G))
    chosen = LookUpTable(table.fingerprint, table.meta)
    refs = {}
    for n in names:
        chosen.add(table.get(n))
        thumbs = thumbnails(table.get(n).images, args.thumbs, args.thumb_size) if args.thumbs > 0 else None
        if thumbs is not None:
            refs[n] = thumbs
        print(f"[bundle] character {n}: {len(table.get(n).images)} references averaged, "
              f"{0 if thumbs is None else len(thumbs)} thumbnails")
    enc_s = load_encoder(o["encoder_source"])
    enc_t = load_encoder(o["encoder_target"]) if o["encoder_target"] else None
    print(f"[bundle] encoders: source {o['encoder_source']}, target {o['encoder_target'] or '(none)'}")
    iters = o["iters"] if o["iters"] is not None else 5
    print(f"[bundle] settings: swap_res {swap_res}, mix_index {mix.m}, trgb_replace {mix.trgb_from_character}, "
          f"noise_seed {mix.noise_seed}, iters {iters}")
    sources = {k: str(o[k]) for k in ("g_source", "g_target", "encoder_source", "encoder_target", "lut") if o[k]}
    bundle = Bundle(g_s, g_t, mix, enc_s, chosen, enc_t, iters, refs, sources, G_swap=G)
    return write_bundle(args.out, bundle, {"source": restyle_dict(enc_s),
                                           "target": restyle_dict(enc_t) if enc_t is not None else None})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from trainer.model_io import CheckpointError

    if args.thumbs < 0 or args.thumb_size < 1:
        print("error: --thumbs must be >= 0 and --thumb-size >= 1", file=sys.stderr)
        return 2
    try:
        path = pack(args)
    except (FileNotFoundError, ValueError, KeyError, CheckpointError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(f"[bundle] wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
