"""ReStyle encoders: shapes, the public weight layouts, backbone initialisation, refinement, SyncBN."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.networks import Generator, GeneratorConfig
from trainer.networks.encoders import Encoder, EncoderConfig, init_backbone
from trainer.networks.irse import IRSEBackbone
from trainer.networks.resnet import ResNet
from trainer.networks.restyle import ReStyle
from trainer.networks.weights import WeightsError

ROOT = Path(__file__).resolve().parents[1]
TINY_G = dict(size=32, style_dim=32, n_mlp=2, channel_multiplier=0.0625, channel_max=32)
TINY_E = dict(n_styles=8, style_dim=32, input_size=32, width=0.125, units=[1, 1, 1, 1])


def tiny_generator(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    G = Generator(GeneratorConfig(**TINY_G))
    G.update_w_avg()
    return G.eval()


@pytest.mark.parametrize("backbone", ["ir_se50", "resnet34"])
def test_public_encoder_maps_256px_pairs_to_18_w_vectors(backbone):
    enc = Encoder(EncoderConfig(backbone=backbone)).eval()
    with torch.no_grad():
        out = enc(torch.randn(1, 6, 256, 256))
    assert out.shape == (1, 18, 512)
    keys = set(enc.state_dict())
    # ReStyle's encoder.* names (without the prefix).
    assert "styles.17.linear.weight" in keys and "styles.0.convs.6.weight" in keys  # 4 strided convs on 16x16
    if backbone == "ir_se50":
        assert {"input_layer.0.weight", "body.23.res_layer.5.fc2.weight", "body.3.shortcut_layer.0.weight"} <= keys
        assert enc.input_layer[0].weight.shape[1] == 6 and len(enc.body) == 24
    else:
        assert {"conv1.weight", "bn1.running_var", "relu.weight", "body.15.bn2.weight", "body.3.downsample.0.weight"} <= keys
        assert len(enc.body) == 16


def test_resnet_encoder_keys_are_restyles():
    """ReStyle's ResNetBackboneEncoder names, written out from its architecture: conv1/bn1/relu,
    body.0..15 BasicBlocks (downsample at the first block of stages 2-4), 18 style blocks."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    expect = {"conv1.weight", "relu.weight", *(f"bn1.{k}" for k in bn)}
    for i in range(16):
        expect |= {f"body.{i}.conv1.weight", f"body.{i}.conv2.weight", *(f"body.{i}.bn{j}.{k}" for j in (1, 2) for k in bn)}
    for i in (3, 7, 13):
        expect |= {f"body.{i}.downsample.0.weight", *(f"body.{i}.downsample.1.{k}" for k in bn)}
    for j in range(18):
        expect |= {f"styles.{j}.convs.{c}.{k}" for c in (0, 2, 4, 6) for k in ("weight", "bias")}
        expect |= {f"styles.{j}.linear.weight", f"styles.{j}.linear.bias"}
    assert set(Encoder(EncoderConfig(backbone="resnet34")).state_dict()) == expect


def test_wrong_input_shape_is_a_clear_error():
    enc = Encoder(EncoderConfig(**TINY_E))
    with pytest.raises(ValueError, match=r"\[N, 6, 32, 32\]"):
        enc(torch.randn(1, 3, 32, 32))


def test_irse50_file_initialises_the_body_and_the_image_channels(tmp_path):
    torch.manual_seed(0)
    arcface = IRSEBackbone()
    with torch.no_grad():  # statistics unlike a fresh BatchNorm's, so loading them shows
        arcface.input_layer[1].running_mean.uniform_(-1, 1)
    path = tmp_path / "model_ir_se50.pth"
    torch.save(arcface.state_dict(), path)
    enc = Encoder(EncoderConfig())
    note = init_backbone(enc, str(path), check_hash=False)
    assert str(path) in note
    w = enc.input_layer[0].weight
    assert torch.equal(w[:, :3], arcface.input_layer[0].weight)  # image channels from the file
    assert 0.9 < float(w[:, 3:].std()) < 1.1  # reconstruction channels drawn N(0, 1), as ReStyle does
    assert torch.equal(enc.input_layer[1].running_mean, arcface.input_layer[1].running_mean)
    for name, t in arcface.body.state_dict().items():
        assert torch.equal(enc.body.state_dict()[name], t), name


def test_resnet34_file_initialises_the_body_blocks(tmp_path):
    torch.manual_seed(0)
    res = ResNet(34)
    with torch.no_grad():
        res.bn1.running_var.uniform_(0.5, 2)
    path = tmp_path / "resnet34.pth"  # a name without a hash: nothing to verify
    torch.save(res.state_dict(), path)
    enc = Encoder(EncoderConfig(backbone="resnet34"))
    init_backbone(enc, str(path))
    assert torch.equal(enc.conv1.weight[:, :3], res.conv1.weight)  # the input conv widened, as ReStyle does
    assert 0.9 < float(enc.conv1.weight[:, 3:].std()) < 1.1
    assert torch.equal(enc.bn1.running_var, res.bn1.running_var)
    assert torch.equal(enc.body[0].conv1.weight, res.layer1[0].conv1.weight)
    assert torch.equal(enc.body[3].downsample[0].weight, res.layer2[0].downsample[0].weight)
    assert torch.equal(enc.body[15].bn2.running_var, res.layer4[2].bn2.running_var)


def test_missing_backbone_weights_warn_loudly_and_a_wrong_path_fails(tmp_path):
    enc = Encoder(EncoderConfig(**TINY_E))
    with pytest.warns(UserWarning, match="RANDOM weights.*model_ir_se50.pth"):
        init_backbone(enc, None)
    with pytest.raises(WeightsError, match="model_ir_se50.pth.*does not exist"):
        init_backbone(Encoder(EncoderConfig()), str(tmp_path / "nowhere.pth"))
    with pytest.raises(ValueError, match="public"):
        init_backbone(enc, str(tmp_path / "x.pth"))  # a narrow encoder cannot take the public weights


def test_refinement_feeds_each_pass_its_predecessor():
    G = tiny_generator()
    torch.manual_seed(1)
    net = ReStyle(Encoder(EncoderConfig(**TINY_E)), G).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    passes = net.invert(x, 3)
    assert [p.latent.shape for p in passes] == [(2, 8, 32)] * 3
    # Pass 0 = latent_avg + E(x, average image); pass 1 = pass 0's W+ + E(x, pass 0's image).
    with torch.no_grad():
        first = net.encoder(torch.cat([x, net.avg_image.expand(2, -1, -1, -1)], 1)) + net.latent_avg
        second = net.encoder(torch.cat([x, passes[0].image], 1)) + passes[0].latent
        img = G.synthesis(second, noise_mode="const").img
    torch.testing.assert_close(passes[0].latent, first)
    torch.testing.assert_close(passes[1].latent, second)
    torch.testing.assert_close(passes[1].image, img)
    assert torch.allclose(net.avg_image, G.synthesis(G.w_avg.repeat(1, 8, 1), noise_mode="const").img[0])


def test_generator_of_another_resolution_is_refused():
    G64 = Generator(GeneratorConfig(**{**TINY_G, "size": 64}))
    G64.update_w_avg()
    with pytest.raises(ValueError, match="another resolution"):
        ReStyle(Encoder(EncoderConfig(**TINY_E)), G64)


def test_decoder_is_frozen_but_passes_gradients_to_the_encoder():
    net = ReStyle(Encoder(EncoderConfig(**TINY_E)), tiny_generator()).train()
    out = net.step(torch.randn(2, 3, 32, 32), None)
    out.image.square().mean().backward()
    assert all(p.grad is None for p in net.decoder.parameters())
    assert all(p.grad is not None for p in net.encoder.parameters())
    assert not net.decoder.training


def test_global_batchnorm_over_two_processes_equals_batchnorm_on_the_whole_batch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "dist_sync_bn_check.py"), str(tmp_path)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "ok").read_text() == "2"
