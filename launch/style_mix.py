"""Style-mixing grids: row latents x column latents, chosen W+ entries from the column.

    python -m launch.style_mix --ckpt ffhq.pt --rows 85,100,75 --cols 55,821,1789 --out runs/mix
    python -m launch.style_mix --ckpt ffhq.pt --g-target runs/00003-gan/network.pt --swap-res 32 \\
        --row-latents runs/proj/*.npz --cols 0-4 --layers coarse r16 r32-64 0-3 --out runs/mix-swap

One grid per --layers range (default: coarse, middle and fine, those the
generator has layers in), as NVlabs' style_mixing.py draws it: the column
images along the top, the row images down the left, each cell the row's W+
with the range's entries from the column. Ranges: coarse, middle, fine (the
entries whose lowest layer is at 4-8, 16-32, 64+ px: 0-3, 4-7, 8-17 at 1024 px),
r<res> or r<lo>-<hi> (every entry driving a layer of those resolutions), or W+
indices (0-6, 0,2,4). Which entry drives
which layer is traced from the generator (as CDSM does), so r16 shows what the
16 px layers carry: in a face generator, eyes, nose and mouth live in the
middle layers. Rows and columns come from seeds (mapped, truncated to
--truncation) or from W/W+ files (launch.project's .npz, launch.invert's or an
.npy). Writes <out>/style_mix_<range>.png and <out>/report.json (each range's
W+ entries and layer resolutions).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from launch._args import add_generator_args, int_list, latents_from, load_generator


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.style_mix", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_generator_args(p)
    rows = p.add_mutually_exclusive_group()
    rows.add_argument("--rows", type=int_list, default=None, help="row seeds (default 0-3)")
    rows.add_argument("--row-latents", nargs="+", help="row W/W+ files (.npz from launch.project, .npy)")
    cols = p.add_mutually_exclusive_group()
    cols.add_argument("--cols", type=int_list, default=None, help="column seeds (default 10-14)")
    cols.add_argument("--col-latents", nargs="+", help="column W/W+ files")
    p.add_argument("--layers", nargs="+", default=None,
                   help="ranges whose entries come from the column, one grid each (default: coarse, middle "
                        "and fine, those this generator has layers in)")
    p.add_argument("--truncation", type=float, default=1.0, help="truncation psi for seeds (NVlabs: 1)")
    p.add_argument("--batch", type=int, default=16, help="images per forward")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from PIL import Image
    from tqdm import tqdm

    from eval.style_mix import NAMED, entries_from, grid, parse_entries
    from trainer.model_io import CheckpointError
    from trainer.networks.stylespace import style_layers

    try:
        if args.batch < 1:
            raise ValueError("--batch must be >= 1")
        G = load_generator(args, args.device)
        specs = args.layers or [name for name, (lo, hi) in NAMED.items() if entries_from(G, lo, hi)]
        entries = {spec: parse_entries(spec, G) for spec in specs}  # every range checked before rendering
        w_rows = latents_from(G, args.rows or [0, 1, 2, 3], args.row_latents, args.truncation, args.device)
        w_cols = latents_from(G, args.cols or list(range(10, 15)), args.col_latents, args.truncation, args.device)
    except (FileNotFoundError, ValueError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"generator": args.ckpt, "g_target": args.g_target, "swap_res": args.swap_res if args.g_target else None,
              "rows": len(w_rows), "cols": len(w_cols), "grids": {}}
    for spec, idx in tqdm(entries.items(), desc="style-mixing grids", unit="grid"):
        path = out / f"style_mix_{spec.replace(',', '_')}.png"
        Image.fromarray(grid(G, w_rows, w_cols, idx, args.batch)).save(path)
        report["grids"][spec] = {"png": str(path), "w_entries": idx, "resolutions": sorted(
            {layer.resolution for layer in style_layers(G) if layer.w_index in idx})}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v["w_entries"] for k, v in report["grids"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
