"""Run by torchrun (gloo) from test_checkpoint.py: ``save OUT ROOT`` or ``load OUT ROOT...``.

save: every rank builds the same replicated state (tests.test_checkpoint.make_state,
trained identically), its own rank_state, and saves step 7 under ROOT.
load: every rank loads each ROOT's latest checkpoint into fresh objects.
Both write OUT/{mode}-rank{k}.json: a list, per ROOT, of hashes of what the rank holds.
"""

import json
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.test_checkpoint import digest, fresh_state, make_state, rank_state_for  # noqa: E402
from trainer.run.checkpoint import CheckpointManager  # noqa: E402


def main(mode: str, out: str, roots: list[str]) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = []
    for root in roots:
        mgr = CheckpointManager(root, keep=2, rank=rank, world=world)
        if mode == "save":
            state, _ = make_state()
            mgr.save(7, state, rank_state_for(rank), {"step": 7, "world": world})
            results.append({"state": digest(state)})
        else:
            state = fresh_state()
            rank_state, meta = mgr.load("latest", state)
            results.append({"state": digest(state), "meta": meta,
                            "rank_state": None if rank_state is None else rank_state["loader"]})
    Path(out, f"{mode}-rank{rank}.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
