"""Run by torchrun (2 processes, gloo) from test_data_loader.py; writes rank{k}.json.

Each rank builds its own loader from RANK/WORLD_SIZE (never through
accelerate), counts its training batches in epoch mode over uneven shards,
gathers the counts, and records its evaluation indices.
"""

import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datasets.loader import LoaderConfig, ShardLoader  # noqa: E402


def main(shards: str, out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    train = ShardLoader(LoaderConfig(shards, batch_size=4, workers=1, epoch_samples=24, shards_per_block=2))
    batches = []
    for b in train:  # a collective per batch, as a DDP step has: unequal counts would hang here
        t = torch.tensor([float(b.images.float().mean())])
        dist.all_reduce(t)
        batches.append(b)
    counts = [None] * world
    dist.all_gather_object(counts, len(batches))
    first = [hashlib.sha1(b.images[i].numpy().tobytes()).hexdigest() for b in batches[:2] for i in range(4)][:6]
    ev = ShardLoader(LoaderConfig(shards, batch_size=5, workers=2), mode="eval")
    index = [int(i) for b in ev for i in b.index]
    Path(out, f"rank{rank}.json").write_text(json.dumps({
        "train_batches": len(batches), "expected_batches": len(train), "gathered_counts": counts,
        "first_block": first, "eval_index": index}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
