"""launch.project: projections lower their loss, the saved latent and noise reproduce the saved
image, videos and sheets are written, bad input is refused, and ranks do not change results."""

from __future__ import annotations

import json

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

from datasets.imageio import save_png, to_uint8
from launch import project as cli
from tests.run_fixtures import torchrun
from trainer.model_io import load_checkpoint, save_checkpoint
from trainer.networks import Generator, GeneratorConfig

TINY_G = dict(style_dim=32, n_mlp=2, channel_multiplier=0.0625, channel_max=32)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("project")
    torch.manual_seed(3)
    G = Generator(GeneratorConfig(size=16, **TINY_G))
    G.update_w_avg()
    imgs = root / "imgs"
    with torch.no_grad():  # targets the generator can reach: its own images
        x = G(torch.randn(3, 32), noise_mode="const")
    for i, im in enumerate(to_uint8(x)):
        save_png(im, imgs / f"face{i}.png")
    Image.new("RGB", (16, 40)).save(imgs / "strip.png")  # not face-shaped: refused
    (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    return {"g": str(save_checkpoint(root / "g.pt", "rosinality", g_ema=G)), "imgs": str(imgs)}


def args(files: dict, out, *extra: str) -> list[str]:
    return ["--ckpt", files["g"], "--images", files["imgs"], "--out", str(out), "--steps", "30", "--no-lpips",
            "--batch", "2", "--min-side", "16", "--w-avg-samples", "256", *extra]


def test_projection_lowers_its_loss_and_its_files_reproduce_it(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    out = tmp_path / "p"
    assert cli.main(args(files, out, "--video", "--video-every", "10")) == 0
    report = json.loads((out / "report.json").read_text())
    assert [e["stem"] for e in report["images"]] == ["face0", "face1", "face2"]
    assert sorted(r[1].split(":")[0] for r in report["refused"]) == ["not a face-sized image", "unreadable"]
    G = load_checkpoint(files["g"]).generator().eval()
    for e in report["images"]:
        z = np.load(out / f"{e['stem']}.npz")
        assert z["w"].shape == (G.n_latent, G.style_dim) and len(z["loss"]) == 30
        assert z["loss"][-1] < 0.5 * z["loss"][0]  # the objective falls over the run
        noise = [torch.from_numpy(z[f"noise_{i}"])[None] for i in range(G.num_layers)]
        with torch.no_grad():
            img = G.synthesis(torch.from_numpy(z["w"])[None], noise=noise).img
        saved = np.asarray(Image.open(out / f"{e['stem']}.png"))
        assert np.abs(to_uint8(img)[0].astype(int) - saved).max() <= 1  # the latent and noise it saved
        target = np.asarray(Image.open(files["imgs"] + f"/{e['stem']}.png"), dtype=np.float64) / 127.5 - 1
        assert e["l2"] == pytest.approx(np.square(saved / 127.5 - 1 - target).mean(), abs=0.02)
        frames = imageio_ffmpeg.read_frames(str(out / f"{e['stem']}.mp4"))
        meta = next(frames)
        assert sum(1 for _ in frames) == 4 and meta["size"] == (32, 16)  # steps 0, 10, 20, 30; target beside it
        assert Image.open(out / "sheets" / f"{e['stem']}.png").size == (32, 16)
    assert "skipped:" in capsys.readouterr().err


@pytest.mark.slow  # 16 s; cartoonize's 2-rank test covers the same batch split and gather fast
def test_two_ranks_give_the_one_rank_latents(files, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    torch.set_num_threads(1)  # as each torchrun process: the same CPU kernels
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli.main(args(files, one, "--steps", "5")) == 0
    torchrun("launch.project", 2, args(files, two, "--steps", "5"))
    for stem in ("face0", "face1", "face2"):
        assert np.array_equal(np.load(one / f"{stem}.npz")["w"], np.load(two / f"{stem}.npz")["w"])


@pytest.mark.parametrize("change, message", [
    ([], "vgg16-397923af.pth"),  # LPIPS on by default: its files must be found
    (["--no-lpips", "--steps", "0"], "--steps"),
    (["--no-lpips", "--images", "/nonexistent"], "/nonexistent"),
])
def test_bad_input_exits_2_with_a_clear_message(change, message, files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    monkeypatch.delenv("TOONMIX_WEIGHTS", raising=False)
    argv = [a for a in args(files, tmp_path / "p") if a != "--no-lpips"] + change
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
