"""Encoder training end to end at 32 px: learning, two-process exact resume, export/import, inversion, bad input."""

from __future__ import annotations

import glob
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import face_shards
from run_fixtures import assert_same_final_state, flat_checkpoint, latest_ckpt, sigterm_during, stats, torchrun

from datasets.imageio import save_png, to_uint8
from launch import invert as invert_cli
from launch import train_encoder as cli
from trainer.encoder.config import EncoderTrainConfig
from trainer.encoder.formats import load_encoder, load_restyle, save_restyle
from trainer.model_io import save_checkpoint
from trainer.networks import Generator, GeneratorConfig
from trainer.networks.encoders import Encoder, EncoderConfig
from trainer.networks.irse import IRSEBackbone
from trainer.networks.lpips import LPIPS
from trainer.networks.resnet import ResNet
from trainer.networks.restyle import ReStyle
from trainer.networks.weights import PUBLIC
from trainer.run.config import field_docs

ROOT = Path(__file__).resolve().parents[1]
TINY_G = dict(style_dim=32, n_mlp=2, channel_multiplier=0.0625, channel_max=32)
TINY_ENC = ["model.input_size=32", "model.width=0.125", "model.units=[1,1,1,1]", "loader.workers=0"]


def generator(seed: int, size: int = 32) -> Generator:
    torch.manual_seed(seed)
    G = Generator(GeneratorConfig(size=size, **TINY_G))
    G.update_w_avg()
    return G.eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """Two tiny generators, face shards, shards of the source generator's own images, and
    loss-network weights in their public layouts and names (random values)."""
    root = tmp_path_factory.mktemp("enc")
    out = {"g_src": save_checkpoint(root / "g_src.pt", "rosinality", g_ema=generator(1)),
           "g_tgt": save_checkpoint(root / "g_tgt.pt", "rosinality", g_ema=generator(2)),
           "faces": face_shards(root / "faces", 24, 32)}
    from datasets.process import WriterConfig
    from datasets.shards import write_shards
    from datasets.sources import folder_items
    G = generator(1)
    torch.manual_seed(5)
    with torch.no_grad():
        imgs = to_uint8(G(torch.randn(48, 32), noise_mode="const", truncation_psi=0.7))
    for i, a in enumerate(imgs):
        save_png(a, root / "graw" / f"{i:03d}.png")
    write_shards(folder_items(str(root / "graw"), "none"),
                 WriterConfig(out=str(root / "gshards"), image_size=32, workers=0, min_size=16, shard_samples=16),
                 progress=False, log=lambda _: None)
    out["gen_images"], out["gen_shards"] = root / "graw", str(root / "gshards")
    w = root / "weights"
    w.mkdir()
    torch.manual_seed(3)
    lp = LPIPS("alex")
    torch.save(lp.net.state_dict(), w / PUBLIC["alexnet"].filename)
    torch.save({k: v.abs() for k, v in lp.lins.state_dict().items()}, w / PUBLIC["lpips_alex"].filename)
    res = ResNet(50, width=0.25)
    sd = {f"module.encoder_q.{k}": v for k, v in res.state_dict().items() if not k.startswith("fc.")}
    sd.update({"module.encoder_q.fc.0.weight": torch.randn(8, res.features), "module.encoder_q.fc.2.weight":
               torch.randn(4, 8)})
    torch.save({"state_dict": sd, "epoch": 800, "arch": "resnet50"}, w / PUBLIC["moco_v2"].filename)
    torch.save(IRSEBackbone(units=(1, 1, 1, 1), width=0.125).state_dict(), w / PUBLIC["ir_se50"].filename)
    out["weights"] = w
    return out


def run_inprocess(argv: list[str], monkeypatch) -> int:
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    return cli.main(argv)


# ----------------------------------------------------------------------------
# Learning and the run folder.

def test_refinement_training_lowers_the_reconstruction_loss(files, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    argv = ["--config", str(ROOT / "launch/configs/encoder_tiny.yaml"), f"loader.data={files['gen_shards']}",
            f"decoder.source={files['g_src']}", "loader.workers=0", f"run.dir={run}", "run.total_kimg=0.128",
            "run.tick_kimg=0.016", "optim.batch=4", "optim.n_iters=2", "run.ckpt_ticks=100",
            f"run.val_data={files['gen_images']}", "run.val_images=6", "run.val_ticks=4"]
    assert run_inprocess(argv, monkeypatch) == 0
    rows = stats(run)
    first, last = rows[0]["Loss/l2/pass2"], rows[-1]["Loss/l2/pass2"]
    assert last < 0.75 * first, (first, last)
    assert rows[-1]["Progress/kimg"] == pytest.approx(0.128)
    assert {"Loss/l2/pass1", "Loss/total/pass2", "Timing/img_per_sec", "Ops/upfirdn2d/ref"} <= set(rows[-1])
    val = [r for r in rows if "Val/l2/pass2" in r]  # held-out metrics every 4th tick
    assert [r["Progress/tick"] for r in val] == [4, 8] and "Val/ms_ssim/pass1" in val[-1]
    assert val[-1]["Val/l2/pass2"] < val[0]["Val/l2/pass2"]
    log = (run / "log.txt").read_text()
    assert "RANDOM weights" in log  # no body weights given: said loudly
    assert (run / "config.yaml").is_file() and glob.glob(str(run / "events.out.tfevents.*"))
    grid = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(run / "reconstructions-tick00008.png"))
    assert grid.shape[1] == 3 * 32  # input + 2 passes per row
    # The exported file inverts like the checkpoint it came from.
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    a = load_encoder(run / "checkpoints/latest").invert(x, 2)
    b = load_restyle(run / "encoder-restyle.pt")[0].invert(x, 2)
    for pa, pb in zip(a, b):
        assert torch.equal(pa.latent, pb.latent) and torch.equal(pa.image, pb.image)
    # A resume that would reinterpret the saved state is refused before any step.
    assert run_inprocess(["--resume", "latest", f"run.dir={run}", "model.mixed_precision=fp16",
                          "run.total_kimg=0.2"], monkeypatch) == 2
    assert "cannot resume with changed ['model.mixed_precision']" in capsys.readouterr().err


# ----------------------------------------------------------------------------
# Two processes: SyncBN, every loss, G_swap, exact resume.

def two_process_features(files: dict) -> list[str]:
    return [f"loader.data={files['faces']}", "domain=target", f"decoder.source={files['g_src']}",
            f"decoder.target={files['g_tgt']}", "decoder.swap_res=16", *TINY_ENC, f"weights.dir={files['weights']}",
            "weights.check_hashes=false", "loss.w_norm=0.01", "optim.batch=4", "optim.n_iters=2",
            "run.check_sync=true", "run.tick_kimg=0.008", "run.ckpt_ticks=1"]


def test_two_processes_stay_in_sync_with_every_loss_and_g_swap_and_continue_on_one(files, tmp_path, monkeypatch):
    a = tmp_path / "a"
    # run.check_sync: a rank whose weights or gradients differ from the others' fails the run.
    r = torchrun("launch.train_encoder", 2, [*two_process_features(files), f"run.dir={a}", "run.total_kimg=0.016"])
    assert "2 process(es)" in r.stdout and "G_swap at 16px" in r.stdout
    row = stats(a)[-1]
    assert {"Loss/lpips/pass2", "Loss/id/pass2", "Loss/w_norm/pass2", "Loss/id_similarity/pass1"} <= set(row)
    fa = flat_checkpoint(latest_ckpt(a), tmp_path / "flat.pt")
    assert any(k.startswith("opt.state.") and "slow_buffer" in k for k in fa)  # Ranger's lookahead weights
    assert any(k.endswith("running_var") for k in fa)  # BatchNorm statistics travel with the weights
    # a's first checkpoint continued by one process: runs to the end with the same global batch.
    half = sorted(glob.glob(str(a / "checkpoints/ckpt-*")))[0]
    c = tmp_path / "c"
    assert run_inprocess(["--resume", half, f"run.dir={c}", "run.total_kimg=0.016"], monkeypatch) == 0
    assert "(2 -> 1 processes)" in (c / "log.txt").read_text()
    assert stats(c)[-1]["Progress/kimg"] == pytest.approx(0.016)


@pytest.mark.slow  # two 2-process launches (about 50 s); tests/test_zero.py checks the step itself fast
def test_zero2_with_offload_matches_the_all_reduce_and_resumes_under_it(files, tmp_path, monkeypatch):
    # One refinement pass: one backward per step, summed in the same order by both (with several,
    # ZeRO-2 sums in another order, about 1e-7, which Adam turns into up to lr-sized steps where a
    # gradient is float noise; see test_zero.py).
    feats = [*two_process_features(files), "optim.optimizer=adam", "optim.n_iters=1", "run.total_kimg=0.016",
             "run.ckpt_ticks=1"]
    z, p = tmp_path / "zero", tmp_path / "plain"
    r = torchrun("launch.train_encoder", 2, [*feats, f"run.dir={z}", "dist.zero_stage=2", "dist.offload_optimizer=cpu"])
    # run.check_sync: after each step every rank's weights agree and equal DeepSpeed's float32 master.
    assert "2 process(es)" in r.stdout
    torchrun("launch.train_encoder", 2, [*feats, f"run.dir={p}"])
    fz = assert_same_final_state(z, p, tmp_path, 2)  # every value bitwise, the optimizer state included
    assert any(k.startswith("opt.state.") and k.endswith("exp_avg_sq") for k in fz)
    half = sorted(glob.glob(str(z / "checkpoints/ckpt-*")))[0]
    c = tmp_path / "c"
    assert run_inprocess(["--resume", half, f"run.dir={c}", "run.total_kimg=0.016", "dist.zero_stage=0",
                          "dist.offload_optimizer=none"], monkeypatch) == 0
    assert stats(c)[-1]["Progress/kimg"] == pytest.approx(0.016)


@pytest.mark.slow  # three 2-process launches (about 50 s); the SIGTERM test resumes 2 processes too
def test_two_processes_resume_bitwise_with_every_loss_and_g_swap(files, tmp_path):
    feats = two_process_features(files)
    a, b = tmp_path / "a", tmp_path / "b"
    torchrun("launch.train_encoder", 2, [*feats, f"run.dir={a}", "run.total_kimg=0.016", "run.ckpt_ticks=2"])
    torchrun("launch.train_encoder", 2, [*feats, f"run.dir={b}", "run.total_kimg=0.008"])
    torchrun("launch.train_encoder", 2, ["--resume", "latest", f"run.dir={b}", "run.total_kimg=0.016"])
    assert "resumed from" in (b / "log.txt").read_text()
    fa = assert_same_final_state(a, b, tmp_path, 2)  # every value bitwise, every rank's RNG and data position
    assert any(k.startswith("opt.state.") and "slow_buffer" in k for k in fa)  # Ranger's lookahead state compared too


# ----------------------------------------------------------------------------
# ReStyle's file format.

def test_restyle_format_round_trip_and_a_public_style_file(tmp_path):
    G = generator(1)
    torch.manual_seed(0)
    net = ReStyle(Encoder(EncoderConfig(n_styles=8, style_dim=32, input_size=32, width=0.125, units=[1, 1, 1, 1])), G)
    path = save_restyle(tmp_path / "e.pt", net, {"n_iters_per_batch": 5})
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"state_dict", "opts", "latent_avg"}
    assert raw["latent_avg"].shape == (8, 32) and raw["opts"]["encoder_type"] == "BackboneEncoder"
    assert {k.split(".")[0] for k in raw["state_dict"]} == {"encoder", "decoder"}
    assert "decoder.style.1.weight" in raw["state_dict"] and "decoder.w_avg" not in raw["state_dict"]
    back, opts = load_restyle(path)
    for k, v in net.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    # A file as ReStyle writes it: no architecture record beyond its own opts.
    pub = ReStyle(Encoder(EncoderConfig(backbone="resnet34", n_styles=8, style_dim=32)), G)
    sd = {f"encoder.{k}": v for k, v in pub.encoder.state_dict().items()}
    sd.update({f"decoder.{k}": v for k, v in G.state_dict().items() if k != "w_avg"})
    torch.save({"state_dict": sd, "latent_avg": pub.latent_avg, "opts": {
        "encoder_type": "ResNetBackboneEncoder", "input_nc": 6, "output_size": 32, "n_iters_per_batch": 5}},
        tmp_path / "public.pt")
    loaded, _ = load_restyle(tmp_path / "public.pt")
    assert loaded.encoder.cfg.backbone == "resnet34" and loaded.size == 256
    assert torch.equal(loaded.encoder.body[5].conv1.weight, pub.encoder.body[5].conv1.weight)


def test_invert_cli_writes_every_pass_and_reports_converted_images(files, tmp_path, capsys):
    G = generator(1)
    torch.manual_seed(0)
    net = ReStyle(Encoder(EncoderConfig(n_styles=8, style_dim=32, input_size=32, width=0.125, units=[1, 1, 1, 1])), G)
    enc = save_restyle(tmp_path / "e.pt", net)
    photos = tmp_path / "photos"
    photos.mkdir()
    from PIL import Image
    for i in range(3):
        Image.fromarray(np.full((48, 40, 3), 40 * i, np.uint8)).save(photos / f"{i}.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(photos / "gray.png")
    (photos / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "lat.npz"
    assert invert_cli.main(["--encoder", str(enc), "--images", str(photos), "--out", str(out), "--iters", "3",
                            "--batch", "2", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "converted from L to RGB" in err and "resized to 32x32" in err and "broken.png" in err
    z = np.load(out)
    assert z["latents"].shape == (4, 3, 8, 32) and list(z["names"]) == ["0.png", "1.png", "2.png", "gray.png"]
    x = torch.full((1, 3, 32, 32), 40 / 127.5 - 1)
    expect = net.eval().invert(x, 3)
    np.testing.assert_allclose(z["latents"][1], torch.stack([p.latent[0] for p in expect]).numpy(), atol=1e-5)
    # Shards: every sample once, in manifest order.
    assert invert_cli.main(["--encoder", str(enc), "--images", files["gen_shards"], "--out", str(out),
                            "--iters", "1", "--device", "cpu"]) == 0
    assert np.load(out)["latents"].shape[0] == 48


# ----------------------------------------------------------------------------
# Help and bad input.

@pytest.mark.parametrize("name", ["encoder_tiny.yaml", "restyle_source.yaml", "restyle_target.yaml"])
def test_encoder_config_files_parse_and_validate(name):
    from trainer.run.config import load_config
    cfg = load_config(EncoderTrainConfig, ROOT / "launch/configs" / name)
    assert cfg.optim.n_iters >= 1 and cfg.loader.data
    if name.startswith("restyle"):  # ReStyle's published settings
        assert (cfg.optim.batch, cfg.optim.lr, cfg.optim.optimizer, cfg.optim.n_iters) == (8, 1e-4, "ranger", 5)
        assert (cfg.loss.l2, cfg.loss.lpips, cfg.loss.id, cfg.model.input_size) == (1.0, 0.8, 0.1, 256)
        assert cfg.id_net == ("arcface" if cfg.domain == "source" else "moco")


def test_help_lists_every_configuration_key():
    r = subprocess.run([sys.executable, "-m", "launch.train_encoder", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0
    for key, *_ in field_docs(EncoderTrainConfig):
        assert f"  {key} (" in r.stdout, key
    r = subprocess.run([sys.executable, "-m", "launch.invert", "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "--iters" in r.stdout


@pytest.mark.parametrize("extra, message", [
    ([], "needs alexnet-owt-7be5be79.pth"),  # LPIPS on by default, no weights anywhere: stops before training
    (["loss.lpips=0"], "needs model_ir_se50.pth"),  # the ID loss on faces
    (["loss.lpips=0", "loss.id=0", "domain=target"], "decoder.target is not set"),
    (["loss.lpips=0", "loss.id=0", "decoder.source=/nowhere/g.pt"], "no such checkpoint"),
    (["loss.lpips=0", "loss.id=0", "optim.batch=3", "optim.optimizr=adam"], "did you mean optim.optimizer"),
    (["loss.lpips=0", "loss.id=0", "run.val_data=/nowhere/held-out"], "run.val_data=/nowhere/held-out"),
])
def test_bad_input_stops_before_training_with_a_clear_message(extra, message, files, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    argv = [f"loader.data={files['faces']}", f"decoder.source={files['g_src']}", *TINY_ENC, f"run.dir={run}",
            "run.total_kimg=0.008", *extra]
    assert run_inprocess(argv, monkeypatch) == 2
    assert message in capsys.readouterr().err
    assert not (run / "checkpoints").exists()


def test_encoder_for_another_generator_resolution_is_refused(files, tmp_path, monkeypatch, capsys):
    G64 = generator(1, 64)
    enc = Encoder(EncoderConfig(n_styles=G64.n_latent, style_dim=32, input_size=32, width=0.125, units=[1, 1, 1, 1]))
    init = save_restyle(tmp_path / "e64.pt", ReStyle(enc, G64))
    argv = [f"loader.data={files['faces']}", f"decoder.source={files['g_src']}", *TINY_ENC, "loss.lpips=0",
            "loss.id=0", f"model.init={init}", f"run.dir={tmp_path / 'run'}", "run.total_kimg=0.008"]
    assert run_inprocess(argv, monkeypatch) == 2
    assert "predicts 10 W+ vectors" in capsys.readouterr().err


def test_eval_encoder_reports_every_metric_per_pass(files, tmp_path, capsys):
    from launch import eval_encoder
    G = generator(1)
    torch.manual_seed(0)
    net = ReStyle(Encoder(EncoderConfig(n_styles=8, style_dim=32, input_size=32, width=0.125, units=[1, 1, 1, 1])), G)
    enc = save_restyle(tmp_path / "e.pt", net)
    out = tmp_path / "m.json"
    assert eval_encoder.main(["--encoder", str(enc), "--images", str(files["gen_images"]), "--iters", "2",
                              "--limit", "10", "--weights-dir", str(files["weights"]), "--no-check-hashes",
                              "--out", str(out), "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report == json.loads(out.read_text())
    assert report["images"] == 10 and report["ms_ssim_scales"] == 2 and len(report["passes"]) == 2
    for row in report["passes"]:
        assert {"l2", "lpips", "id_similarity", "ms_ssim"} <= set(row)
        assert 0 <= row["ms_ssim"] <= 1 and -1 <= row["id_similarity"] <= 1 and row["lpips"] >= 0
    # L2 of pass 1 by hand over the same ten images.
    from trainer.encoder.data import ImageSource
    x = torch.cat([b for _, b in ImageSource(str(files["gen_images"]), 32, 10, 10).batches()])
    y = net.eval().invert(x, 1)[0].image.clamp(-1, 1)
    assert report["passes"][0]["l2"] == pytest.approx(float((y - x).square().mean()), rel=1e-5)
    # Without LPIPS weights: a clear error naming the file, unless LPIPS is skipped.
    assert eval_encoder.main(["--encoder", str(enc), "--images", str(files["gen_images"]), "--limit", "2"]) == 2
    assert "alexnet-owt-7be5be79.pth" in capsys.readouterr().err


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_with_finite_losses(precision, files, tmp_path, monkeypatch):
    run = tmp_path / "run"
    argv = [f"loader.data={files['faces']}", f"decoder.source={files['g_src']}", *TINY_ENC, "loss.id=0",
            f"weights.dir={files['weights']}", "weights.check_hashes=false", f"model.mixed_precision={precision}",
            f"run.dir={run}", "run.total_kimg=0.008", "run.tick_kimg=0.004", "optim.batch=2", "optim.n_iters=2"]
    seen = set()
    forward = Encoder.forward
    monkeypatch.setattr(Encoder, "forward", lambda self, x: (lambda y: seen.add(y.dtype) or y)(forward(self, x)))
    assert run_inprocess(argv, monkeypatch) == 0
    assert seen == {torch.bfloat16 if precision == "bf16" else torch.float16}  # the encoder ran under autocast
    rows = stats(run)
    assert all(np.isfinite(r["Loss/total/pass2"]) and np.isfinite(r["Loss/lpips/pass2"]) for r in rows)
    assert rows[-1]["Progress/nonfinite_steps"] == 0
    assert rows[-1]["Progress/loss_scale"] == (2.0 ** 14 if precision == "fp16" else 1.0)


def test_persistent_nan_stops_with_a_checkpoint_of_the_last_good_state(files, tmp_path, monkeypatch, capsys):
    from run_fixtures import flat_checkpoint, latest_ckpt
    run = tmp_path / "run"
    argv = [f"loader.data={files['faces']}", f"decoder.source={files['g_src']}", *TINY_ENC, "loss.lpips=0",
            "loss.id=0", "optim.optimizer=adam", "optim.lr=1e30", "run.max_nonfinite=3", f"run.dir={run}",
            "run.total_kimg=0.2", "optim.batch=2", "optim.n_iters=1"]
    assert run_inprocess(argv, monkeypatch) == 3
    assert "NaN/Inf 3 steps in a row" in capsys.readouterr().err
    flat = flat_checkpoint(latest_ckpt(run), tmp_path / "flat.pt")
    bad = [k for k, v in flat.items() if torch.is_tensor(v) and k.startswith("net.encoder.") and not torch.isfinite(v).all()]
    assert bad == []
    assert flat["train.counters.nonfinite"] == 3


@pytest.mark.slow
def test_sigterm_to_a_two_process_run_at_a_random_step_then_resume_is_bitwise(files, tmp_path):
    feats = [f"loader.data={files['faces']}", f"decoder.source={files['g_src']}", *TINY_ENC, "loss.lpips=0",
             "loss.id=0", "optim.batch=4", "optim.n_iters=2", "run.tick_kimg=0.008", "run.ckpt_ticks=100",
             "run.total_kimg=0.08"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    torchrun("launch.train_encoder", 2, [*feats, f"run.dir={full}"])
    out = sigterm_during("launch.train_encoder", 2, [*feats, f"run.dir={cut}"], cut)
    assert "stopped on request (SIGTERM)" in (cut / "log.txt").read_text(), out[-3000:]
    assert stats(cut)[-1]["Progress/kimg"] < 0.08
    torchrun("launch.train_encoder", 2, [*feats, f"run.dir={cut}", "--resume", "auto"])
    assert "resumed from" in (cut / "log.txt").read_text()
    assert_same_final_state(full, cut, tmp_path, 2)
