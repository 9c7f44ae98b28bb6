"""The equations a StyleGAN2 checkpoint depends on, each against an independent
computation (numpy loops or plain formulas), on tiny layers; and imported NVlabs
networks against NVlabs' forward pass written from its equations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.nvlabs_pickle import write_nvlabs_pickle
from trainer.model_io import load_checkpoint
from trainer.model_io.safe_pickle import flatten_record, load_nvlabs_pickle
from trainer.networks import Discriminator, Generator, style_layers
from trainer.networks.discriminator import minibatch_stddev
from trainer.networks.layers import (EqualConv2d, EqualLinear, ModulatedConv2d, NoiseInjection,
                                     Upsample)

BLUR = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0


def np_conv2d(x: np.ndarray, w: np.ndarray, pad: int = 0) -> np.ndarray:
    """Cross-correlation of x [C, H, W] with w [O, C, k, k], zero padding, loops."""
    c, h, wd = x.shape
    o, _, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((o, h + 2 * pad - k + 1, wd + 2 * pad - k + 1))
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            out[:, i, j] = np.tensordot(w, xp[:, i:i + k, j:j + k], axes=([1, 2, 3], [0, 1, 2]))
    return out


def np_fir(x: np.ndarray, f: np.ndarray, pad0: int, pad1: int) -> np.ndarray:
    """Per-channel true convolution with 2-D taps f after padding (pad0, pad1)."""
    xp = np.pad(x, ((0, 0), (pad0, pad1), (pad0, pad1)))
    k = f.shape[0]
    ff = f[::-1, ::-1]
    out = np.zeros((x.shape[0], xp.shape[1] - k + 1, xp.shape[2] - k + 1))
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            out[:, i, j] = (xp[:, i:i + k, j:j + k] * ff).sum(axis=(1, 2))
    return out


def np_zero_insert(x: np.ndarray, up: int = 2) -> np.ndarray:
    c, h, w = x.shape
    out = np.zeros((c, h * up, w * up))
    out[:, ::up, ::up] = x
    return out


def test_equal_linear_scales_weight_and_bias_by_lr_mul_over_sqrt_fan_in():
    layer = EqualLinear(5, 3, bias_init=0.5, lr_mul=0.01)
    x = torch.randn(4, 5)
    w, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    want = x.numpy() @ (w * 0.01 / math.sqrt(5)).T + b * 0.01
    assert np.allclose(layer(x).detach().numpy(), want, atol=1e-6)
    act = EqualLinear(5, 3, lr_mul=0.01, activation="fused_lrelu")
    act.load_state_dict(layer.state_dict())
    want_act = np.where(want > 0, want, 0.2 * want) * math.sqrt(2)
    assert np.allclose(act(x).detach().numpy(), want_act, atol=1e-6)
    # Stored unscaled: the init is N(0, 1) / lr_mul.
    assert abs(EqualLinear(512, 512, lr_mul=0.01).weight.std().item() - 100) < 2


def test_equal_conv_scales_by_sqrt_fan_in():
    conv = EqualConv2d(3, 2, 3, padding=1)
    x = torch.randn(1, 3, 5, 5)
    w = conv.weight.detach().numpy() / math.sqrt(3 * 9)
    want = np_conv2d(x[0].numpy(), w, pad=1) + conv.bias.detach().numpy()[:, None, None]
    assert np.allclose(conv(x)[0].detach().numpy(), want, atol=1e-5)


def test_modulation_bias_starts_at_one():
    conv = ModulatedConv2d(4, 2, 3, style_dim=6)
    assert torch.equal(conv.modulation.bias, torch.ones(4))
    assert torch.allclose(conv.modulation(torch.zeros(1, 6)), torch.ones(1, 4))


def _modulated_np(conv: ModulatedConv2d, s: np.ndarray, eps: float) -> np.ndarray:
    k = conv.kernel_size
    w = conv.weight.detach().numpy()[0] / math.sqrt(conv.in_channel * k * k) * s[None, :, None, None]
    if conv.demodulate:
        w = w / np.sqrt((w ** 2).sum(axis=(1, 2, 3), keepdims=True) + eps)
    return w


@pytest.mark.parametrize("scale", [1.0, 1e-5])
def test_demodulation_uses_eps_1e8(scale):
    conv = ModulatedConv2d(3, 2, 3, style_dim=4)
    with torch.no_grad():
        conv.weight.mul_(scale)
    x, s = torch.randn(2, 3, 5, 5, dtype=torch.float64), torch.rand(2, 3, dtype=torch.float64) + 0.5
    conv = conv.double()
    y = conv(x, s).detach().numpy()
    for n in range(2):
        want = np_conv2d(x[n].numpy(), _modulated_np(conv, s[n].numpy(), 1e-8), pad=1)
        assert np.allclose(y[n], want, rtol=1e-6, atol=1e-12)
        if scale < 1:  # at tiny weights the eps is visible: eps 0 gives another answer
            other = np_conv2d(x[n].numpy(), _modulated_np(conv, s[n].numpy(), 0.0), pad=1)
            assert not np.allclose(y[n], other, rtol=1e-2)


def test_upsampling_conv_is_transposed_conv_then_blur_with_gain_4():
    conv = ModulatedConv2d(2, 3, 3, style_dim=4, upsample=True).double()
    x, s = torch.randn(1, 2, 4, 4, dtype=torch.float64), torch.rand(1, 2, dtype=torch.float64) + 0.5
    w = _modulated_np(conv, s[0].numpy(), 1e-8)
    # Transposed conv, stride 2: every input pixel scatters w into the output.
    t = np.zeros((3, 9, 9))
    for i in range(4):
        for j in range(4):
            t[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3] += np.einsum("ocab,c->oab", w, x[0, :, i, j].numpy())
    want = np_fir(t, BLUR * 4, 1, 1)
    got = conv(x, s)[0].detach().numpy()
    assert got.shape == (3, 8, 8)
    assert np.allclose(got, want, atol=1e-10)


def test_noise_injection_adds_scaled_single_channel_noise():
    inj = NoiseInjection()
    with torch.no_grad():
        inj.weight.fill_(0.7)
    x, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 1, 4, 4)
    assert torch.allclose(inj(x, noise), x + 0.7 * noise.expand(-1, 3, -1, -1))
    assert torch.equal(inj(x, None), x)


def test_torgb_skip_upsampling_is_zero_insertion_and_blur_gain_4():
    up = Upsample([1, 3, 3, 1]).double()
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    want = np_fir(np_zero_insert(x[0].numpy()), BLUR * 4, 2, 1)
    assert np.allclose(up(x)[0].numpy(), want, atol=1e-12)
    # A constant image stays constant away from the border (the gain compensates zeros).
    c = up(torch.ones(1, 1, 8, 8, dtype=torch.float64))[0, 0, 4:12, 4:12]
    assert torch.allclose(c, torch.ones_like(c))


@pytest.mark.parametrize("n,group", [(8, 4), (6, 4), (3, 4)])
def test_minibatch_stddev_matches_per_group_formula(n, group):
    x = torch.randn(n, 5, 2, 2, dtype=torch.float64)
    y = minibatch_stddev(x, group).numpy()
    g = max(d for d in range(1, min(group, n) + 1) if n % d == 0)
    m = n // g
    xs = x.numpy()
    for i in range(n):
        members = xs[[j for j in range(n) if j % m == i % m]]
        std = np.sqrt(members.var(axis=0) + 1e-8).mean()
        assert np.allclose(y[i, 5], std)
    assert np.array_equal(y[:, :5], xs)


def test_discriminator_logits_use_the_stddev_channel():
    D = Discriminator(size=8, channel_max=4)
    x = torch.randn(4, 3, 8, 8)
    assert D.final_conv[0].weight.shape[1] == 5
    assert D(x).shape == (4, 1)


def test_w_plus_wiring_follows_the_rosinality_layout():
    G = Generator(size=64, style_dim=8, n_mlp=1, channel_max=4)
    layers = style_layers(G)
    want = [("conv1", 0), ("to_rgb1", 1)]
    for k in range(4):
        want += [(f"convs.{2 * k}", 2 * k + 1), (f"convs.{2 * k + 1}", 2 * k + 2), (f"to_rgbs.{k}", 2 * k + 3)]
    assert [(s.name, s.w_index) for s in layers] == want
    assert max(s.w_index for s in layers) == G.n_latent - 1


def test_each_w_plus_entry_drives_exactly_its_layers():
    """Behaviour, not the table: perturbing w[j] changes the first block output
    driven by w[j] and nothing computed before it."""
    G = Generator(size=32, style_dim=8, n_mlp=1, channel_max=4)
    ws = torch.randn(1, G.n_latent, 8)
    base = G.synthesis(ws, noise_mode="none")
    # w[n_latent-1] only drives the last ToRGB: every feature is unchanged.
    ws2 = ws.clone()
    ws2[:, -1] += 1
    out = G.synthesis(ws2, noise_mode="none")
    assert all(torch.equal(a, b) for a, b in zip(base.features, out.features))
    assert all(torch.equal(a, b) for a, b in zip(base.rgbs[:-1], out.rgbs[:-1]))
    assert not torch.equal(base.img, out.img)
    # w[1] drives to_rgb1 and the 8px up conv, not conv1.
    ws3 = ws.clone()
    ws3[:, 1] += 1
    out = G.synthesis(ws3, noise_mode="none")
    assert torch.equal(base.features[0], out.features[0])
    assert not torch.equal(base.rgbs[0], out.rgbs[0]) and not torch.equal(base.features[1], out.features[1])


# ----------------------------------------------------------------------------
# NVlabs' forward pass, written from its equations (stylegan2-ada-pytorch
# training/networks.py) on an NVlabs-named state dict, in float64 with plain
# torch ops: the reference an imported network must reproduce. bias_act is
# x + b, then the activation, then * gain, then the clamp to +-conv_clamp * gain.

NV_FILTER = torch.tensor(BLUR, dtype=torch.float64)


def nv_upfirdn(x: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0),
               gain: float = 1.0) -> torch.Tensor:
    n, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(n, c, h * up, w * up)
        z[:, :, ::up, ::up] = x
        x = z
    x = torch.nn.functional.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    k = (NV_FILTER * gain).flip([0, 1])[None, None].repeat(c, 1, 1, 1)
    return torch.nn.functional.conv2d(x, k, groups=c)[:, :, ::down, ::down]


def nv_bias_act(x: torch.Tensor, b: torch.Tensor | None, lrelu: bool, gain: float = 1.0,
                clamp: float | None = None) -> torch.Tensor:
    x = x if b is None else x + b.reshape(1, -1, *([1] * (x.ndim - 2)))
    if lrelu:
        x = torch.nn.functional.leaky_relu(x, 0.2) * math.sqrt(2)
    x = x * gain
    return x if clamp is None else x.clamp(-clamp * gain, clamp * gain)


def nv_fc(p: dict, name: str, x: torch.Tensor, lrelu: bool = False, lr: float = 1.0) -> torch.Tensor:
    w = p[f"{name}.weight"]
    return nv_bias_act(x @ (w * lr / math.sqrt(w.shape[1])).T, p[f"{name}.bias"] * lr, lrelu)


def nv_modconv(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool,
               up: bool = False) -> torch.Tensor:
    """NVlabs' fused modulated_conv2d: per-sample weights, one grouped convolution."""
    n, c = x.shape[:2]
    w = weight[None] * styles[:, None, :, None, None]  # [N, O, I, k, k]
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    x = x.reshape(1, n * c, *x.shape[2:])
    if up:  # conv2d_resample up=2, padding 1: transposed conv, then the filter padded (1, 1), gain 4
        y = torch.nn.functional.conv_transpose2d(x, w.transpose(1, 2).reshape(n * c, -1, *w.shape[3:]),
                                                 stride=2, groups=n)
        y = nv_upfirdn(y, pad=(1, 1), gain=4)
    else:
        y = torch.nn.functional.conv2d(x, w.reshape(-1, c, *w.shape[3:]), padding=w.shape[-1] // 2, groups=n)
    return y.reshape(n, -1, *y.shape[2:])


def nv_synthesis_layer(p: dict, name: str, x: torch.Tensor, w: torch.Tensor, clamp: float | None,
                       up: bool = False) -> torch.Tensor:
    x = nv_modconv(x, p[f"{name}.weight"], nv_fc(p, f"{name}.affine", w), True, up)
    x = x + p[f"{name}.noise_const"] * p[f"{name}.noise_strength"]  # noise_mode="const"
    return nv_bias_act(x, p[f"{name}.bias"], True, 1.0, clamp)


def nv_torgb(p: dict, name: str, x: torch.Tensor, w: torch.Tensor, clamp: float | None) -> torch.Tensor:
    styles = nv_fc(p, f"{name}.affine", w) / math.sqrt(x.shape[1])
    return nv_bias_act(nv_modconv(x, p[f"{name}.weight"], styles, False), p[f"{name}.bias"], False, 1.0, clamp)


def nv_generator(p: dict, z: torch.Tensor, clamp: float | None, lr_mlp: float = 0.01) -> torch.Tensor:
    """G(z) with noise_mode="const", psi 1, for the 'skip' architecture."""
    x = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
    i = 0
    while f"mapping.fc{i}.weight" in p:
        x = nv_fc(p, f"mapping.fc{i}", x, lrelu=True, lr=lr_mlp)
        i += 1
    w = x  # one w for every layer (no mixing)
    x = p["synthesis.b4.const"][None].repeat(z.shape[0], 1, 1, 1)
    x = nv_synthesis_layer(p, "synthesis.b4.conv1", x, w, clamp)
    img = nv_torgb(p, "synthesis.b4.torgb", x, w, clamp)
    r = 8
    while f"synthesis.b{r}.conv0.weight" in p:
        x = nv_synthesis_layer(p, f"synthesis.b{r}.conv0", x, w, clamp, up=True)
        x = nv_synthesis_layer(p, f"synthesis.b{r}.conv1", x, w, clamp)
        img = nv_upfirdn(img, up=2, pad=(2, 1), gain=4) + nv_torgb(p, f"synthesis.b{r}.torgb", x, w, clamp)
        r *= 2
    return img


def nv_conv(p: dict, name: str, x: torch.Tensor, lrelu: bool = True, down: bool = False,
            gain: float = 1.0, clamp: float | None = None) -> torch.Tensor:
    w = p[f"{name}.weight"]
    k = w.shape[-1]
    w = w / math.sqrt(w.shape[1] * k * k)
    if down:  # conv2d_resample down=2: the filter padded by (4 - 2 + 1) // 2 + k // 2, then a stride-2 conv
        x = torch.nn.functional.conv2d(nv_upfirdn(x, pad=(1 + k // 2, 1 + k // 2)), w, stride=2)
    else:
        x = torch.nn.functional.conv2d(x, w, padding=k // 2)
    return nv_bias_act(x, p.get(f"{name}.bias"), lrelu, gain, clamp)


def nv_discriminator(p: dict, img: torch.Tensor, group: int, clamp: float | None) -> torch.Tensor:
    """The resnet D; its skips get no clamp, conv1 and skip the gain sqrt(1/2)."""
    r = img.shape[-1]
    x = nv_conv(p, f"b{r}.fromrgb", img, clamp=clamp)
    while r > 4:
        y = nv_conv(p, f"b{r}.skip", x, lrelu=False, down=True, gain=math.sqrt(0.5))
        x = nv_conv(p, f"b{r}.conv0", x, clamp=clamp)
        x = y + nv_conv(p, f"b{r}.conv1", x, down=True, gain=math.sqrt(0.5), clamp=clamp)
        r //= 2
    n, c, h, w = x.shape
    g = min(group, n)
    y = x.reshape(g, -1, 1, c, h, w)
    y = ((y - y.mean(dim=0)).square().mean(dim=0) + 1e-8).sqrt().mean(dim=[2, 3, 4])
    x = torch.cat([x, y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)], dim=1)
    x = nv_conv(p, "b4.conv", x, clamp=clamp)
    return nv_fc(p, "b4.out", nv_fc(p, "b4.fc", x.flatten(1), lrelu=True))


def test_imported_nvlabs_networks_match_nvlabs_beyond_conv_clamp(tmp_path):
    """Activations driven far past conv_clamp=256 (as NVlabs' 'stylegan2' and 'paper256'
    configurations set it): the imported G and D clamp where NVlabs' layers do."""
    torch.manual_seed(0)
    G = Generator(size=8, style_dim=8, n_mlp=2, channel_max=8, conv_clamp=256.0)
    D = Discriminator(size=8, channel_max=8, stddev_group=8, conv_clamp=256.0)
    G.update_w_avg(64)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.5)
        G.input.input.mul_(1000)  # b4.conv1 and the layers after it far past 256
        G.to_rgbs[0].conv.weight.mul_(300)  # ToRGB (no demodulation) past 256
        D.convs[0][0].weight.mul_(1000)  # fromrgb, and the blocks after it
    write_nvlabs_pickle(tmp_path / "n.pkl", G_ema=G, D=D)
    ck = load_checkpoint(tmp_path / "n.pkl")
    assert ck.g_ema.cfg.conv_clamp == 256 and ck.d.cfg.conv_clamp == 256

    data = load_nvlabs_pickle(tmp_path / "n.pkl")
    pg = {k: v.double() for k, v in flatten_record(data["G_ema"]).items()}
    pd = {k: v.double() for k, v in flatten_record(data["D"]).items()}
    z, img = torch.randn(2, 8), torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        ours_g = ck.g_ema(z, noise_mode="const").double()
        ours_d = ck.d(img).double()
    for ours, ref, unclamped in ((ours_g, nv_generator(pg, z.double(), 256.0), nv_generator(pg, z.double(), None)),
                                 (ours_d, nv_discriminator(pd, img.double(), 8, 256.0),
                                  nv_discriminator(pd, img.double(), 8, None))):
        scale = ref.abs().max()
        assert (unclamped - ref).abs().max() > 0.5 * scale  # the clamp decides these outputs
        assert (ours - ref).abs().max() < 1e-3 * scale  # float32 against float64
