"""FID (and KID) of generated or given images against real ones, on every rank.

    accelerate launch -m launch.fid --real shards/webtoon --fake runs/00003-gan/network.pt \\
        --detector pretrained_models/inception-2015-12-05.pt --protocol fid50k_full --kid

    python -m launch.fid --real shards/ffhq --fake cartoons/ --protocol custom --num-gen 1000

``--real`` and ``--fake`` each take a shard folder (evaluation mode: every
sample once), an image folder, or an ``.npz`` with ``mu``/``sigma`` (ours,
pytorch-fid's or clean-fid's); ``--fake`` also takes a generator checkpoint
(rosinality, NVlabs or ours), sampled with per-sample seeds so the images do
not depend on the number of ranks. An image file whose header declares more
than 67 MP (``datasets.imageio.MAX_PIXELS``) is skipped and counted without
being decoded; a manifest naming shards outside its folder is refused unless
--allow-external-shards. Real statistics are cached in ``--cache-dir``.
Prints one JSON line (on the main process; ``kid_std`` is null, with a warning
on stderr, where every KID subset holds all images and so has no spread) and,
with ``--tb``, writes a TensorBoard scalar ``Metrics/<protocol>``.

The detector is the TF Inception of 2015-12-05: pytorch-fid's
pt_inception-2015-12-05-6726825d.pth, NVIDIA's inception-2015-12-05.pt or
torch-fidelity's weights-inception-2015-12-05-6726825d.pth, from a local path
(``--detector``, or its file name in ``--weights-dir`` / $TOONMIX_WEIGHTS).
Nothing is downloaded. Which --preprocess/--ddof pair reproduces pytorch-fid,
clean-fid, torch-fidelity or NVIDIA's FID: docs/eval.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from datasets.errors import DataError

PREPROCESS = ("tf", "clean", "torch-bilinear")
DETECTOR_FILES = ("inception_nvidia", "inception_fid", "inception_fidelity")
"""Keys of trainer.networks.weights.PUBLIC that --weights-dir is searched for, in this order."""
USER_ERRORS = (FileNotFoundError, ValueError, DataError)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="accelerate launch -m launch.fid", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", required=True, help="real images: shard folder, image folder or stats .npz")
    p.add_argument("--fake", required=True, help="generator checkpoint, shard folder, image folder or stats .npz")
    p.add_argument("--protocol", default="fid50k_full", choices=["fid50k_full", "fid10k", "custom"],
                   help="fid50k_full: all real vs 50k generated; fid10k: 10k vs 10k; custom: --num-gen/--max-real")
    p.add_argument("--num-gen", type=int, default=None, help="custom: generated images (or images used from --fake)")
    p.add_argument("--max-real", type=int, default=None, help="custom: use at most this many real images")
    p.add_argument("--allow-external-shards", action="store_true",
                   help="follow manifest shard names outside the manifest's folder (other folders, '..', other "
                        "URLs); only for manifests you wrote. Without it such a manifest is refused (exit 2)")
    add_detector_args(p)
    p.add_argument("--kid", action="store_true",
                   help="also compute KID (mean and std over subsets; the std is null when it is undefined)")
    p.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (one subset has no std)")
    p.add_argument("--kid-subset-size", type=int, default=1000,
                   help="images per KID subset, capped at the smaller side; at or above both image counts every "
                        "subset is the same set, so kid_std is null")
    p.add_argument("--seed", type=int, default=0, help="seeds generator sampling (per sample) and KID subsets")
    p.add_argument("--truncation", type=float, default=1.0, help="generator truncation psi (1: none)")
    p.add_argument("--noise-mode", choices=["random", "const", "none"], default="random",
                   help="generator noise: per-sample seeded (random), the stored buffers, or none")
    p.add_argument("--cache-dir", default=os.environ.get("TOONMIX_FID_CACHE", ".cache/fid"),
                   help="reference statistics cache ('' disables); default $TOONMIX_FID_CACHE or .cache/fid")
    p.add_argument("--tb", default=None, help="TensorBoard log folder for the Metrics/<protocol> scalar")
    p.add_argument("--step", type=int, default=0, help="the TensorBoard step (e.g. kimg of the checkpoint)")
    p.add_argument("--out", default=None, help="also write the JSON result here")
    p.add_argument("--save-stats", default=None, help="folder for real.npz and fake.npz (mu, sigma) of this run")
    return p


def add_detector_args(p: argparse.ArgumentParser) -> None:
    """The detector options every FID-computing command shares."""
    p.add_argument("--detector", default=None,
                   help="pt_inception-2015-12-05-6726825d.pth, inception-2015-12-05.pt or "
                        "weights-inception-2015-12-05-6726825d.pth; or 'untrained[:SEED]': random seeded weights, "
                        "for comparisons within one run only (never with published FIDs)")
    p.add_argument("--weights-dir", default=os.environ.get("TOONMIX_WEIGHTS"),
                   help="folder holding the detector under its public name: inception-2015-12-05.pt (NVIDIA), "
                        "pt_inception-2015-12-05-6726825d.pth (pytorch-fid) or "
                        "weights-inception-2015-12-05-6726825d.pth (torch-fidelity), looked for in that order "
                        "(default $TOONMIX_WEIGHTS)")
    p.add_argument("--detector-sha256", default=None,
                   help="expected SHA-256 (or a prefix) of the detector file; replaces the hash in its name")
    p.add_argument("--no-check-hash", action="store_true",
                   help="skip the SHA-256 check of the detector file (against --detector-sha256, or the 8 hex "
                        "digits in pytorch-fid's and torch-fidelity's file names)")
    p.add_argument("--preprocess", choices=PREPROCESS, default="tf",
                   help="tf: TF1 bilinear as NVIDIA, TF and torch-fidelity; clean: PIL bicubic as clean-fid; "
                        "torch-bilinear: F.interpolate as pytorch-fid (pairs with --ddof: docs/eval.md)")
    p.add_argument("--ddof", type=int, choices=[0, 1], default=0,
                   help="covariance 1/(N-ddof): 0 as NVIDIA, 1 as pytorch-fid, clean-fid and torch-fidelity")
    p.add_argument("--batch", type=int, default=64, help="images per detector batch on each rank")


def detector_path(args: argparse.Namespace) -> str | None:
    """--detector, else the first public detector file (DETECTOR_FILES) found in --weights-dir."""
    from trainer.networks.weights import PUBLIC

    if args.detector or not args.weights_dir:
        return args.detector
    for key in DETECTOR_FILES:
        cand = Path(args.weights_dir) / PUBLIC[key].filename
        if cand.is_file():
            return str(cand)
    return None


def load_detector(args: argparse.Namespace, device):
    """(FIDDetector on ``device``, its SHA-256) from the command-line options."""
    from eval.fid_preprocess import FIDDetector
    from eval.inception import DetectorHashError, load_inception, parse_untrained, untrained_inception
    from trainer.networks.weights import WeightsError

    path = detector_path(args)
    seed = parse_untrained(path)
    if seed is not None:
        net, info = untrained_inception(seed)
    else:
        try:
            net, info = load_inception(path, check_hash=not args.no_check_hash, expected_sha256=args.detector_sha256)
        except DetectorHashError as e:
            raise WeightsError(f"{e}. If you trust this file: --detector-sha256 {e.sha256} pins its hash, or "
                               "--no-check-hash skips the check") from None
        except WeightsError as e:
            if path is not None and Path(path).is_file():  # a damaged or wrong file: its own message says it all
                raise
            raise WeightsError(f"{e}. Put it in --weights-dir (or $TOONMIX_WEIGHTS) under that name; without "
                               "either file, --detector untrained measures with seeded random weights "
                               "(comparisons within one run only)") from None
    return FIDDetector(net, args.preprocess).to(device).eval(), info["sha256"]


def open_source(spec: str, limit: int | None, args: argparse.Namespace, device, generated: int | None):
    """A Source for ``spec`` (None for an .npz, which the caller reads as statistics)."""
    from eval.features import FolderSource, GeneratorSource, ShardSource
    from trainer.model_io import load_checkpoint

    p = Path(spec)
    if spec.endswith(".npz"):
        return None
    if "://" in spec or spec.endswith(".json") or (p / "manifest.json").is_file():
        return ShardSource(spec, limit, allow_external=args.allow_external_shards)
    if p.is_dir():
        return FolderSource(spec, limit)
    if p.is_file():
        if generated is None:
            raise ValueError(f"{spec}: a generator needs a number of images (--protocol or --num)")
        G = load_checkpoint(spec).generator().to(device).eval()
        return GeneratorSource(G, generated, args.seed, args.truncation, args.noise_mode,
                               name=str(p.resolve()))  # generated sides are never cached: no need to hash the file
    raise FileNotFoundError(f"{spec}: no such file or folder")


def counts(args: argparse.Namespace) -> tuple[int | None, int | None]:
    """(generated images, real images or None for all) of the protocol."""
    from eval.fid import PROTOCOLS

    if args.protocol == "custom":
        if args.num_gen is None or args.num_gen < 2:
            raise ValueError("--protocol custom needs --num-gen N (N >= 2)")
        return args.num_gen, args.max_real
    return PROTOCOLS[args.protocol]


def run(args: argparse.Namespace, dist) -> dict:
    from eval.fid import MetricConfig, compare, from_npz, measure

    cfg = MetricConfig(args.preprocess, args.ddof, args.batch, args.kid, args.kid_subsets,
                       args.kid_subset_size, args.seed)
    n_fake, n_real = counts(args)
    detector, det_sha = load_detector(args, dist.device)
    sides = {}
    for name, spec, limit in (("real", args.real, n_real), ("fake", args.fake, n_fake)):
        src = open_source(spec, limit if name == "real" or not Path(spec).is_file() else None, args,
                          dist.device, n_fake)
        if src is None:
            sides[name] = from_npz(spec, cfg)
            continue
        cache = args.cache_dir if (name == "real" and args.cache_dir) else None
        sides[name] = measure(src, detector, dist, cfg, det_sha, cache, desc=name)
        if dist.is_main and src.skipped:
            print(f"[fid] {name}: skipped {dict(src.skipped)}", file=sys.stderr)
    if not dist.is_main:
        return {}
    if args.save_stats:
        for name, side in sides.items():
            side.stats.save_npz(Path(args.save_stats) / f"{name}.npz", preprocess=args.preprocess,
                                detector_sha256=det_sha)
    result = {"protocol": args.protocol, **compare(sides["real"], sides["fake"], cfg),
              "preprocess": args.preprocess, "ddof": args.ddof, "detector_sha256": det_sha,
              "real": args.real, "fake": args.fake, "real_from": sides["real"].origin, "world": dist.world}
    return result


def report(result: dict, args: argparse.Namespace) -> None:
    """The JSON line on stdout (and --out), a warning on stderr when KID has no spread, --tb scalars."""
    line = json.dumps(result, sort_keys=True)
    print(line)
    if "kid" in result and result.get("kid_std") is None:
        print(f"[fid] warning: kid_std is null: {result.get('kid_std_note', 'undefined')}", file=sys.stderr)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(line + "\n")
    if args.tb:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(args.tb) as w:
            w.add_scalar(f"Metrics/{args.protocol}", result["fid"], args.step)
            if "kid" in result:
                w.add_scalar(f"Metrics/kid_{args.protocol}", result["kid"], args.step)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from launch._args import run_on_every_rank
    from trainer.model_io import CheckpointError

    dist, result = run_on_every_rank(run, args, (*USER_ERRORS, CheckpointError))
    if result is None:
        return 2
    if dist.is_main:
        report(result, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
