"""Checkpoint formats: round trips with identical outputs, detection, bad input."""

from __future__ import annotations

import argparse
import os
import pickle
import warnings

import pytest
import torch

from tests.nvlabs_pickle import write_nvlabs_pickle
from trainer.model_io import (ArchitectureMismatch, CheckpointError, FormatChangeWarning, MbstdChangeError,
                              UnsafeCheckpointError, detect_format, load_checkpoint, save_checkpoint)
from trainer.networks import Discriminator, Generator


@pytest.fixture
def nets():
    G = Generator(size=16, style_dim=8, n_mlp=2, channel_max=8, channel_multiplier=1 / 256)
    G.update_w_avg(256)
    g = Generator(G.cfg)
    g.load_state_dict(G.state_dict())
    with torch.no_grad():
        for p in G.parameters():
            p.add_(0.01 * torch.randn_like(p))  # g_ema differs from g, noise strengths non-zero
    D = Discriminator(size=16, channel_max=8, channel_multiplier=1 / 256)
    return G, g, D


def same_outputs(a: Generator, b: Generator) -> bool:
    z = torch.randn(3, a.style_dim)
    return torch.equal(a(z, noise_mode="const", truncation_psi=0.7), b(z, noise_mode="const", truncation_psi=0.7))


def same_logits(a: Discriminator, b: Discriminator) -> bool:
    x = torch.randn(4, 3, a.cfg.size, a.cfg.size)
    return torch.equal(a(x), b(x))


def test_rosinality_round_trip_and_layout(tmp_path, nets):
    G, g, D = nets
    path = save_checkpoint(tmp_path / "r.pt", "rosinality", g_ema=G, g=g, d=D,
                           extra={"args": {"size": 16, "channel_multiplier": 1 / 256}, "ada_aug_p": 0.25})
    with torch.serialization.safe_globals([argparse.Namespace]):
        raw = torch.load(path, weights_only=True)
    assert set(raw) == {"g_ema", "g", "d", "latent_avg", "args", "ada_aug_p"}
    assert isinstance(raw["args"], argparse.Namespace)
    assert raw["g_ema"]["conv1.conv.weight"].shape == (1, 8, 8, 3, 3)
    assert raw["g_ema"]["to_rgb1.bias"].shape == (1, 3, 1, 1) and "w_avg" not in raw["g_ema"]
    assert raw["d"]["final_conv.0.weight"].shape[1] == 8 + 1
    ck = load_checkpoint(path)
    assert ck.format == "rosinality" and detect_format(path) == "rosinality"
    assert same_outputs(G, ck.g_ema) and same_outputs(g, ck.g) and same_logits(D, ck.d)
    assert ck.extra["ada_aug_p"] == 0.25 and ck.extra["args"]["size"] == 16


def test_rosinality_without_latent_avg_computes_it(tmp_path, nets):
    G, _, _ = nets
    sd = {k: v for k, v in G.state_dict().items() if k != "w_avg"}
    torch.save({"g_ema": sd}, tmp_path / "conv.pt")
    ck = load_checkpoint(tmp_path / "conv.pt")
    assert torch.isfinite(ck.g_ema.w_avg).all()
    assert torch.allclose(ck.g_ema.w_avg, G.w_avg, atol=0.3)  # the same mapping, sampled
    assert ck.g is None and ck.d is None


def test_native_round_trip(tmp_path, nets):
    G, g, D = nets
    path = save_checkpoint(tmp_path / "n.pt", "toonmix", g_ema=G, g=g, d=D, extra={"kimg": 12.5})
    assert detect_format(path) == "toonmix"
    ck = load_checkpoint(path)
    assert ck.format == "toonmix" and ck.extra == {"kimg": 12.5}
    assert ck.g_ema.cfg == G.cfg
    assert same_outputs(G, ck.g_ema) and same_outputs(g, ck.g) and same_logits(D, ck.d)


def test_nvlabs_pickle_import_runs_no_embedded_code(tmp_path, nets):
    G, g, D = nets
    marker = tmp_path / "executed"
    write_nvlabs_pickle(tmp_path / "n.pkl", G=g, G_ema=G, D=D, marker=str(marker), lr_mlp=0.01)
    assert detect_format(tmp_path / "n.pkl") == "nvlabs"
    ck = load_checkpoint(tmp_path / "n.pkl")
    assert not marker.exists()
    assert ck.g_ema.cfg.n_mlp == 2 and ck.g_ema.cfg.lr_mlp == 0.01 and ck.g_ema.cfg.channel_max == 8
    assert same_outputs(G, ck.g_ema) and same_outputs(g, ck.g) and same_logits(D, ck.d)
    assert torch.equal(ck.g_ema.w_avg, G.w_avg)


def test_nvlabs_mapping_depth_and_lr_are_read_from_the_pickle(tmp_path):
    G = Generator(size=8, style_dim=6, n_mlp=3, lr_mlp=0.1, channel_max=4)
    G.update_w_avg(64)
    write_nvlabs_pickle(tmp_path / "n.pkl", G_ema=G, lr_mlp=0.1)
    ck = load_checkpoint(tmp_path / "n.pkl")
    assert (ck.g_ema.cfg.n_mlp, ck.g_ema.cfg.style_dim, ck.g_ema.cfg.lr_mlp) == (3, 6, 0.1)
    assert same_outputs(G, ck.g_ema)


def paper256_like(tmp_path):
    """A tiny NVlabs pickle set up as 'paper256' is: conv_clamp 256 on every conv layer,
    the highest resolutions in float16 (2 of 16 px's 3 blocks here), minibatch-stddev group 8."""
    G = Generator(size=16, style_dim=8, n_mlp=2, channel_max=8, channel_multiplier=1 / 256,
                  conv_clamp=256.0, num_fp16_res=2)
    G.update_w_avg(64)
    D = Discriminator(size=16, channel_max=8, channel_multiplier=1 / 256, conv_clamp=256.0, num_fp16_res=2,
                      stddev_group=8)
    write_nvlabs_pickle(tmp_path / "paper256.pkl", G_ema=G, D=D)
    return tmp_path / "paper256.pkl"


def test_nvlabs_conv_clamp_and_fp16_blocks_survive_import_and_our_format(tmp_path):
    ck = load_checkpoint(paper256_like(tmp_path))
    for cfg in (ck.g_ema.cfg, ck.d.cfg):
        assert (cfg.conv_clamp, cfg.num_fp16_res, cfg.precision) == (256.0, 2, "float16")
    assert ck.d.cfg.stddev_group == 8
    # The blocks run as NVlabs' do: 8 and 16 px in float16, 4 px in float32.
    assert [m.conv.dtype for m in ck.g_ema.convs] == [torch.float16] * 4 and ck.g_ema.conv1.conv.dtype == torch.float32
    assert ck.g_ema.to_rgbs[0].clamp == 256.0 and ck.g_ema.convs[0].activate.clamp == 256.0
    path = save_checkpoint(tmp_path / "n.pt", "toonmix", g_ema=ck.g_ema, d=ck.d)
    back = load_checkpoint(path)
    assert back.g_ema.cfg == ck.g_ema.cfg and back.d.cfg == ck.d.cfg
    assert same_outputs(ck.g_ema, back.g_ema) and same_logits(ck.d, back.d)


@pytest.mark.parametrize("attrs,match", [
    ({"G_ema": {"synthesis.b8.conv0": {"conv_clamp": 128}}}, "different conv_clamp values"),
    ({"D": {"b4.conv": {"conv_clamp": "256"}}}, "not a positive number"),
    ({"G_ema": {"synthesis.b16": {"use_fp16": False}}}, "not the highest resolutions"),
])
def test_nvlabs_clamps_and_fp16_layouts_ours_cannot_run_are_refused(tmp_path, attrs, match):
    G = Generator(size=16, style_dim=8, n_mlp=1, channel_max=4, conv_clamp=256.0, num_fp16_res=2)
    D = Discriminator(size=16, channel_max=4, conv_clamp=256.0)
    write_nvlabs_pickle(tmp_path / "n.pkl", G_ema=G, D=D, attrs=attrs)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path / "n.pkl")


def test_rosinality_write_refuses_a_mbstd_group_it_cannot_hold(tmp_path, nets):
    G, _, _ = nets
    D8 = Discriminator(size=16, channel_max=8, channel_multiplier=1 / 256, stddev_group=8)
    with pytest.raises(MbstdChangeError, match="group size is 8") as info:
        save_checkpoint(tmp_path / "r.pt", "rosinality", g_ema=G, d=D8)
    assert info.value.group == 8 and not (tmp_path / "r.pt").exists()
    with pytest.warns(FormatChangeWarning, match="group size changed from 8 to 4"):
        save_checkpoint(tmp_path / "r.pt", "rosinality", g_ema=G, d=D8, allow_mbstd_change=True)
    assert load_checkpoint(tmp_path / "r.pt").d.cfg.stddev_group == 4
    clamped = Generator(G.cfg.__class__(**{**G.cfg.to_dict(), "conv_clamp": 256.0}))
    with pytest.warns(FormatChangeWarning, match="conv_clamp 256 dropped"):
        save_checkpoint(tmp_path / "c.pt", "rosinality", g_ema=clamped)
    with warnings.catch_warnings():  # our format holds both: nothing to refuse or warn about
        warnings.simplefilter("error", FormatChangeWarning)
        save_checkpoint(tmp_path / "n.pt", "toonmix", g_ema=clamped, d=D8)


def test_conversion_chain_keeps_outputs(tmp_path, nets):
    G, _, D = nets
    write_nvlabs_pickle(tmp_path / "a.pkl", G_ema=G, D=D)
    a = load_checkpoint(tmp_path / "a.pkl")
    save_checkpoint(tmp_path / "b.pt", "rosinality", g_ema=a.g_ema, d=a.d)
    b = load_checkpoint(tmp_path / "b.pt")
    save_checkpoint(tmp_path / "c.pt", "toonmix", g_ema=b.g_ema, d=b.d)
    c = load_checkpoint(tmp_path / "c.pt")
    assert same_outputs(G, c.g_ema) and same_logits(D, c.d)


def test_truncated_file_is_a_clear_error(tmp_path, nets):
    G, _, _ = nets
    path = save_checkpoint(tmp_path / "r.pt", "rosinality", g_ema=G)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")
    write_nvlabs_pickle(tmp_path / "n.pkl", G_ema=G)
    data = (tmp_path / "n.pkl").read_bytes()
    (tmp_path / "cut.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pkl")


def test_missing_empty_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "img.pt").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 32)
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        load_checkpoint(tmp_path / "img.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="unknown checkpoint layout"):
        load_checkpoint(tmp_path / "other.pt")


def test_wrong_architecture_lists_every_difference(tmp_path, nets):
    G, _, _ = nets
    sd = {k: v for k, v in G.state_dict().items() if k != "w_avg"}
    del sd["convs.1.noise.weight"]
    sd["convs.0.conv.modulation.bias"] = torch.ones(5)
    sd["extra.weight"] = torch.ones(1)
    torch.save({"g_ema": sd}, tmp_path / "bad.pt")
    with pytest.raises(ArchitectureMismatch) as info:
        load_checkpoint(tmp_path / "bad.pt")
    msg = str(info.value)
    assert "convs.1.noise.weight" in msg and "extra.weight" in msg
    assert "convs.0.conv.modulation.bias: checkpoint [5] vs model [8]" in msg
    assert info.value.missing == ["convs.1.noise.weight"] and info.value.unexpected == ["extra.weight"]


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch " + os.environ.get("EVIL_MARKER", "/tmp/evil-marker"),))


def test_pickles_with_code_are_refused(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"G_ema": _Evil()}, f)
    with pytest.raises(UnsafeCheckpointError, match="refusing to unpickle"):
        load_checkpoint(tmp_path / "evil.pkl")
    torch.save({"g_ema": {}, "args": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match="allow-list"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_failed_save_keeps_the_existing_file(tmp_path, nets, monkeypatch):
    G, _, _ = nets
    path = save_checkpoint(tmp_path / "r.pt", "rosinality", g_ema=G)
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, "rosinality", g_ema=G)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["r.pt"]
    with pytest.raises(CheckpointError, match="NVlabs"):
        save_checkpoint(tmp_path / "x.pkl", "nvlabs", g_ema=G)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_get_the_umasks_mode_not_0600(nets, tmp_path, umask):
    # Other users of a shared folder read exports, conversions and tables like any other output.
    from eval.cdsm import LookUpTable
    from trainer.model_io.atomic import torch_save_atomic

    G, g, D = nets
    old = os.umask(umask)
    try:
        written = [save_checkpoint(tmp_path / "n.pt", "toonmix", g_ema=G, d=D),
                   save_checkpoint(tmp_path / "r.pt", "rosinality", g_ema=G, g=g),
                   torch_save_atomic({"x": 1}, tmp_path / "sub" / "x.pt")]
        LookUpTable("fp", {}).save(tmp_path / "lut.pt")
    finally:
        os.umask(old)
    for path in [*written, tmp_path / "lut.pt"]:
        assert oct(os.stat(path).st_mode & 0o777) == oct(0o666 & ~umask), path
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["lut.pt", "n.pt", "r.pt", "x.pt"]


def test_trainer_exports_keep_the_clamp_in_our_format_and_name_what_rosinality_drops(tmp_path):
    import warnings

    from trainer.gan.setup import export_networks
    from trainer.model_io import FormatChangeWarning
    from trainer.run.inputs import load_generator

    kw = dict(channel_max=8, channel_multiplier=1 / 256, num_fp16_res=1, conv_clamp=256.0)
    G = Generator(size=16, style_dim=8, n_mlp=2, **kw)
    D = Discriminator(size=16, stddev_group=8, **kw)
    ours = load_checkpoint(export_networks(tmp_path / "n.pt", "toonmix", G, G, D))
    assert (ours.g_ema.cfg.conv_clamp, ours.g_ema.cfg.num_fp16_res) == (256.0, 0)  # float32, same function
    assert (ours.d.cfg.conv_clamp, ours.d.cfg.stddev_group) == (256.0, 8)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        theirs = load_checkpoint(export_networks(tmp_path / "r.pt", "rosinality", G, G, D))
    text = " ".join(str(w.message) for w in said if issubclass(w.category, FormatChangeWarning))
    assert "from 8 to 4" in text and "conv_clamp" in text
    assert theirs.d.cfg.stddev_group == 4 and theirs.g_ema.cfg.conv_clamp is None
    # Sampling gives float32 blocks whatever the file says (the clamp stays).
    fp16 = tmp_path / "fp16.pt"
    save_checkpoint(fp16, "toonmix", g_ema=G)
    assert load_checkpoint(fp16).g_ema.cfg.num_fp16_res == load_checkpoint(fp16).generator(float32=False).cfg.num_fp16_res == 1
    for loaded in (load_checkpoint(fp16).generator(), load_generator(str(fp16), "k")):
        assert (loaded.cfg.num_fp16_res, loaded.cfg.conv_clamp) == (0, 256.0)
