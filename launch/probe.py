"""Measures whether the demo works, with probes trained on the demo's own drawn data.

    python -m launch.probe --data runs/demo/data --cartoons runs/demo/cartoons \\
        --g-source runs/demo/gan_source/network.pt --g-target runs/demo/gan_target/network.pt \\
        --out runs/demo/metrics/probe.json

The demo's data is drawn by code that knows every image's character and face
geometry (--data/labels.json, written by launch.make_demo_data). Trained on
those images at 32 px (seconds on a CPU), a character probe and a face-geometry
probe (eval/probe.py) score:

  probe      their own held-out accuracy and error on drawn images, and that
             drawn photos, noise and colour blobs are not taken for characters
  target_g   --samples images of the fine-tuned generator (truncation 1): the
             share recognised as some character, per character (mode coverage)
  source_g   the same for the source generator (it draws photo-like faces: ~0)
  cartoons   per method in --cartoons/<character>/{cdsm,toonify,wplus}/ (as
             launch.cartoonize writes them): the share recognised as the
             requested character, and how far the cartoon's face centre and
             width are from the photo's (labels of --data/photos/test)

Writes one JSON file (--out) with every number and each check of
eval.probe.THRESHOLDS (value, bound, passed). Exit status 2 names a missing
input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the demo data folder (labels.json, photos/, characters/)")
    p.add_argument("--cartoons", required=True, help="launch.cartoonize outputs: <character>/<method>/*.png")
    p.add_argument("--g-source", required=True, help="the source generator checkpoint")
    p.add_argument("--g-target", required=True, help="the fine-tuned generator checkpoint")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--samples", type=int, default=256, help="images sampled from each generator")
    p.add_argument("--truncation", type=float, default=1.0, help="truncation psi of the samples (1: none)")
    p.add_argument("--seed", type=int, default=0, help="seeds the samples and the probes' held-out split")
    p.add_argument("--device", default=None, help="cpu, cuda... (default: cuda if available)")
    return p


def step(i: int, text: str) -> None:
    print(f"[probe] {i}/5 {text}", flush=True)


def check_inputs(args: argparse.Namespace) -> None:
    """Raises FileNotFoundError naming the first missing input."""
    data = Path(args.data)
    folders = [data / "characters", data / "photos" / "train", data / "photos" / "test", Path(args.cartoons)]
    for path in [data / "labels.json", Path(args.g_source), Path(args.g_target), *folders]:
        if not (path.is_dir() if path in folders else path.is_file()):
            raise FileNotFoundError(f"{path}: missing (the probe needs the demo's data, cartoons and generators)")
    if args.samples < 2:
        raise ValueError("--samples must be >= 2")


def read_data(data: Path) -> dict:
    """The drawn images at 32 px with their labels: characters, train photos, test photos."""
    from datasets.synthetic import read_labels
    from eval.probe import GEOMETRY, load_images

    labels = read_labels(data)
    names, images = labels["characters"], labels["images"]
    out = {"names": names}
    for part, prefix in (("characters", "characters/"), ("photos", "photos/train/"), ("test", "photos/test/")):
        keys = sorted(k for k in images if k.startswith(prefix) and (data / k).is_file())
        if not keys:
            raise FileNotFoundError(f"{data / prefix}: no labelled images")
        out[part] = load_images([data / k for k in keys])
        out[part + "_geometry"] = np.array([[images[k][g] for g in GEOMETRY] for k in keys])
        out[part + "_keys"] = keys
    out["labels"] = np.array([images[k]["character"] for k in out["characters_keys"]])
    return out


def fit_probes(d: dict, seed: int) -> tuple[object, object, dict]:
    """(character probe, character geometry probe, the probe section: its own checks on real images)."""
    from eval.probe import agreement, fit_character_probe, fit_geometry_probe, sanity_images, shares

    cp, report = fit_character_probe(d["characters"], d["labels"], d["names"], d["photos"], seed)
    gp, geo_char = fit_geometry_probe(d["characters"], d["characters_geometry"], seed)
    photo_gp, geo_photo = fit_geometry_probe(d["photos"], d["photos_geometry"], seed)
    odd = sanity_images(64, seed)
    odd_pred = {k: cp.predict(v) for k, v in odd.items()}
    test = shares(cp, cp.predict(d["test"]))  # held-out photos: never seen by the probe
    report.update({
        "photos_as_character": test["character_share"], "photos_as_photo": test.get("photo_share"),
        "noise_as_character": max(shares(cp, p)["character_share"] for p in odd_pred.values()),
        **{f"{k}_as_none": shares(cp, p)["none_share"] for k, p in odd_pred.items()},
        "geometry": {"character": geo_char, "photo": geo_photo,
                     "photo_on_test_photos": agreement(photo_gp.predict(d["test"]), d["test_geometry"])}})
    return cp, gp, report


def sample(path: str, n: int, seed: int, truncation: float, device: str) -> np.ndarray:
    """n images (uint8 [n, H, W, 3]) of a generator, z seeded: the same every run."""
    import torch

    from datasets.imageio import to_uint8
    from trainer.model_io import load_checkpoint

    G = load_checkpoint(path).generator().to(device).eval()
    z = torch.randn(n, G.style_dim, generator=torch.Generator().manual_seed(seed))
    out = []
    with torch.no_grad():
        for i in range(0, n, 64):
            out.append(to_uint8(G(z[i:i + 64].to(device), truncation_psi=truncation, noise_mode="const")))
    return np.concatenate(out)


def cartoon_folders(root: Path, names: list[str]) -> list[Path]:
    """root/<character>/ folders holding some method's cartoons; ValueError for a stranger."""
    from launch.cartoonize import METHODS

    found = sorted(p for p in root.iterdir() if any((p / m).is_dir() for m in METHODS))
    for folder in found:
        if folder.name not in names:
            raise ValueError(f"{folder}: {folder.name!r} is not a character of the data ({', '.join(names)})")
    return found


def score_method(folders: list[Path], method: str, d: dict, cp, gp) -> dict | None:
    """One method's cartoons of every character: recognised as the requested character, and
    their face geometry against their photo's (files named as the test photos they come from)."""
    from eval.probe import agreement, load_images, shares

    geometry = {Path(k).stem: g for k, g in zip(d["test_keys"], d["test_geometry"])}
    pred, want, per, found, true = [], [], {}, [], []
    for folder in folders:
        files = sorted((folder / method).glob("*.png"))
        if not files:
            continue
        images = load_images(files)
        pred.append(cp.predict(images))
        want.append(np.full(len(files), d["names"].index(folder.name)))
        per[folder.name] = float((pred[-1] == want[-1]).mean())
        known = [i for i, f in enumerate(files) if f.stem in geometry]  # cartoons of labelled photos
        found.append(gp.predict(images[known]))
        true += [geometry[files[i].stem] for i in known]
    if not pred:
        return None
    p, w = np.concatenate(pred), np.concatenate(want)
    s = shares(cp, p)
    out = {"images": int(len(p)), "requested_share": float((p == w).mean()), "per_character": per,
           "character_share": s["character_share"], "photo_share": s.get("photo_share"),
           "none_share": s["none_share"], "pairs": len(true)}
    if true:
        out.update(agreement(np.concatenate(found), np.array(true)))
    return out


def score_cartoons(folders: list[Path], d: dict, cp, gp) -> dict:
    from launch.cartoonize import METHODS

    out = {m: r for m in METHODS if (r := score_method(folders, m, d, cp, gp)) is not None}
    if "cdsm" in out and "wplus" in out:  # CDSM's point: the character's colours, not the photo's
        out["cdsm_minus_wplus_requested_share"] = out["cdsm"]["requested_share"] - out["wplus"]["requested_share"]
    return out


def run(args: argparse.Namespace) -> dict:
    import torch

    from eval.probe import PROBE_SIZE, THRESHOLDS, judge, shares

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    step(1, f"reading the drawn images and labels in {args.data}")
    d = read_data(Path(args.data))
    folders = cartoon_folders(Path(args.cartoons), d["names"])  # a misnamed folder fails before the work
    step(2, f"training the probes on {len(d['characters'])} character and {len(d['photos'])} photo images")
    cp, gp, probe = fit_probes(d, args.seed)
    print(f"[probe]   held-out accuracy {probe['character_accuracy']:.3f}, face-centre error "
          f"{probe['geometry']['character']['centre_mae_px']:.2f} px", flush=True)
    m = {"probe_size": PROBE_SIZE, "samples": args.samples, "truncation": args.truncation, "probe": probe}
    for i, (key, path) in enumerate((("target_g", args.g_target), ("source_g", args.g_source)), 3):
        step(i, f"sampling {args.samples} images of {path}")
        m[key] = shares(cp, cp.predict(sample(path, args.samples, args.seed, args.truncation, device)))
    step(5, f"scoring the cartoons in {args.cartoons}")
    m["cartoons"] = score_cartoons(folders, d, cp, gp)
    if not folders:
        print(f"[probe] warning: no cartoons in {args.cartoons}/<character>/<method>/", file=sys.stderr)
    m["checks"] = judge(m)
    m["thresholds"] = {k: {"op": op, "bound": b} for k, (op, b, _) in THRESHOLDS.items()}
    return m


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from datasets.remote import atomic_write
    from trainer.model_io import CheckpointError

    try:
        check_inputs(args)
        m = run(args)
    except (OSError, ValueError, KeyError, CheckpointError) as e:  # OSError: also an unreadable image
        print(f"error: {e}", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(args.out), (json.dumps(m, indent=1, sort_keys=True) + "\n").encode())
    verdicts = [c["passed"] for c in m["checks"]]
    print(f"[probe] {verdicts.count(True)} checks passed, {verdicts.count(False)} failed, "
          f"{verdicts.count(None)} not measured -> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
