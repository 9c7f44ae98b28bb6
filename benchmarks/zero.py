"""Optimizer-state memory and step time of GAN training under ZeRO-2 against the all-reduce.

    python benchmarks/zero.py --quick   # 32 px, 2 CPU processes (gloo), stage 0 then 2: under 3 minutes
    python benchmarks/zero.py           # the same, then on CUDA 1024 px fp16, 1 process, stage 0 then 2
    python benchmarks/zero.py --cuda-only

Each case runs the real trainer (``launch.train_gan`` under torchrun) twice on the same
shards, ``dist.zero_stage=0`` and ``dist.zero_stage=2``, for two ticks; the second tick is
timed. The optimizer state is what each rank measured on its own tensors at the end of a
tick (``Resources/opt_state_mib_G`` + ``_D`` in stats.jsonl, rank 0's): with 2 processes
ZeRO-2 should hold about half of stage 0 (target ratio <= 0.55). One process shows the
cost of the engine alone (the state cannot shrink). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.cases import child_env, finish  # noqa: E402
from benchmarks.train_gan import make_shards  # noqa: E402

STEPS_PER_TICK = 16  # with r1_interval 16 and pl_interval 4 (the defaults): one R1 and four path-length steps


def run_stage(root: Path, shards: str, stage: int, nproc: int, device: str, batch: int, arch: list[str],
              steps: int | None = None) -> dict:
    """Two ticks of ``steps`` steps (default STEPS_PER_TICK) of ``launch.train_gan`` at
    ``dist.zero_stage=stage``; the timed tick's figures."""
    run_dir = root / f"run-{device}-zero{stage}"
    tick_kimg = (steps or STEPS_PER_TICK) * batch / 1000
    argv = [f"loader.data={shards}", f"run.dir={run_dir}", f"run.total_kimg={2 * tick_kimg}",
            f"run.tick_kimg={tick_kimg}", "run.ckpt_ticks=1000", "run.export_ticks=0", "run.grid_size=4",
            f"optim.batch={batch}", "loader.workers=1", "loss.r1_interval=16", "loss.pl_interval=4",
            "ada.mode=fixed", "ada.p=0.2", f"dist.zero_stage={stage}", *arch]
    env = child_env(device, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "launch.train_gan", *argv]
    print(f"[zero] {device} {nproc} process(es), zero_stage={stage} ...", file=sys.stderr, flush=True)
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-3000:] + r.stderr[-3000:])
        raise RuntimeError(f"zero_stage={stage} on {device} failed (exit {r.returncode}); see {run_dir}/log.txt")
    timed = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()][1]
    s_step = timed["Timing/sec_per_kimg"] * batch / 1000
    mib = timed["Resources/opt_state_mib_G"] + timed["Resources/opt_state_mib_D"]
    print(f"[zero]   {s_step:.3f} s/step, optimizer state {mib:.2f} MiB per rank, "
          f"peak GPU {timed['Resources/gpu_mem_gib']:.2f} GiB", file=sys.stderr, flush=True)
    return {"s_per_step": s_step, "opt_state_bytes": round(mib * 2**20), "gpu_mem_gib": timed["Resources/gpu_mem_gib"]}


def compare(root: Path, key: str, shards: str, nproc: int, device: str, batch: int, arch: list[str]) -> dict:
    """Stage 0 and stage 2 side by side, keyed ``<figure>_<key>``."""
    s0 = run_stage(root, shards, 0, nproc, device, batch, arch)
    s2 = run_stage(root, shards, 2, nproc, device, batch, arch)
    return {f"opt_state_bytes_ratio_{key}": round(s2["opt_state_bytes"] / s0["opt_state_bytes"], 4),
            f"opt_state_bytes_stage0_{key}": s0["opt_state_bytes"], f"opt_state_bytes_stage2_{key}": s2["opt_state_bytes"],
            f"s_per_step_stage0_{key}": round(s0["s_per_step"], 4), f"s_per_step_stage2_{key}": round(s2["s_per_step"], 4),
            f"gpu_mem_gib_stage0_{key}": s0["gpu_mem_gib"], f"gpu_mem_gib_stage2_{key}": s2["gpu_mem_gib"],
            f"batch_{key}": batch}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the 2-process CPU case only")
    p.add_argument("--cuda-only", action="store_true", help="only the 1024 px fp16 CUDA case")
    args = p.parse_args(argv)
    results: dict = {"torch": torch.__version__, "cpu_cores": os.cpu_count(), "steps_timed": STEPS_PER_TICK,
                     "target_opt_state_bytes_ratio_2proc": 0.55}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if not args.cuda_only:
            shards = make_shards(root, 32, 32)
            small = ["model.channel_multiplier=0.25", "model.channel_max=64"]
            results.update(compare(root, "2proc", shards, 2, "cpu", 8, small))
        if args.cuda_only and torch.cuda.is_available():
            results["gpu"] = torch.cuda.get_device_name()
            shards = make_shards(root, 1024, 16)
            fp16 = ["model.mixed_precision=fp16", "model.num_fp16_res=4"]
            results.update(compare(root, "1024_fp16_1proc", shards, 1, "cuda", 8, fp16))
    return finish(results, args, __file__)


if __name__ == "__main__":
    main()
