"""GAN fine-tuning end to end at 32 px: every feature, two-process sync, exact resume, exports, bad input."""

from __future__ import annotations

import glob
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from data_fixtures import face_shards
from run_fixtures import assert_same_final_state, flat_checkpoint, latest_ckpt, stats, torchrun

from launch import train_gan as cli
from trainer.gan.config import GANConfig
from trainer.gan.setup import generator_frozen_names
from trainer.model_io import load_checkpoint, save_checkpoint
from trainer.networks import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig
from trainer.run.config import field_docs

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(style_dim=32, n_mlp=2, channel_multiplier=0.0625, channel_max=32)
STEP_KIMG = 0.008  # one step of the tiny config's global batch of 8


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return face_shards(tmp_path_factory.mktemp("gan_data"), 48, 32)


@pytest.fixture(scope="module")
def init_full(tmp_path_factory) -> Path:
    """A full rosinality training checkpoint (g, g_ema, d) at 32 px."""
    torch.manual_seed(11)
    G = Generator(GeneratorConfig(size=32, **TINY))
    G.update_w_avg()
    D = Discriminator(DiscriminatorConfig(size=32, channel_multiplier=0.0625, channel_max=32))
    return save_checkpoint(tmp_path_factory.mktemp("init") / "full.pt", "rosinality", g_ema=G, g=G, d=D)


@pytest.fixture(scope="module")
def init_ffhq_style(tmp_path_factory) -> Path:
    """Like a converted FFHQ file: g_ema and latent_avg only."""
    torch.manual_seed(12)
    G = Generator(GeneratorConfig(size=32, **TINY))
    G.update_w_avg()
    return save_checkpoint(tmp_path_factory.mktemp("init") / "gema.pt", "rosinality", g_ema=G)


def args(shards: str, run_dir: Path, steps: int, *extra: str) -> list[str]:
    return ["--config", str(ROOT / "launch/configs/tiny.yaml"), f"loader.data={shards}", f"run.dir={run_dir}",
            f"run.total_kimg={steps * STEP_KIMG}", f"run.tick_kimg={2 * STEP_KIMG}", "loss.r1_interval=2",
            "loss.pl_interval=2", "loader.workers=0", *extra]


def run_inprocess(argv: list[str], monkeypatch) -> int:
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    return cli.main(argv)


# ----------------------------------------------------------------------------
# Every feature, one process.

FEATURES = {
    "plain": ["ada.mode=noaug", "loss.style_mixing=0.9"],
    "ada": ["ada.p=0.5", "ada.kimg_pretrained=0.5"],
    "freezed_nvlabs": ["freeze.d=4"],
    "freezed_cartoon": ["freeze.d=2", "freeze.d_convention=cartoon"],
    "freezeg": ["freeze.g_res=16", "freeze.g_mapping=true", "freeze.noise=true"],
    "freezesg_structure": ["freeze.style=3", "freeze.structure_layers=2", "loss.style_mixing=0"],
    "structure_rgb": ["freeze.structure_layers=3", "freeze.structure_target=rgb", "freeze.structure_weight=2"],
    "bf16": ["model.mixed_precision=bf16", "model.num_fp16_res=2"],  # slow (16 s): the fp16 case runs the same reduced-precision blocks
    "fp16": ["model.mixed_precision=fp16", "model.num_fp16_res=1"],
}


@pytest.mark.parametrize("feature", [pytest.param(f, marks=pytest.mark.slow) if f == "bf16" else f for f in FEATURES])
def test_feature_runs_train_and_keep_frozen_weights(feature, shards, init_full, tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert run_inprocess(args(shards, run, 4, f"model.init={init_full}", *FEATURES[feature]), monkeypatch) == 0
    init, out = load_checkpoint(init_full), load_checkpoint(run / "network.pt")
    o = {kv.split("=")[0]: kv.split("=")[1] for kv in FEATURES[feature]}
    g_frozen = set(generator_frozen_names(out.g, int(o.get("freeze.g_res", 0)), o.get("freeze.g_mapping") == "true",
                                          o.get("freeze.noise") == "true"))
    if feature == "freezeg":  # noise strengths stay at the source's values, at every resolution
        assert {n for n in g_frozen if n.endswith("noise.weight")} == {n for n, _ in out.g.named_parameters()
                                                                        if n.endswith("noise.weight")}
    d_frozen = set(out.d.freeze_names(int(o.get("freeze.d", 0)), o.get("freeze.d_convention", "nvlabs")))
    for net, ref, frozen in ((out.g, init.g, g_frozen), (out.d, init.d, d_frozen)):
        before, after = dict(ref.named_parameters()), dict(net.named_parameters())
        for name in after:
            same = torch.equal(before[name], after[name])
            assert same == (name in frozen), f"{feature}: {name} frozen={name in frozen} unchanged={same}"
    # Frozen parameters are absent from the optimizers (equal weights alone would not show it:
    # Adam leaves a zero-gradient parameter unchanged too).
    flat = flat_checkpoint(latest_ckpt(run), tmp_path / "flat.pt")
    for opt, net, frozen in (("opt_G", out.g, g_frozen), ("opt_D", out.d, d_frozen)):
        held = {k[len(opt) + 7:-len(".exp_avg")] for k in flat if k.startswith(opt + ".state.") and k.endswith(".exp_avg")}
        assert held == {n for n, _ in net.named_parameters()} - frozen, feature
    rows = stats(run)
    assert rows[-1]["Progress/kimg"] == pytest.approx(4 * STEP_KIMG)
    for key in ("Loss/G/loss", "Loss/D/loss", "Loss/r1_penalty", "Loss/pl_penalty", "Timing/sec_per_kimg",
                "Timing/kimg_per_sec", "Progress/augment_p", "Resources/gpu_mem_gib", "Ops/bias_act/ref"):
        assert any(key in r for r in rows), key
    for opt, net, frozen in (("opt_G", out.g, g_frozen), ("opt_D", out.d, d_frozen)):
        # Adam's two float32 moments and one step per trained tensor, measured on the live optimizer.
        want = sum(8 * p.numel() + 4 for n, p in net.named_parameters() if n not in frozen) / 2**20
        assert rows[-1][f"Resources/opt_state_mib_{opt[-1]}"] == pytest.approx(want, rel=1e-5), feature  # 6 digits in stats.jsonl
    if "structure" in feature:
        assert all(r["Loss/G/structure"] > 0 for r in rows)
    if feature == "fp16":
        assert rows[-1]["Progress/loss_scale_G"] >= 1 and rows[-1]["Progress/nonfinite_steps"] == 0
    if feature == "ada":
        assert rows[-1]["Progress/augment_p"] != 0.5 and "Progress/ada_rt" in rows[-1]
    for name in ("config.yaml", "log.txt", "fakes-tick00001.png", "network-rosinality.pt"):
        assert (run / name).is_file(), name
    assert glob.glob(str(run / "events.out.tfevents.*"))


def test_starts_from_a_gema_only_file_with_fresh_d(shards, init_ffhq_style, tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert run_inprocess(args(shards, run, 2, f"model.init={init_ffhq_style}", "freeze.style=2"), monkeypatch) == 0
    out, init = load_checkpoint(run / "network.pt"), load_checkpoint(init_ffhq_style)
    # w_avg follows the trained mapping (NVlabs), from the FFHQ-style file's latent_avg
    assert not torch.equal(out.g_ema.w_avg, init.g_ema.w_avg) and torch.equal(out.g_ema.w_avg, out.g.w_avg)
    assert (out.g_ema.w_avg - init.g_ema.w_avg).norm() < 0.5 * init.g_ema.w_avg.norm()
    assert not torch.equal(out.g.convs[-1].conv.weight, init.g_ema.convs[-1].conv.weight)


# ----------------------------------------------------------------------------
# Two processes: identical gradients after every phase, exact resume, another world size.

TWO_PROCESS_FEATURES = ["ada.p=0.3", "ada.interval=2", "freeze.d=2", "freeze.style=2", "freeze.structure_layers=2",
                        "run.check_sync=true", "run.ckpt_ticks=100", "run.export_ticks=1"]


def test_two_processes_stay_in_sync_and_continue_at_another_world_size(shards, init_full, tmp_path, monkeypatch):
    a = tmp_path / "a"
    r = torchrun("launch.train_gan", 2, args(shards, a, 8, f"model.init={init_full}", *TWO_PROCESS_FEATURES,
                                             "run.ckpt_ticks=2"))
    assert "2 process(es)" in r.stdout
    sync = [row["Debug/sync_checks"] for row in stats(a)]
    assert sync and all(v == 1.0 for v in sync)  # every phase of every step was hash-compared across ranks
    # The half-way checkpoint, continued by one process: runs to the end with the same global batch.
    half = sorted(glob.glob(str(a / "checkpoints/ckpt-*")))[0]
    # Continuing an older checkpoint inside the same run would interleave two histories.
    assert run_inprocess(["--resume", half, f"run.total_kimg={8 * STEP_KIMG}"], monkeypatch) == 2
    c = tmp_path / "c"
    assert run_inprocess(["--resume", half, f"run.dir={c}", f"run.total_kimg={8 * STEP_KIMG}"], monkeypatch) == 0
    assert "(2 -> 1 processes)" in (c / "log.txt").read_text()
    assert stats(c)[-1]["Progress/kimg"] == pytest.approx(8 * STEP_KIMG)


@pytest.mark.slow  # three 2-process launches (about 60 s); test_stop.py resumes a 1-process run bitwise fast
def test_two_processes_resume_bitwise(shards, init_full, tmp_path):
    feats = [f"model.init={init_full}", *TWO_PROCESS_FEATURES]
    a, b = tmp_path / "a", tmp_path / "b"
    torchrun("launch.train_gan", 2, args(shards, a, 8, *feats))
    torchrun("launch.train_gan", 2, args(shards, b, 4, *feats))
    torchrun("launch.train_gan", 2, ["--resume", "latest", f"run.dir={b}", f"run.total_kimg={8 * STEP_KIMG}"])
    fa = assert_same_final_state(a, b, tmp_path, 2)
    assert any(k.startswith("opt_G.state.") and k.endswith("exp_avg_sq") for k in fa)


@pytest.mark.slow  # two 2-process launches and four 1-process runs (about 80 s); test_zero.py checks the step fast
def test_zero_runs_match_the_all_reduce_and_checkpoints_cross_backends(shards, init_full, tmp_path, monkeypatch):
    feats = [f"model.init={init_full}", *TWO_PROCESS_FEATURES, "run.ckpt_ticks=2"]
    z2, z0 = tmp_path / "zero2", tmp_path / "zero0"
    # ZeRO-2 and the all-reduce, 2 processes, one micro-batch per rank: every value bitwise (with
    # several micro-batches ZeRO-2 sums in another order: about 1e-7, see test_zero.py).
    r = torchrun("launch.train_gan", 2, args(shards, z2, 8, *feats, "dist.zero_stage=2"))
    assert "2 process(es)" in r.stdout and all(row["Debug/sync_checks"] == 1.0 for row in stats(z2))
    torchrun("launch.train_gan", 2, args(shards, z0, 8, *feats))
    assert_same_final_state(z2, z0, tmp_path, 2)
    # The ZeRO-2 half-way checkpoint continued by one process under the all-reduce ends where the
    # all-reduce's own half-way checkpoint does.
    half = lambda run: sorted(glob.glob(str(run / "checkpoints/ckpt-*")))[0]  # noqa: E731
    c2, c0 = tmp_path / "c2", tmp_path / "c0"
    for src, dst in ((z2, c2), (z0, c0)):
        assert run_inprocess(["--resume", half(src), f"run.dir={dst}", f"run.total_kimg={8 * STEP_KIMG}",
                              "dist.zero_stage=0"], monkeypatch) == 0
    assert_same_final_state(c2, c0, tmp_path, 1)
    # And the reverse, in one process (its own one-rank group, made and released twice in this
    # interpreter): the all-reduce's 2-process checkpoint under ZeRO-1 offloaded, and ZeRO-2.
    for name, zero in (("e", ["dist.zero_stage=1", "dist.offload_optimizer=cpu"]), ("f", ["dist.zero_stage=2"])):
        assert run_inprocess(["--resume", half(z0), f"run.dir={tmp_path / name}", f"run.total_kimg={8 * STEP_KIMG}",
                              *zero], monkeypatch) == 0
        assert_same_final_state(tmp_path / name, c0, tmp_path, 1)


# ----------------------------------------------------------------------------
# Exports, help, bad input.

def test_export_cli_writes_the_checkpoint_networks(shards, tmp_path, monkeypatch):
    from launch import export_gan
    run = tmp_path / "run"
    assert run_inprocess(args(shards, run, 2), monkeypatch) == 0
    flat = flat_checkpoint(latest_ckpt(run), tmp_path / "flat.pt")
    for fmt in ("rosinality", "toonmix"):
        out = tmp_path / f"{fmt}.pt"
        assert export_gan.main(["--ckpt", str(run / "checkpoints/latest"), "--out", str(out), "--format", fmt]) == 0
        ck = load_checkpoint(out)
        assert ck.format == fmt and ck.d is not None and ck.g is not None
        for name, t in ck.g_ema.state_dict().items():
            assert torch.equal(t, flat[f"G_ema.{name}"]), name


def test_help_lists_every_configuration_key():
    r = subprocess.run([sys.executable, "-m", "launch.train_gan", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0
    for key, *_ in field_docs(GANConfig):
        assert f"  {key} (" in r.stdout, key
    assert "--resume" in r.stdout


@pytest.mark.parametrize("override, message", [
    ("loss.r1_gama=3", "did you mean loss.r1_gamma"),
    ("optim.batch=seven", "optim.batch must be int"),
    ("ada.mode=sometimes", "ada.mode must be one of"),
    ("optim.batch=6", "does not divide"),
    ("freeze.style=2", "need a source generator"),
])
def test_bad_configuration_is_a_clear_error(override, message, shards, tmp_path, monkeypatch, capsys):
    code = run_inprocess(args(shards, tmp_path / "run", 2, override, "optim.batch_gpu=4"), monkeypatch)
    assert code == 2
    assert message in capsys.readouterr().err


def test_checkpoint_for_another_resolution_is_refused(shards, tmp_path, monkeypatch, capsys):
    G = Generator(GeneratorConfig(size=64, **TINY))
    path = save_checkpoint(tmp_path / "g64.pt", "rosinality", g_ema=G)
    assert run_inprocess(args(shards, tmp_path / "run", 2, f"model.init={path}"), monkeypatch) == 2
    assert "64px" in capsys.readouterr().err


def test_empty_shard_folder_and_missing_resume_are_clear_errors(tmp_path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    assert run_inprocess(args(str(tmp_path / "empty"), tmp_path / "run", 2), monkeypatch) == 2
    assert "loader.data" in capsys.readouterr().err
    assert run_inprocess(["--resume", "latest", f"run.dir={tmp_path / 'nothing'}"], monkeypatch) == 2
    assert "no complete checkpoint" in capsys.readouterr().err


def test_persistent_nan_stops_with_a_checkpoint_of_the_last_good_state(shards, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    code = run_inprocess(args(shards, run, 40, "optim.g_lr=1e30", "optim.d_lr=1e30", "run.max_nonfinite=3"), monkeypatch)
    assert code == 3
    assert "NaN/Inf losses or gradients 3 times in a row" in capsys.readouterr().err
    flat = flat_checkpoint(latest_ckpt(run), tmp_path / "flat.pt")
    assert all(torch.isfinite(v).all() for k, v in flat.items() if torch.is_tensor(v) and k.startswith("G."))
    assert flat["train.counters.nonfinite"] == 3 and int(flat["train.fails"].max()) == 3


def test_freeze_d_beyond_the_discriminator_is_a_config_error(shards, tmp_path, monkeypatch, capsys):
    assert run_inprocess(args(shards, tmp_path / "run", 2, "freeze.d=99"), monkeypatch) == 2
    assert "freeze.d: FreezeD 99 exceeds" in capsys.readouterr().err


@pytest.mark.slow  # about a minute on 2 cores; the feature and resume tests cover the loop in `make test`
def test_a_few_hundred_steps_close_the_gap_to_the_data(tmp_path, monkeypatch):
    """A real learning signal at 16 px: G_ema's pixel statistics approach the data's, and
    D's advantage (mean score on reals minus on fakes) falls from its peak."""
    from datasets.loader import LoaderConfig, ShardLoader, to_device

    data = face_shards(tmp_path / "data", 64, 16)
    run = tmp_path / "run"
    argv = ["--config", str(ROOT / "launch/configs/tiny.yaml"), f"loader.data={data}", f"run.dir={run}",
            "run.total_kimg=2.4", "run.tick_kimg=0.4", "loader.workers=0", "ada.mode=noaug", "run.ckpt_ticks=100",
            "optim.ema_kimg=0.02"]
    assert run_inprocess(argv, monkeypatch) == 0
    loader = ShardLoader(LoaderConfig(data, batch_size=16, workers=0), 0, 1, "eval")
    real = torch.cat([to_device(b.images, "cpu") for b in loader])

    def gap(G) -> float:
        with torch.no_grad():
            z = torch.randn(256, G.style_dim, generator=torch.Generator().manual_seed(0))
            fake = G(z, noise_mode="const").clamp(-1, 1)
        return float((real.mean(0) - fake.mean(0)).square().mean() + (real.std(0) - fake.std(0)).square().mean())

    trained = load_checkpoint(run / "network.pt").g_ema
    torch.manual_seed(0)
    untrained = Generator(trained.cfg)
    assert gap(trained) < gap(untrained) / 3
    adv = [r["Loss/scores/real"] - r["Loss/scores/fake"] for r in stats(run)]
    assert len(adv) == 6 and adv[-1] < 0.8 * max(adv)
