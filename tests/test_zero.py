"""DeepSpeed ZeRO behind the trainers' optimizer step (trainer/run/zero.py): the same steps and
the same checkpoints as the trainers' own all-reduce, on 2 gloo processes; bad settings refused.

The trainers end to end under ZeRO (bitwise against the all-reduce; checkpoints resumed across
backends, from 2 processes to 1, and under ZeRO in one process) are slow tests in
test_train_gan.py, test_train_encoder.py and test_train_triplet.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch import train_encoder, train_gan
from trainer.encoder.config import EncoderTrainConfig
from trainer.gan.config import GANConfig
from trainer.run.config import ConfigError, load_config
from trainer.run.zero import DistConfig, deepspeed_config

ROOT = Path(__file__).resolve().parents[1]


def test_zero_steps_and_checkpoints_match_the_all_reduce(tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "dist_zero_check.py"), str(tmp_path)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in range(2)]
    assert ranks[0] == ranks[1]  # every rank holds the same full weights and gathered state
    for name, res in ranks[0].items():
        # Stage 1 reduces the whole gradient as the all-reduce does: bitwise. Stage 2 adds up the
        # two micro-batches and the two ranks in another order.
        tol = 0.0 if name == "zero1" else 1e-6
        for key in ("sgd_step", "adam_weights", "adam_state", "resumed_weights", "resumed_state", "early_state",
                    "early_weights", "scaled_weights"):
            assert res[key] <= tol, (name, key, res[key])
        assert res["adam_state_keys"] == ["exp_avg", "exp_avg_sq", "step"]  # a plain Adam's names
        # Each of the 2 ranks holds half the optimizer state (its partition), measured on the tensors.
        plain, zero = res["state_bytes"]
        assert plain == 676 * 8 + 4 * 4  # 676 parameters in 4 tensors: two float32 moments each, one step each
        assert 0.45 <= zero / plain <= 0.55, (name, zero, plain)
        # A ZeRO checkpoint folder read into the all-reduce optimizer: exactly what was gathered.
        assert res["folder_state"] == 0.0 and res["folder_weights"] == 0.0
        # fp16 loss scaling: a finite step goes through, an overflowing one is skipped by both,
        # leaves the weights alone and halves both scales alike.
        assert res["scaled_stepped"] == [True, True] and res["overflow_stepped"] == [False, False]
        assert res["overflow_moved"] == 0.0 and res["scales"] == [2.0 ** 13] * 2, (name, res)


@pytest.mark.parametrize("cls, override, message", [
    (GANConfig, "dist.zero_stage=3", "stage 3 partitions the weights themselves"),
    (GANConfig, "dist.zero_stage=4", "must be 0, 1 or 2"),
    (GANConfig, "dist.offload_optimizer=cpu", "needs dist.zero_stage=1 or 2"),
    (GANConfig, "dist.offload_optimizer=nvme", "must be one of"),
    (GANConfig, "dist.reduce_bucket_size=0", "dist.reduce_bucket_size must be >= 1"),
    (EncoderTrainConfig, "dist.zero_stage=2", "optim.optimizer=ranger cannot run under dist.zero_stage=2"),
])
def test_bad_dist_settings_are_refused(cls, override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(cls, None, ["loader.data=shards/", override])


@pytest.mark.parametrize("cli", [train_gan, train_encoder])
def test_bad_dist_setting_exits_2_with_the_reason(cli, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    assert cli.main([f"run.dir={tmp_path}", f"loader.data={tmp_path}", "dist.zero_stage=3"]) == 2
    assert "dist.zero_stage=3 is not offered" in capsys.readouterr().err


def test_engine_settings_the_trainers_depend_on():
    ds = deepspeed_config(DistConfig(zero_stage=2, offload_optimizer="cpu", reduce_bucket_size=1000), 4, cuda=True)
    # DeepSpeed would clip at 1.0 unless told 0, count micro-batches itself, and replace the
    # trainer's Adam with its JIT-built CPU Adam when offloading.
    assert ds["gradient_clipping"] == 0.0 and ds["managed_gradient_accumulation"] is False
    assert ds["zero_force_ds_cpu_optimizer"] is False and ds["zero_allow_untested_optimizer"] is True
    assert ds["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert ds["zero_optimization"]["stage"] == 2 and ds["zero_optimization"]["reduce_bucket_size"] == 1000
    assert ds["train_batch_size"] == 4 and "fp16" not in ds and "bf16" not in ds  # float32 engines
    # Overflow is found through the gradient norm; the throughput timer would sync every call.
    assert ds["zero_optimization"]["compute_grad_norm"] is True and ds["timers"]["throughput"]["enabled"] is False
    # A bucket is a float32 buffer of its size on every GPU: never larger than the network.
    # DeepSpeed refuses sizes that are not multiples of its alignment: rounded up to 8.
    small = deepspeed_config(DistConfig(zero_stage=1), 2, cuda=False, n_params=12345)["zero_optimization"]
    assert small["reduce_bucket_size"] == small["allgather_bucket_size"] == 12352
