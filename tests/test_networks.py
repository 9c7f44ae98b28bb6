"""Generator, discriminator, StyleSpace and layer-swap behaviour on tiny models."""

from __future__ import annotations

import pytest
import torch

from trainer.networks import (Discriminator, Generator, blend, layer_swap, style_layers, synthesize,
                              ws_to_styles)
from trainer.networks.swap import param_resolution


def tiny_g(size=32, **kw) -> Generator:
    G = Generator(size=size, style_dim=8, n_mlp=2, channel_max=kw.pop("channel_max", 8), **kw)
    G.update_w_avg(256)
    return G


def test_sizes_channels_and_counts_follow_the_config():
    G = Generator(size=1024, style_dim=8, n_mlp=8, channel_multiplier=1 / 64, channel_max=8)
    sd = G.state_dict()
    assert G.n_latent == 18 and G.num_layers == 17
    assert len([k for k in sd if k.startswith("noises.")]) == 17
    assert sd["noises.noise_16"].shape == (1, 1, 1024, 1024)
    assert len(G.convs) == 16 and len(G.to_rgbs) == 8
    # int(16384 / 64) // r: 256 // 64 = 4 channels at 64, then 2 and 1 at 128 and up.
    assert [G.convs[2 * k].conv.out_channel for k in range(8)] == [8, 8, 8, 4, 2, 1, 1, 1]
    layers = style_layers(G)
    assert len(layers) == 26
    assert sum(s.kind == "conv" for s in layers) == 17 and sum(s.kind == "trgb" for s in layers) == 9


def test_rosinality_channel_table_at_1024():
    from trainer.networks import GeneratorConfig
    cfg = GeneratorConfig()
    assert [cfg.channels(2 ** i) for i in range(2, 11)] == [512] * 5 + [256, 128, 64, 32]


@pytest.mark.parametrize("size", [4, 8, 64])
def test_any_power_of_two_size(size):
    G = Generator(size=size, style_dim=8, n_mlp=1, channel_max=4)
    assert G(torch.randn(2, 8)).shape == (2, 3, size, size)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="power of two"):
        Generator(size=48)
    with pytest.raises(ValueError, match="precision"):
        Generator(size=16, precision="float8")


def test_inputs_z_w_and_wplus_agree():
    G = tiny_g()
    z = torch.randn(2, 8)
    w = G.mapping(z)
    a = G(z, noise_mode="const")
    assert torch.allclose(a, G(w=w, noise_mode="const"))
    assert torch.allclose(a, G(ws=G.broadcast(w), noise_mode="const"))
    with pytest.raises(ValueError, match="exactly one"):
        G(z, w=w)


def test_noise_modes():
    G = tiny_g()
    with torch.no_grad():
        for m in G.modules():
            if hasattr(m, "noise") and hasattr(m.noise, "weight"):
                m.noise.weight.fill_(0.5)
    z = torch.randn(2, 8)
    assert torch.equal(G(z, noise_mode="const"), G(z, noise_mode="const"))
    assert not torch.equal(G(z, noise_mode="random"), G(z, noise_mode="random"))
    assert not torch.equal(G(z, noise_mode="none"), G(z, noise_mode="const"))
    with pytest.raises(ValueError, match="noise_mode"):
        G(z, noise_mode="fixed")


def test_truncation_towards_w_avg():
    G = tiny_g()
    z = torch.randn(3, 8)
    out = G(z, truncation_psi=0.0, noise_mode="const", return_ws=True)
    assert torch.allclose(out.ws, G.w_avg.expand_as(out.ws))
    half = G(z, truncation_psi=0.5, truncation_cutoff=2, return_ws=True, noise_mode="none").ws
    full = G.broadcast(G.mapping(z))
    assert torch.allclose(half[:, :2], G.w_avg + 0.5 * (full[:, :2] - G.w_avg), atol=1e-6)
    assert torch.equal(half[:, 2:], full[:, 2:])
    fresh = Generator(size=8, style_dim=8, n_mlp=1)
    with pytest.raises(RuntimeError, match="w_avg"):
        fresh(torch.randn(1, 8), truncation_psi=0.7)


def test_style_mixing_takes_the_tail_from_the_second_latent():
    G = tiny_g()
    z1, z2 = torch.randn(2, 8), torch.randn(2, 8)
    ws = G(z1, mix_z=z2, crossover=3, return_ws=True, noise_mode="none").ws
    assert torch.allclose(ws[:, :3], G.broadcast(G.mapping(z1))[:, :3])
    assert torch.allclose(ws[:, 3:], G.broadcast(G.mapping(z2))[:, 3:])


def test_features_and_rgbs_per_block():
    G = tiny_g()
    out = G(torch.randn(2, 8), return_features=True)
    assert [f.shape[-1] for f in out.features] == [4, 8, 16, 32]
    assert [r.shape[-1] for r in out.rgbs] == [4, 8, 16, 32]
    assert torch.equal(out.rgbs[-1], out.img)


def test_stylespace_synthesis_matches_wplus_synthesis():
    G = tiny_g()
    ws = torch.randn(2, G.n_latent, 8)
    styles = ws_to_styles(G, ws)
    assert torch.allclose(synthesize(G, styles), G.synthesis(ws, noise_mode="const").img, atol=1e-6)


@pytest.mark.parametrize("name", ["convs.2", "to_rgbs.1", "conv1"])
def test_changing_one_style_changes_only_what_its_layer_drives(name):
    G = tiny_g()
    layers = style_layers(G)
    k = next(s.index for s in layers if s.name == name)
    layer = layers[k]
    styles = ws_to_styles(G, torch.randn(1, G.n_latent, 8))
    base = G.synthesis(styles=styles, noise_mode="none")
    styles[k] = styles[k] * 1.5 + 0.3
    out = G.synthesis(styles=styles, noise_mode="none")
    res = [f.shape[-1] for f in base.features]
    for r, a, b, ra, rb in zip(res, base.features, out.features, base.rgbs, out.rgbs):
        feat_changed, rgb_changed = not torch.equal(a, b), not torch.equal(ra, rb)
        if layer.kind == "trgb":
            assert not feat_changed  # a tRGB style never reaches the features
            assert rgb_changed == (r >= layer.resolution)
        else:
            assert feat_changed == (r >= layer.resolution)
    assert not torch.equal(base.img, out.img)


def test_reduced_precision_blocks():
    G32 = tiny_g()
    G16 = Generator(G32.cfg.__class__(**{**G32.cfg.to_dict(), "num_fp16_res": 2, "precision": "bfloat16",
                                           "conv_clamp": 256.0}))
    G16.load_state_dict(G32.state_dict())
    z = torch.randn(2, 8)
    out = G16(z, noise_mode="const", return_features=True)
    assert [f.dtype for f in out.features] == [torch.float32, torch.float32, torch.bfloat16, torch.bfloat16]
    assert out.img.dtype == torch.float32
    ref = G32(z, noise_mode="const")
    assert (out.img - ref).abs().max() < 0.05 * ref.abs().max() + 0.05
    tight = Generator(G32.cfg.__class__(**{**G32.cfg.to_dict(), "conv_clamp": 1e-3}))
    tight.load_state_dict(G32.state_dict())
    feats = tight(z, return_features=True).features
    assert all(f.abs().max() <= 1e-3 + 1e-7 for f in feats)


def test_discriminator_reduced_precision_runs_and_is_close():
    D = Discriminator(size=16, channel_max=8)
    Dh = Discriminator(size=16, channel_max=8, num_fp16_res=2, precision="bfloat16")
    Dh.load_state_dict(D.state_dict())
    x = torch.randn(4, 3, 16, 16)
    assert Dh(x).dtype == torch.float32
    assert (Dh(x) - D(x)).abs().max() < 0.1 * D(x).abs().max() + 0.05


def test_freezed_conventions():
    D = Discriminator(size=32, channel_max=8)
    assert D.layers_from_top()[:5] == ["convs.0", "convs.1.conv1", "convs.1.conv2", "convs.1.skip", "convs.2.conv1"]
    nv = D.freeze_names(2, "nvlabs")
    assert nv == ["convs.0.0.weight", "convs.0.1.bias", "convs.1.conv1.0.weight", "convs.1.conv1.1.bias"]
    cartoon = set(D.freeze_names(1, "cartoon"))
    trainable = {n for n, _ in D.named_parameters()} - cartoon
    assert all(n.startswith(("convs.3.", "final_")) for n in trainable) and trainable
    D.freeze(1, "cartoon")
    assert {n for n, p in D.named_parameters() if p.requires_grad} == trainable
    with pytest.raises(ValueError, match="exceeds"):
        D.freeze_names(99)


def test_discriminator_rejects_wrong_input_size():
    with pytest.raises(ValueError, match="expects"):
        Discriminator(size=16, channel_max=4)(torch.randn(2, 3, 8, 8))


def test_layer_swap_takes_mapping_and_low_layers_from_base():
    base, target = tiny_g(), tiny_g()
    G = layer_swap(base, target, resolution=16)
    sd, sb, st = G.state_dict(), base.state_dict(), target.state_dict()
    for k in sd:
        r = param_resolution(G, k)
        src = sb if r is None or r < 16 else st
        assert torch.equal(sd[k], src[k]), k
    soft = blend(base, target, resolution=16, width=0.5)
    w8 = soft.state_dict()["convs.0.conv.weight"]
    assert not torch.equal(w8, sb["convs.0.conv.weight"]) and not torch.equal(w8, st["convs.0.conv.weight"])
    with pytest.raises(ValueError, match="architecture"):
        layer_swap(base, tiny_g(size=16))
