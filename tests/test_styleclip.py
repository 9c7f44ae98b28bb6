"""eval.clip, eval.styleclip and launch.styleclip on a tiny generator and a tiny random CLIP
written by the test in Hugging Face's layout (no download)."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.imageio import to_uint8
from eval.clip import CLIPScorer
from eval.styleclip import StyleCLIPConfig, at_strength, measure, optimise, render
from launch import styleclip as cli
from launch._args import latents_from
from tests.run_fixtures import torchrun
from tests.test_sefa import tiny
from trainer.model_io import save_checkpoint
from trainer.networks import irse
from trainer.networks.face_id import FaceID
from trainer.networks.weights import PUBLIC, WeightsError


def write_tiny_clip(folder: Path) -> Path:
    """A random CLIP (2-layer text and 32 px vision towers, 16-d embeddings) and a character-level
    byte-pair vocabulary, as CLIPModel.save_pretrained and OpenAI's tokenizer files lay them out."""
    from transformers import CLIPConfig, CLIPModel

    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    for c in string.ascii_lowercase + string.digits + string.punctuation:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    bos, eos = len(vocab), len(vocab) + 1
    vocab.update({"<|startoftext|>": bos, "<|endoftext|>": eos})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tower = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(vocab), max_position_embeddings=32, bos_token_id=bos,
                                      eos_token_id=eos, pad_token_id=eos, **tower),
                     vision_config=dict(image_size=32, patch_size=8, **tower), projection_dim=16)
    torch.manual_seed(3)
    CLIPModel(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("styleclip")
    torch.manual_seed(5)
    arc = root / PUBLIC["ir_se50"].filename
    torch.save(irse.IRSEBackbone(32, units=(1, 1, 1, 1), width=0.125, embedding=32).state_dict(), arc)
    return {"clip": write_tiny_clip(root / "clip"), "arcface": arc,
            "g": str(save_checkpoint(root / "g.pt", "rosinality", g_ema=tiny(0)))}


@pytest.fixture(scope="module")
def scorer(files) -> CLIPScorer:
    return CLIPScorer.from_folder(files["clip"])


def test_the_clip_loss_falls_and_strength_0_and_1_are_the_start_and_the_edit(scorer):
    G = tiny(0)
    text = scorer.text(["red hair"])
    w0 = latents_from(G, [1, 2], None, 0.7, "cpu")
    edit = optimise(G, scorer, text, w0, StyleCLIPConfig(steps=25, lr=0.1, l2_lambda=0.001))
    first, last = edit.clip_losses[1], edit.clip_losses[-1]  # step 0 has learning rate 0
    assert (last < first - 0.01).all(), (first, last)
    with torch.no_grad():
        assert torch.equal(render(G, at_strength(w0, edit.direction, 0.0)), render(G, w0))
        m = measure(G, scorer, text, w0, edit.direction)
    assert all(a > b for a, b in zip(m["clip_after"], m["clip_before"]))
    assert m["l2_change"] == pytest.approx(edit.direction.flatten(1).norm(dim=1).tolist())
    # In W: one vector per latent, the same change in every entry.
    d = optimise(G, scorer, text, w0, StyleCLIPConfig(steps=3, space="w")).direction
    assert torch.equal(d, d[:, :1].expand_as(d)) and d.abs().sum() > 0


def test_the_identity_term_keeps_the_face_closer(files, scorer):
    G = tiny(0)
    face_id = FaceID.from_file(files["arcface"], check_hash=False)
    text = scorer.text(["a blue face"])
    w0 = latents_from(G, [4, 5], None, 0.7, "cpu")
    sims = {}
    for lam in (0.0, 2.0):
        edit = optimise(G, scorer, text, w0, StyleCLIPConfig(steps=10, lr=0.1, l2_lambda=0.0, id_lambda=lam),
                        face_id)
        sims[lam] = measure(G, scorer, text, w0, edit.direction, face_id)["id_similarity"]
    assert all(kept > free for kept, free in zip(sims[2.0], sims[0.0])), sims
    with pytest.raises(ValueError, match="needs the ArcFace network"):
        optimise(G, scorer, text, w0, StyleCLIPConfig(steps=2, id_lambda=0.1))


def test_command_saves_a_direction_that_reproduces_the_edit_when_applied(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    out, again = tmp_path / "edit", tmp_path / "again"
    assert cli.main(["--ckpt", files["g"], "--clip", str(files["clip"]), "--prompt", "green eyes", "--seeds", "3,4",
                     "--steps", "6", "--strengths", "0", "1", "2", "--out", str(out), "--video", "--batch", "1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["latents"] == 2 and summary["video"] == str(out / "sweep.mp4")
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["latents"]] == ["seed 3", "seed 4"]
    assert all(len(r["losses"]) == 6 and "clip_after" in r for r in report["latents"])
    sheet = np.asarray(Image.open(out / "sheet.png"))
    assert sheet.shape == (2 * 16, 3 * 16, 3)
    G = tiny(0)
    with torch.no_grad():  # column 0: the start images exactly
        start = render(G, latents_from(G, [3, 4], None, 0.7, "cpu"))
    assert np.array_equal(sheet[:, :16], np.concatenate(list(to_uint8(start)), axis=0))
    # The saved direction of latent 1, applied to the same start without optimising: the same edit.
    assert cli.main(["--ckpt", files["g"], "--direction", str(out / "direction.npz"), "--direction-index", "1",
                     "--seeds", "4", "--strengths", "1", "--out", str(again)]) == 0
    assert np.array_equal(np.asarray(Image.open(again / "sheet.png")), sheet[16:, 16:32])
    assert np.allclose(np.load(again / "edited.npz")["w"], np.load(out / "edited.npz")["w"][1:])


@pytest.mark.parametrize("change, message", [
    (["--clip", "{root}/nowhere"], "no such CLIP folder; get Hugging Face's openai/clip-vit-base-patch32"),
    (["--clip", "{root}/half"], "the CLIP folder lacks vocab.json, merges.txt"),
    (["--prompt", "  "], "an empty prompt"),
    (["--latents", "{root}/none.npy"], "none.npy: cannot read a latent"),
    (["--lut", "{root}/none.pt", "--character", "hero"], "none.pt"),
    (["--seeds", "1", "--character", "hero"], "--character needs --lut"),
    (["--direction", "{root}/none.npz"], "not a direction file of launch.styleclip"),
    (["--direction", "{root}/wplus.npy"], "wplus.npy: not a direction file of launch.styleclip"),
    (["--latents", "{root}/wplus.npy", "--space", "w"], "--space w needs start latents whose W+ entries are all equal"),
    (["--id-lambda", "0.1"], "--id-lambda > 0 needs the ArcFace network"),
    (["--direction-index", "1"], "--direction-index needs --direction FILE"),
    (["--steps", "1"], "steps must be >= 2"),
])
def test_bad_input_exits_2(change, message, files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    np.save(tmp_path / "wplus.npy", np.random.default_rng(0).standard_normal((1, 6, 16)).astype(np.float32))
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text("{}")
    (half / "model.safetensors").write_bytes(b"")
    base = {"--clip": str(files["clip"]), "--prompt": "red hair"}
    extra = [a.format(root=tmp_path) for a in change]
    argv = ["--ckpt", files["g"], "--out", str(tmp_path / "o")] + ([] if "--steps" in extra else ["--steps", "2"])
    for k, v in base.items():
        if k not in extra:
            argv += [k, v]
    assert cli.main(argv + extra) == 2
    assert message in capsys.readouterr().err


def test_strengths_take_negative_numbers_and_refuse_non_finite_ones(capsys):
    parse = lambda *s: cli.build_parser().parse_args(["--ckpt", "g", "--out", "o", "--strengths", *s]).strengths
    assert parse("-1", "0", "1.5") == [-1.0, 0.0, 1.5]
    for bad in ("nan", "inf", "x"):
        with pytest.raises(SystemExit) as e:
            parse(bad)
        assert e.value.code == 2
    assert "expected a finite number, got 'inf'" in capsys.readouterr().err


def test_a_direction_index_outside_the_file_exits_2(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    G = tiny(0)
    np.savez(tmp_path / "d.npz", per_latent=np.zeros((2, G.n_latent, G.style_dim), np.float32),
             mean=np.zeros((G.n_latent, G.style_dim), np.float32), w0=np.zeros((2, G.n_latent, G.style_dim)),
             prompt=np.array("x"))
    assert cli.main(["--ckpt", files["g"], "--direction", str(tmp_path / "d.npz"), "--direction-index", "2",
                     "--seeds", "1", "--out", str(tmp_path / "o")]) == 2
    assert "--direction-index '2': 'mean' or 0-1" in capsys.readouterr().err


def test_a_missing_clip_folder_names_where_to_get_it():
    with pytest.raises(WeightsError, match="no CLIP folder given"):
        CLIPScorer.from_folder(None)


@pytest.mark.slow  # three 2-process torchrun launches importing transformers: about 40 s
def test_two_ranks_give_the_one_rank_edits(files, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    torch.set_num_threads(1)  # as each torchrun process: the same CPU kernels
    argv = ["--ckpt", files["g"], "--clip", str(files["clip"]), "--prompt", "green eyes", "--seeds", "3-5",
            "--steps", "4", "--batch", "1"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli.main([*argv, "--out", str(one)]) == 0
    torchrun("launch.styleclip", 2, [*argv, "--out", str(two)])
    # One latent on two ranks: rank 1 has no batch and still joins every collective.
    torchrun("launch.styleclip", 2, [*argv[:6], "--seeds", "3", "--steps", "4", "--batch", "1",
                                     "--out", str(tmp_path / "lone")])
    assert np.allclose(np.load(tmp_path / "lone" / "direction.npz")["per_latent"],
                       np.load(one / "direction.npz")["per_latent"][:1], atol=1e-5)
    a, b = np.load(one / "direction.npz"), np.load(two / "direction.npz")
    assert np.array_equal(a["w0"], b["w0"])
    # Each latent is optimised alone on either split; the torchrun processes' CPU kernels differ from
    # this process's in the last bits (measured under 1e-6), so the directions agree to float tolerance.
    assert np.abs(a["per_latent"]).max() > 1e-3 and np.allclose(a["per_latent"], b["per_latent"], atol=1e-5)
    sheets = [np.asarray(Image.open(d / "sheet.png")).astype(int) for d in (one, two)]
    assert np.abs(sheets[0] - sheets[1]).max() <= 1


def test_a_character_of_the_look_up_table_is_edited_in_g_swap(packed, files, tmp_path, monkeypatch, capsys):
    from eval.cdsm import LookUpTable

    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    argv = ["--ckpt", packed["g_src"], "--g-target", packed["g_tgt"], "--swap-res", "32", "--clip",
            str(files["clip"]), "--prompt", "blue hair", "--lut", str(packed["six"] / "lut.pt"), "--steps", "2",
            "--strengths", "0", "1", "--out", str(tmp_path / "hero")]
    assert cli.main([*argv, "--character", "hero"]) == 0
    report = json.loads((tmp_path / "hero" / "report.json").read_text())
    assert [r["name"] for r in report["latents"]] == ["character hero"]
    w0 = np.load(tmp_path / "hero" / "direction.npz")["w0"]
    assert np.array_equal(w0[0], LookUpTable.load(packed["six"] / "lut.pt").get("hero").latent.numpy())
    assert cli.main([*argv, "--character", "villain"]) == 2
    assert "villain" in capsys.readouterr().err
    assert cli.main([*argv[:2], *argv[6:], "--character", "hero"]) == 2  # the source G alone: not the table's
    assert "built for another generator" in capsys.readouterr().err
