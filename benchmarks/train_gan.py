"""Seconds per kimg of GAN training with R1, path length and ADA on, through the real trainer.

    python benchmarks/train_gan.py --quick   # 64 px on the CPU (under 3 minutes on 2 cores)
    python benchmarks/train_gan.py           # 64 and 256 px on the CPU; 1024 px, batch 32 on CUDA if present
    python benchmarks/train_gan.py --cuda-only

Each case writes shards of procedurally made photo-like images, then runs
``launch.train_gan`` in this process for two ticks of 16 steps each: the
first tick absorbs start-up (kernel builds, allocator, first loader block),
the second is timed. 16 steps hold exactly one lazy R1 step (interval 16)
and four path-length steps (interval 4), so the figure carries the real
regularisation cadence. ADA runs at p = 0.2 (every transform active in some
samples). CPU cases use 64 channels at every resolution and batch 8 (a
config-f network does not fit a 2-core budget); the CUDA case is config-f
(channel multiplier 2, 512 channels max) at batch 32, as NVlabs' anchors.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.cases import finish  # noqa: E402
from benchmarks.data import photo_like  # noqa: E402
from datasets.process import WriterConfig  # noqa: E402
from datasets.shards import write_shards  # noqa: E402
from datasets.sources import folder_items  # noqa: E402

STEPS_PER_TICK = 16


def make_shards(root: Path, size: int, n: int) -> str:
    raw = root / f"raw{size}"
    raw.mkdir(parents=True)
    for i in range(n):
        photo_like(i, size).save(raw / f"{i:04d}.png")
    out = str(root / f"shards{size}")
    write_shards(folder_items(str(raw)), WriterConfig(out=out, image_size=size, workers=0, min_size=16,
                                                      encoding="jpg"), progress=False, log=lambda _: None)
    return out


class OutOfMemory(RuntimeError):
    """The case ran out of GPU memory; ``shards`` can be reused at a smaller batch."""

    def __init__(self, message: str, shards: str):
        super().__init__(message)
        self.shards = shards


def run_case(root: Path, size: int, device: str, batch: int, arch: list[str], n_images: int,
             shards: str | None = None) -> dict:
    """Two ticks at ``batch``, the second timed; ``shards`` reuses a folder made before."""
    from launch import train_gan

    if device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "1"
    shards = shards or make_shards(root, size, n_images)
    tick_kimg = STEPS_PER_TICK * batch / 1000
    run_dir = root / f"run{size}"
    argv = [f"loader.data={shards}", f"run.dir={run_dir}", f"run.total_kimg={2 * tick_kimg}",
            f"run.tick_kimg={tick_kimg}", "run.ckpt_ticks=1000", "run.grid_size=4", f"optim.batch={batch}",
            "loader.workers=2", "ada.mode=fixed", "ada.p=0.2", *arch]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            code = train_gan.main(argv)
    except torch.cuda.OutOfMemoryError as e:
        raise OutOfMemory(f"{size}px at batch {batch} ran out of GPU memory: {str(e)[:200]}", shards) from None
    if code != 0:
        raise RuntimeError(f"training failed for {size}px (exit {code}); see {run_dir}/log.txt")
    rows = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    timed = rows[1]
    s_kimg = timed["Timing/sec_per_kimg"]
    print(f"[train_gan] {size}px {device}: {s_kimg:.1f} s/kimg, {1000 / s_kimg:.2f} img/s, "
          f"ops {[k for k in timed if k.startswith('Ops/')]}", file=sys.stderr)
    return {"s_per_kimg": round(s_kimg, 3), "img_s": round(1000 / s_kimg, 3),
            "gpu_mem_gib": round(timed["Resources/gpu_mem_gib"], 2),
            "ops": {k[4:]: v for k, v in timed.items() if k.startswith("Ops/")}}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="64 px on the CPU only")
    p.add_argument("--cuda-only", action="store_true", help="only the 1024 px CUDA case")
    args = p.parse_args(argv)
    small = ["model.channel_multiplier=0.25", "model.channel_max=64"]  # 64 channels at 64..256 px
    cases = [] if args.cuda_only else [(64, "cpu", 8, small, 32)]
    if not args.quick and not args.cuda_only:
        cases.append((256, "cpu", 8, small, 32))
    if args.cuda_only and torch.cuda.is_available():
        cases.append((1024, "cuda", 32, ["model.mixed_precision=fp16", "model.num_fp16_res=4"], 64))
    results: dict = {"torch": torch.__version__, "cpu_cores": os.cpu_count(), "steps_timed": STEPS_PER_TICK,
                     "r1_interval": 16, "pl_interval": 4, "ada_p": 0.2}
    if torch.cuda.is_available():
        results["gpu"] = torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory() as tmp:
        for size, device, batch, arch, n in cases:
            r = run_case(Path(tmp), size, device, batch, arch, n)
            key = f"{size}_{device}"
            results.update({f"s_per_kimg_{key}": r["s_per_kimg"], f"img_s_{key}": r["img_s"],
                            f"batch_{key}": batch, f"gpu_mem_gib_{key}": r["gpu_mem_gib"], f"ops_{key}": r["ops"]})
    return finish(results, args, __file__)


if __name__ == "__main__":
    main()
