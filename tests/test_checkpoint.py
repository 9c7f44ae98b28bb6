"""Checkpoints: round trips (local, memory://, 2 processes), resharding, pruning, damage."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

from datasets.remote import fs_and_path
from trainer.run.checkpoint import CheckpointError, CheckpointManager, OptimizerState

ROOT = Path(__file__).resolve().parents[1]


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(64, 64)  # 16 KiB of weights: enough to measure dedup by size
        self.head = nn.Linear(64, 2)
        self.frozen = nn.Parameter(torch.randn(4), requires_grad=False)  # kept out of the optimizer
        self.register_buffer("mean", torch.randn(3))

    def forward(self, x):
        return self.head(torch.relu(self.body(x))) + self.frozen.sum()


def make_state(seed: int = 0) -> tuple[dict, torch.optim.Optimizer]:
    """A model and Adam after 2 steps, an EMA copy nested one level down, training scalars."""
    torch.manual_seed(seed)
    model, ema = Tiny(), Tiny()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randn(8, 64)
    for _ in range(2):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    state = {"G": model, "G_opt": OptimizerState(model, opt), "nets": {"G_ema": ema},
             "progress": {"nimg": 4096, "ada_p": torch.tensor(0.25), "run": "r7",
                          "nested": {"kimg": 4.096, "tick": 3, "hist": [1, 2]}}}
    return state, opt


def fresh_state() -> dict:
    """Different weights, an unstepped optimizer with another lr, and stray .grad tensors
    (the case in which DCP drops optimizer state unless they are cleared first)."""
    torch.manual_seed(123)
    model = Tiny()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-1)
    model(torch.randn(2, 64)).sum().backward()
    return {"G": model, "G_opt": OptimizerState(model, opt), "nets": {"G_ema": Tiny()},
            "progress": {"nimg": 0, "ada_p": torch.tensor(0.0), "run": "",
                         "nested": {"kimg": 0.0, "tick": 0, "hist": []}}}


def rank_state_for(rank: int) -> dict:
    g = torch.Generator().manual_seed(100 + rank)
    return {"rng": g.get_state(), "loader": {"rank": rank, "positions": [[rank, 3 * rank]]},
            "tag": bytes([rank, 7])}


def _canon(x):
    if isinstance(x, OptimizerState) or isinstance(x, nn.Module):
        return _canon(x.state_dict())
    if isinstance(x, dict):
        return {str(k): _canon(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_canon(v) for v in x]
    if isinstance(x, torch.Tensor):
        raw = x.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        return f"{x.dtype}{list(x.shape)}:{hashlib.sha1(raw).hexdigest()}"
    return x


def digest(state: dict) -> dict:
    """Bitwise fingerprint of a state: tensors hashed, python values as they are."""
    return _canon(state)


def test_round_trip_restores_weights_optimizer_scalars_and_rank_state(tmp_path):
    state, opt = make_state()
    mgr = CheckpointManager(str(tmp_path), keep=3)
    path = mgr.save(2, state, rank_state_for(0), {"step": 2, "kimg": 4.096, "cfg": {"lr": 0.01}})
    assert path == str(tmp_path / "ckpt-000000002")
    assert sorted(os.listdir(path)) == [".metadata", "COMPLETE", "__0_0.distcp", "meta.json", "rank00000.pt"]

    fresh = fresh_state()
    assert digest(fresh) != digest(state)
    ada_p = fresh["progress"]["ada_p"]
    rank_state, meta = mgr.load("latest", fresh)
    assert digest(fresh) == digest(state)
    assert meta == {"step": 2, "kimg": 4.096, "cfg": {"lr": 0.01}}
    assert fresh["progress"]["ada_p"] is ada_p and float(ada_p) == 0.25  # tensors filled in place
    assert fresh["progress"]["nested"] == {"kimg": 4.096, "tick": 3, "hist": [1, 2]}
    new_opt = fresh["G_opt"].optimizer
    assert new_opt.param_groups[0]["lr"] == 1e-2
    for (name, p), q in zip(state["G"].named_parameters(), fresh["G"].parameters()):
        assert torch.equal(p, q), name
        if p.requires_grad:
            for k in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(opt.state[p][k], new_opt.state[q][k]), (name, k)
        else:
            assert q not in new_opt.state
    assert all(p.grad is None for p in fresh["G"].parameters())
    want = rank_state_for(0)
    assert torch.equal(rank_state["rng"], want["rng"]) and rank_state["loader"] == want["loader"]
    assert rank_state["tag"] == want["tag"]


def test_stray_grads_silently_drop_optimizer_state_in_plain_dcp(tmp_path):
    """The trap OptimizerState guards against, shown on DCP's own API."""
    state, _ = make_state()
    CheckpointManager(str(tmp_path)).save(1, state, {}, {})
    model = Tiny()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])
    model(torch.randn(2, 64)).sum().backward()

    class Raw:
        def state_dict(self):
            return get_optimizer_state_dict(model, opt)

        def load_state_dict(self, sd):
            set_optimizer_state_dict(model, opt, sd)

    with warnings.catch_warnings():  # DCP warns when there is no process group
        warnings.simplefilter("ignore")
        dcp.load({"G_opt": Raw()}, storage_reader=FsspecReader(str(tmp_path / "ckpt-000000001")))
    assert not opt.state  # exp_avg & co. never arrived


def test_keep_prunes_old_and_ignores_incomplete(tmp_path):
    mgr = CheckpointManager(str(tmp_path), keep=2)
    state, _ = make_state()
    for step in range(1, 6):
        mgr.save(step, state, {}, {"step": step})
    assert [s for s, _ in mgr.list_complete()] == [4, 5]
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000000004", "ckpt-000000005"]

    (tmp_path / "ckpt-000000009").mkdir()  # a crash mid-save: files but no marker
    (tmp_path / "ckpt-000000009" / ".metadata").write_bytes(b"half")
    assert mgr.latest() == str(tmp_path / "ckpt-000000005")
    assert mgr.resolve("latest") == mgr.latest()
    with pytest.raises(CheckpointError, match="incomplete"):
        mgr.resolve(str(tmp_path / "ckpt-000000009"))

    (tmp_path / "ckpt-000000006").mkdir()  # older than the next complete one: pruned
    (tmp_path / "ckpt-000000008").mkdir()  # stale folder of the very step saved next: replaced
    (tmp_path / "ckpt-000000008" / "junk").write_bytes(b"x")
    mgr.save(8, state, {}, {"step": 8})
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000000005", "ckpt-000000008", "ckpt-000000009"]
    assert "junk" not in os.listdir(tmp_path / "ckpt-000000008")
    assert mgr.latest().endswith("ckpt-000000008")


def test_missing_root_or_folder_is_a_clear_error(tmp_path):
    mgr = CheckpointManager(str(tmp_path / "nothing"))
    assert mgr.list_complete() == [] and mgr.latest() is None
    with pytest.raises(CheckpointError, match="no complete checkpoint under"):
        mgr.resolve("latest")
    with pytest.raises(CheckpointError, match="not found"):
        mgr.load(str(tmp_path / "ckpt-000000001"), fresh_state())


@pytest.mark.parametrize("victim, damage", [
    ("__0_0.distcp", "truncate"), (".metadata", "truncate"), ("rank00000.pt", "truncate"),
    ("__0_0.distcp", "delete"), ("__0_0.distcp", "zero_tail"), ("rank00000.pt", "zero_tail"),
    ("meta.json", "zero_tail"),
])
def test_damaged_files_raise_checkpoint_error_naming_them(tmp_path, victim, damage):
    mgr = CheckpointManager(str(tmp_path))
    state, _ = make_state()
    folder = Path(mgr.save(3, state, rank_state_for(0), {"step": 3}))
    f = folder / victim
    data = f.read_bytes()
    if damage == "truncate":
        f.write_bytes(data[: len(data) // 2])
    elif damage == "delete":
        f.unlink()
    else:  # same size, so only the readers can notice
        n = min(64, len(data))
        f.write_bytes(data[:-n] + bytes(n))
    with pytest.raises(CheckpointError) as e:
        mgr.load("latest", fresh_state())
    named = str(f) if damage != "zero_tail" or victim != "__0_0.distcp" else str(folder)
    assert named in str(e.value), str(e.value)


def test_rank_state_that_cannot_be_loaded_safely_is_refused_at_save(tmp_path):
    state, _ = make_state()
    with pytest.raises(CheckpointError, match="rank_state"):
        CheckpointManager(str(tmp_path)).save(1, state, {"np_rng": np.random.get_state()}, {})


def test_memory_filesystem_round_trip():
    base = f"memory://ckpt-test-{uuid.uuid4().hex[:8]}"
    root = base + "/run"
    try:
        mgr = CheckpointManager(root, keep=1)
        state, _ = make_state()
        mgr.save(1, state, rank_state_for(0), {"step": 1})
        path = mgr.save(2, state, rank_state_for(0), {"step": 2})
        assert mgr.list_complete() == [(2, path)] and path == root + "/ckpt-000000002"
        fresh = fresh_state()
        rank_state, meta = mgr.load(path, fresh)
        assert digest(fresh) == digest(state) and meta == {"step": 2}
        assert rank_state["loader"] == rank_state_for(0)["loader"]
    finally:
        fs, path = fs_and_path(base)
        fs.rm(path, recursive=True)


def _torchrun(out: Path, mode: str, *roots: Path) -> list[list[dict]]:
    """Runs dist_checkpoint_check.py on 2 processes; [rank][root] results."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "dist_checkpoint_check.py"), mode, str(out), *map(str, roots)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads((out / f"{mode}-rank{k}.json").read_text()) for k in range(2)]


def _distcp_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.distcp"))


def test_two_processes_save_then_load_at_world_1_and_2(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    saved = _torchrun(tmp_path, "save", two)
    want = digest(make_state()[0])
    assert saved[0][0]["state"] == saved[1][0]["state"] == want
    folder = two / "ckpt-000000007"
    # Replicated tensors are written once: two ranks write what one process writes,
    # and the default planner spreads the items over both ranks' files.
    single = Path(CheckpointManager(str(one)).save(7, make_state()[0], rank_state_for(0), {}))
    assert abs(_distcp_bytes(folder) - _distcp_bytes(single)) < 0.05 * _distcp_bytes(single)
    assert (folder / "__0_0.distcp").stat().st_size > 0 and (folder / "__1_0.distcp").stat().st_size > 0
    assert json.loads((folder / "COMPLETE").read_text())["world"] == 2

    fresh = fresh_state()  # world 1, no process group: rank 0's private state
    rank_state, meta = CheckpointManager(str(two)).load("latest", fresh)
    assert digest(fresh) == want and meta == {"step": 7, "world": 2}
    assert rank_state["loader"] == rank_state_for(0)["loader"]

    # World 2 again (each rank its own private state), and a world-1 checkpoint on
    # 2 ranks (rank 1 has none).
    loaded = _torchrun(tmp_path, "load", two, one)
    for k in range(2):
        assert loaded[k][0]["state"] == want and loaded[k][0]["rank_state"] == rank_state_for(k)["loader"]
        assert loaded[k][1]["state"] == want
    assert loaded[0][1]["rank_state"] == rank_state_for(0)["loader"] and loaded[1][1]["rank_state"] is None


# ----------------------------------------------------------------------------
# A save cut short at each of its stages (the functions it calls made to fail, as a crash
# or a full disk would leave it), then a resume.

def _fail_dcp(*a, **k):
    raise CheckpointError("injected: died before any shard was written")


def _fail_rank_file(url, data):
    raise OSError("injected: died between the shards and the rank file")


def _full_disk(url, data):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("stage", ["before_any_shard", "between_shards_and_rank_file", "before_marker", "enospc"])
def test_a_save_cut_short_keeps_the_last_complete_checkpoint(tmp_path, monkeypatch, stage):
    import trainer.run.checkpoint as ck

    mgr = CheckpointManager(str(tmp_path), keep=1)
    state, _ = make_state()
    mgr.save(1, state, {"n": 1}, {"step": 1})
    saved = digest(state)
    with torch.no_grad():
        state["G"].body.weight.add_(1.0)  # what the failed save held
    real_write_json = ck.write_json

    def fail_at_marker(url, obj):
        if url.endswith(ck.MARKER):
            raise OSError("injected: died before the marker")
        real_write_json(url, obj)
    faults = {"before_any_shard": ("_run_dcp", _fail_dcp), "between_shards_and_rank_file": ("atomic_write",
              _fail_rank_file), "before_marker": ("write_json", fail_at_marker), "enospc": ("atomic_write", _full_disk)}
    name, fake = faults[stage]
    monkeypatch.setattr(ck, name, fake)
    with pytest.raises(CheckpointError, match="was not completed") as e:
        mgr.save(2, state, {"n": 2}, {"step": 2})
    assert f"{tmp_path / 'ckpt-000000001'}, is kept" in str(e.value)
    assert ("the disk is full" in str(e.value)) == (stage == "enospc")
    monkeypatch.undo()

    resumed, _ = make_state()
    assert mgr.latest() == str(tmp_path / "ckpt-000000001")
    rank_state, meta = mgr.load(mgr.latest(), resumed)
    assert digest(resumed) == saved and rank_state == {"n": 1} and meta == {"step": 1}
    mgr.save(3, state, {"n": 3}, {"step": 3})  # the next save replaces both
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000000003"]


def test_pruning_cut_short_keeps_the_new_checkpoint_and_a_later_save_finishes_it(tmp_path, monkeypatch, capsys):
    import trainer.run.checkpoint as ck

    mgr = CheckpointManager(str(tmp_path), keep=1)
    state, _ = make_state()
    mgr.save(1, state, {}, {"step": 1})
    real_remove = ck.CheckpointManager._remove

    def remove_marker_then_die(self, path):
        os.remove(os.path.join(path, ck.MARKER))
        raise OSError("injected: died while deleting")
    monkeypatch.setattr(ck.CheckpointManager, "_remove", remove_marker_then_die)
    assert mgr.save(2, state, {}, {"step": 2}) == str(tmp_path / "ckpt-000000002")
    assert "could not remove an old checkpoint" in capsys.readouterr().err
    assert mgr.latest() == str(tmp_path / "ckpt-000000002") and [s for s, _ in mgr.list_complete()] == [2]
    monkeypatch.setattr(ck.CheckpointManager, "_remove", real_remove)
    mgr.save(3, state, {}, {"step": 3})
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000000003"]
