"""Checkpoints written before trainer/ was split into sub-packages still load and resume.

tests/data/pre_layout/ holds one tiny checkpoint per training loop, written by the code at
commit e9a2bb5 (the last one with the flat trainer/ layout; tests/data/pre_layout/README.md
has the script). Each is read back by today's code and then resumed for one more step.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_fixtures import face_shards
from run_fixtures import flat_checkpoint, stats
from trainer.networks.irse import IRSEBackbone
from trainer.networks.weights import PUBLIC

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "pre_layout"


def old_checkpoint(kind: str) -> str:
    return str(next((DATA / kind).glob("ckpt-*")))


def resumed(run: Path, steps: int) -> None:
    """The run's log says it resumed from the old checkpoint and its only tick is ``steps``."""
    log = (run / "log.txt").read_text()
    assert "resumed from" in log and str(DATA) in log, log[-2000:]
    assert [row["step"] for row in stats(run)] == [steps]  # one new tick, after the old checkpoint's step


@pytest.fixture(autouse=True)
def at_root(monkeypatch):
    """The checkpoints name their generator files relative to the repository root, as written."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")


def test_a_gan_checkpoint_loads_every_value_and_resumes(tmp_path):
    from launch import train_gan
    from trainer.gan.state import load_networks

    old = old_checkpoint("gan")
    nets, meta = load_networks(old)
    flat = flat_checkpoint(old, tmp_path / "flat.pt")
    for name in ("G", "D", "G_ema"):
        for key, value in nets[name].state_dict().items():
            assert torch.equal(value, flat[f"{name}.{key}"]), f"{name}.{key}"
    faces = face_shards(tmp_path / "faces", 16, 16)
    run = tmp_path / "run"
    assert train_gan.main(["--resume", old, f"run.dir={run}", f"loader.data={faces}",
                           "run.total_kimg=0.024"]) == 0
    resumed(run, 3)


def test_an_encoder_checkpoint_resumes(tmp_path):
    from launch import train_encoder

    faces = face_shards(tmp_path / "faces", 16, 16)
    run = tmp_path / "run"
    assert train_encoder.main(["--resume", old_checkpoint("enc"), f"run.dir={run}", f"loader.data={faces}",
                               "run.total_kimg=0.012"]) == 0
    resumed(run, 3)


def test_a_triplet_checkpoint_resumes(tmp_path):
    from launch import train_triplet

    torch.manual_seed(3)  # the face network is not part of the checkpoint: any weights of its shape
    torch.save(IRSEBackbone(units=(1, 1, 1, 1), width=0.125).state_dict(), tmp_path / PUBLIC["ir_se50"].filename)
    run = tmp_path / "run"
    assert train_triplet.main(["--resume", old_checkpoint("tri"), f"run.dir={run}",
                               f"weights.dir={tmp_path}", "run.total_kimg=0.006"]) == 0
    resumed(run, 3)
