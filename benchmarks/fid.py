"""FID feature extraction speed and the Fréchet distance time at 2048-d.

    python benchmarks/fid.py --quick   # CPU only (under 3 minutes on 2 cores)
    python benchmarks/fid.py           # CPU, then CUDA cases if a GPU is present
    python benchmarks/fid.py --cuda-only

Extraction: the TF-2015 Inception (random weights in the pytorch-fid layout;
speed does not depend on their values) behind ``FIDDetector`` in "tf" mode,
fed uint8 images at 256 and 1024 px, timed over repeated batches after a
warm-up (median per batch). The Fréchet distance is ``eval.frechet`` on two
2048-d covariances of 4096 samples (median of 3); SciPy's ``sqrtm`` form is
timed once beside it when SciPy is installed. The CUDA case adds generation:
a config-f 1024 px generator sampling and quantising, then the detector, which
gives the projected time of fid50k_full (50k generated images; the real side
is cached). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.cases import finish  # noqa: E402
from eval.features import GeneratorSource  # noqa: E402
from eval.fid_preprocess import FIDDetector  # noqa: E402
from eval.frechet import feature_stats, frechet_distance  # noqa: E402
from eval.inception import InceptionV3  # noqa: E402
from trainer.networks import Generator, GeneratorConfig  # noqa: E402


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, reps: int, device: str) -> float:
    """Median seconds of ``fn()`` over ``reps`` runs after one warm-up run."""
    fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def extract_case(device: str, size: int, batch: int, reps: int, net: torch.nn.Module | None = None) -> float:
    """Detector images per second on uint8 ``size`` px input."""
    det = FIDDetector(net if net is not None else InceptionV3(), "tf").to(device).eval()
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    return batch / timed(lambda: det(x), reps, device)


def frechet_case(dim: int = 2048, n: int = 4096, reps: int = 3, with_scipy: bool = True) -> dict:
    """Seconds of one Fréchet distance at ``dim`` (ours; SciPy's sqrtm once if available)."""
    rng = np.random.default_rng(0)
    a = feature_stats(rng.standard_normal((n, dim)) @ rng.standard_normal((dim, dim)) / np.sqrt(dim))
    b = feature_stats(rng.standard_normal((n, dim)) * 1.1 + 0.1)
    out = {"frechet_s": timed(lambda: frechet_distance(a, b), reps, "cpu"), "fid": frechet_distance(a, b)}
    if with_scipy:
        try:
            from scipy import linalg
        except ImportError:
            return out
        t = time.perf_counter()
        covmean = linalg.sqrtm(a.sigma @ b.sigma)
        out["sqrtm_s"] = time.perf_counter() - t
        d = a.mu - b.mu
        out["fid_sqrtm"] = float(d @ d + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.trace(covmean).real)
    return out


def generate_and_extract_case(device: str, arch: dict, batch: int, reps: int) -> float:
    """Images per second of sampling ``arch`` with per-sample seeds, quantising and detecting."""
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(**arch)).to(device).eval()
    det = FIDDetector(InceptionV3(), "tf").to(device).eval()
    src = GeneratorSource(G, batch * (reps + 1))
    batches = src.batches(batch, 0, 1)

    def step():
        idx, imgs = next(batches)
        det(torch.stack(imgs))

    return batch / timed(step, reps, device)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU cases with fewer repetitions")
    p.add_argument("--cuda-only", action="store_true", help="only the CUDA cases")
    args = p.parse_args(argv)
    results: dict = {"torch": torch.__version__, "cpu_cores": os.cpu_count(), "preprocess": "tf"}
    if not args.cuda_only:
        batch, reps = (2, 2) if args.quick else (4, 3)
        for size in (256, 1024):
            results[f"extract_img_s_cpu_{size}"] = round(extract_case("cpu", size, batch, reps), 3)
            print(f"[fid] cpu {size}px: {results[f'extract_img_s_cpu_{size}']:.2f} img/s (batch {batch})",
                  file=sys.stderr)
        fr = frechet_case()
        results.update({"frechet_s_2048": round(fr["frechet_s"], 3), "sqrtm_s_2048": round(fr.get("sqrtm_s", -1), 3),
                        "frechet_rel_diff_vs_sqrtm": abs(fr["fid"] - fr["fid_sqrtm"]) / fr["fid_sqrtm"]
                        if "fid_sqrtm" in fr else None})
        print(f"[fid] Fréchet distance 2048-d: {fr['frechet_s']:.2f} s (sqrtm: {fr.get('sqrtm_s', float('nan')):.1f} s)",
              file=sys.stderr)
    if args.cuda_only and torch.cuda.is_available():
        results["gpu"] = torch.cuda.get_device_name()
        for size in (256, 1024):
            results[f"extract_img_s_cuda_{size}"] = round(extract_case("cuda", size, 64, 10), 1)
        gen = generate_and_extract_case("cuda", dict(size=1024, channel_multiplier=2.0, channel_max=512), 32, 10)
        results["gen_extract_img_s_cuda_1024"] = round(gen, 1)
        results["fid50k_full_projected_s_cuda_1024"] = round(50_000 / gen, 1)
    return finish(results, args, __file__)


if __name__ == "__main__":
    main()
