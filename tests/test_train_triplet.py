"""Triplet fine-tuning: the loss falls on a tiny setup, only the blend's target layers train, a
resumed run continues bitwise, the loss is the cosine-distance hinge, and bad input is refused."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from launch import train_triplet as cli
from tests.run_fixtures import assert_same_final_state, torchrun
from trainer.model_io import load_checkpoint, save_checkpoint
from trainer.networks import Generator, GeneratorConfig
from trainer.networks.irse import IRSEBackbone
from trainer.networks.swap import param_resolution
from trainer.networks.weights import PUBLIC
from trainer.triplet.loop import triplet_loss

TINY_G = dict(style_dim=16, n_mlp=2, channel_multiplier=0.0625, channel_max=32)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("triplet")
    torch.manual_seed(0)
    S = Generator(GeneratorConfig(size=16, **TINY_G))
    S.update_w_avg()
    T = Generator(GeneratorConfig(size=16, **TINY_G))  # "fine-tuned": the source's mapping, other synthesis
    T.style.load_state_dict(S.style.state_dict())
    T.w_avg.copy_(S.w_avg)
    torch.manual_seed(1)
    torch.save(IRSEBackbone(units=(1, 1, 1, 1), width=0.125).state_dict(), root / PUBLIC["ir_se50"].filename)
    return {"s": str(save_checkpoint(root / "s.pt", "rosinality", g_ema=S)),
            "t": str(save_checkpoint(root / "t.pt", "rosinality", g_ema=T)), "weights": str(root)}


def argv(files: dict, run, *extra: str) -> list[str]:
    return [f"model.source={files['s']}", f"model.target={files['t']}", "model.swap_res=8",
            "model.negative_swap_res=4", f"weights.dir={files['weights']}", "weights.check_hashes=false",
            f"run.dir={run}", "optim.batch=4", "optim.lr=0.01", "run.total_kimg=0.064", "run.tick_kimg=0.016",
            "run.ckpt_ticks=1", "run.grid_size=3", *extra]


def stats(run) -> list[dict]:
    return [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]


def test_the_loss_is_the_cosine_distance_hinge():
    a, p, n = torch.randn(5, 8), torch.randn(5, 8), torch.randn(5, 8)
    loss, terms = triplet_loss(a, p, n, 0.5)
    d = lambda x, y: 1 - (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1))  # noqa: E731
    assert torch.allclose(loss, F.relu(d(a, p) - d(a, n) + 0.5).mean())
    assert torch.allclose(terms["Loss/d_pos"], d(a, p).mean())
    assert float(triplet_loss(p, p, -p, 0.5)[0]) == 0.0  # anchor on the positive, opposite the negative


def test_loss_falls_and_only_the_target_layers_train(files, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    run = tmp_path / "run"
    assert cli.main(argv(files, run)) == 0
    st = stats(run)
    assert len(st) == 4 and st[-1]["Loss/triplet"] < 0.9 * st[0]["Loss/triplet"]
    S, T = (load_checkpoint(files[k]).generator() for k in ("s", "t"))
    blend = load_checkpoint(run / "network.pt").generator()
    trained = 0
    for name, value in blend.state_dict().items():
        res = param_resolution(blend, name)
        if res is None or res < 8:  # mapping and low layers: the source's, untouched
            assert torch.equal(value, S.state_dict()[name]), name
        elif not torch.equal(value, T.state_dict()[name]):
            trained += 1
    assert trained > 0
    assert (run / "triplets-tick00004.png").is_file() and (run / "config.yaml").is_file()


def test_resume_continues_bitwise_after_an_end_and_after_a_stop_request(files, tmp_path, monkeypatch):
    from trainer.run.stop import EXIT_REQUEUE, STOP_FILE_ENV

    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert cli.main(argv(files, straight, "run.total_kimg=0.032")) == 0
    assert cli.main(argv(files, split, "run.total_kimg=0.016")) == 0
    (tmp_path / "STOP").touch()  # there from the start: the resumed run stops after its first step
    monkeypatch.setenv(STOP_FILE_ENV, str(tmp_path / "STOP"))
    assert cli.main(["--resume", "latest"] + argv(files, split, "run.total_kimg=0.032")) == EXIT_REQUEUE
    monkeypatch.delenv(STOP_FILE_ENV)
    assert cli.main(["--resume", "auto"] + argv(files, split, "run.total_kimg=0.032")) == 0
    log = (split / "log.txt").read_text()
    assert log.count("resumed from") == 2 and "stopped on request (stop file" in log
    a = load_checkpoint(straight / "network.pt").generator().state_dict()
    b = load_checkpoint(split / "network.pt").generator().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("change, message", [
    (["weights.dir=/nonexistent"], "model_ir_se50.pth"),
    (["model.target=/nonexistent/t.pt"], "model.target=/nonexistent/t.pt"),
    (["model.negative_swap_res=16"], "negative_swap_res must be below"),
])
def test_bad_input_exits_2(change, message, files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    assert cli.main(argv(files, tmp_path / "r") + change) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow  # 35 s; the GAN and encoder tests check the shared synced step on 2 processes fast
def test_two_processes_stay_in_sync_and_zero2_matches_them(files, tmp_path):
    run, zero = tmp_path / "two", tmp_path / "zero"
    # check_sync hashes every rank's gradients and weights after each step and fails on a difference.
    torchrun("launch.train_triplet", 2, argv(files, run, "run.total_kimg=0.032", "run.check_sync=true"))
    assert "2 process(es)" in (run / "log.txt").read_text()
    assert len(stats(run)) == 2 and (run / "network.pt").is_file()
    # The blend layers in a DeepSpeed ZeRO-2 engine: the same values, the optimizer state included.
    torchrun("launch.train_triplet", 2, argv(files, zero, "run.total_kimg=0.032", "run.check_sync=true",
                                              "dist.zero_stage=2"))
    flat = assert_same_final_state(zero, run, tmp_path, 2)
    assert any(k.startswith("opt.state.") and k.endswith("exp_avg_sq") for k in flat)
