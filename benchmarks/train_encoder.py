"""Training and inversion images per second of the ReStyle-pSp encoder at 256 px input.

    python benchmarks/train_encoder.py --quick   # CPU only (under 3 minutes on 2 cores)
    python benchmarks/train_encoder.py           # CPU, then a 1024 px generator on CUDA if present
    python benchmarks/train_encoder.py --cuda-only

The encoder is the public IR-SE50 BackboneEncoder at 256 px input (random
weights; speed does not depend on their values). Training runs
``launch.train_encoder`` in this process with every ReStyle loss on (L2,
LPIPS-alex, ArcFace ID with a full IR-SE50) and 5 refinement passes, for two
ticks: the first absorbs start-up, the second is timed. Inversion times
``ReStyle.invert`` (5 passes, fixed noise) over repeated batches after a warm-up
and reports the median. The CPU cases decode with a 256 px generator of 64
channels (a config-f 1024 px generator does not fit a 2-core budget); the CUDA
cases use config-f at 1024 px, as ReStyle does. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.cases import finish  # noqa: E402
from benchmarks.train_gan import make_shards  # noqa: E402
from trainer.model_io import save_checkpoint  # noqa: E402
from trainer.networks import Generator, GeneratorConfig  # noqa: E402
from trainer.networks.encoders import Encoder, EncoderConfig  # noqa: E402
from trainer.networks.irse import IRSEBackbone  # noqa: E402
from trainer.networks.lpips import LPIPS  # noqa: E402
from trainer.networks.restyle import ReStyle  # noqa: E402
from trainer.networks.weights import PUBLIC  # noqa: E402

CPU_G = dict(size=256, channel_multiplier=0.125, channel_max=64)
CUDA_G = dict(size=1024, channel_multiplier=2.0, channel_max=512)


def make_generator(root: Path, arch: dict) -> Path:
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(**arch))
    G.update_w_avg()
    return save_checkpoint(root / f"g{arch['size']}.pt", "rosinality", g_ema=G)


def make_weights(root: Path, arcface: dict | None = None) -> Path:
    """Loss-network files in their public layouts and names (random values); ``arcface``
    narrows the IR-SE network (tests)."""
    w = root / "weights"
    w.mkdir(exist_ok=True)
    torch.manual_seed(0)
    lp = LPIPS("alex")
    torch.save(lp.net.state_dict(), w / PUBLIC["alexnet"].filename)
    torch.save({k: v.abs() for k, v in lp.lins.state_dict().items()}, w / PUBLIC["lpips_alex"].filename)
    torch.save(IRSEBackbone(**(arcface or {})).state_dict(), w / PUBLIC["ir_se50"].filename)
    return w


def train_case(root: Path, device: str, batch: int, steps: int, g_path: Path, shards: str, weights: Path,
               extra: tuple[str, ...] = ()) -> dict:
    """Training img/s of the second of two ticks of ``steps`` steps; ``extra`` overrides settings.
    The public encoder body starts from weights.dir's model_ir_se50.pth."""
    from launch import train_encoder

    if device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "1"
    tick_kimg = steps * batch / 1000
    run_dir = root / f"run-{device}"
    argv = [f"loader.data={shards}", f"decoder.source={g_path}", f"weights.dir={weights}", "weights.check_hashes=false",
            f"run.dir={run_dir}", f"run.total_kimg={2 * tick_kimg}", f"run.tick_kimg={tick_kimg}",
            "run.ckpt_ticks=1000", "run.grid_size=2", f"optim.batch={batch}", "loader.workers=1", *extra]
    with contextlib.redirect_stdout(io.StringIO()):
        code = train_encoder.main(argv)
    if code != 0:
        raise RuntimeError(f"encoder training failed on {device} (exit {code}); see {run_dir}/log.txt")
    timed = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()][1]
    return {"img_s": round(timed["Timing/img_per_sec"], 3), "gpu_mem_gib": round(timed["Resources/gpu_mem_gib"], 2)}


@torch.no_grad()
def invert_case(device: str, g_arch: dict, batch: int, reps: int, encoder: dict | None = None) -> dict:
    """Median inversion speed (5 passes) over ``reps`` batches after a warm-up."""
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(**g_arch))
    G.update_w_avg()
    cfg = EncoderConfig(n_styles=G.n_latent, style_dim=G.style_dim, **(encoder or {}))
    net = ReStyle(Encoder(cfg), G).to(device).eval()
    x = torch.rand(batch, 3, cfg.input_size, cfg.input_size, device=device) * 2 - 1
    net.invert(x, 5)  # warm-up: kernel builds, allocator
    times = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        net.invert(x, 5)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"img_s": round(batch / med, 3), "s_per_img": round(med / batch, 5)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the CPU case only, batch 1 (training) and 2 (inversion)")
    p.add_argument("--cuda-only", action="store_true", help="only the CUDA case")
    args = p.parse_args(argv)
    results: dict = {"torch": torch.__version__, "cpu_cores": os.cpu_count(), "input_px": 256, "passes": 5}
    # (device, generator, train batch, steps per tick, inversion batch, timed inversions)
    cases = [] if args.cuda_only else [("cpu", CPU_G, 1, 1, 2, 2) if args.quick else ("cpu", CPU_G, 2, 2, 4, 3)]
    if args.cuda_only and torch.cuda.is_available():
        results["gpu"] = torch.cuda.get_device_name()
        cases.append(("cuda", CUDA_G, 8, 10, 32, 10))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        weights = make_weights(root)
        shards = make_shards(root, 256, 16)
        for device, g_arch, batch, steps, inv_batch, reps in cases:
            tr = train_case(root, device, batch, steps, make_generator(root, g_arch), shards, weights)
            inv = invert_case(device, g_arch, inv_batch, reps)
            print(f"[train_encoder] {device}: train {tr['img_s']:.2f} img/s (batch {batch}), invert "
                  f"{inv['img_s']:.2f} img/s = {inv['s_per_img']:.4f} s/img (batch {inv_batch}, 5 passes)",
                  file=sys.stderr)
            results.update({f"train_img_s_{device}": tr["img_s"], f"train_batch_{device}": batch,
                            f"train_gpu_mem_gib_{device}": tr["gpu_mem_gib"], f"invert_img_s_{device}": inv["img_s"],
                            f"invert_s_per_img_{device}": inv["s_per_img"], f"invert_batch_{device}": inv_batch,
                            f"generator_{device}": f"{g_arch['size']}px, multiplier {g_arch['channel_multiplier']}"})
    return finish(results, args, __file__)


if __name__ == "__main__":
    main()
