"""The GAN trainer's parts on their own: configuration, EMA, Adam scaling, FreezeG, loss scale, meters."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.gan import setup
from trainer.gan.config import GANConfig
from trainer.gan.state import check_resume_compatible
from trainer.networks import Generator, GeneratorConfig
from trainer.run.config import ConfigError, help_text, load_config
from trainer.run.loss_scale import DynamicLossScale
from trainer.run.meters import Meters


def test_config_file_then_overrides_with_yaml_values(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("loader: {data: /x}\nloss: {r1_gamma: 5}\noptim: {betas: [0.1, 0.9]}\n")
    cfg = load_config(GANConfig, f, ["loss.r1_gamma=2", "optim.g_lr=1e-3", "freeze.source=null", "ada.pipe.xflip=0"])
    assert cfg.loss.r1_gamma == 2.0 and isinstance(cfg.loss.r1_gamma, float)
    assert cfg.optim.g_lr == 0.001 and cfg.optim.betas == [0.1, 0.9] and cfg.ada.pipe.xflip == 0.0
    assert cfg.freeze.source is None and cfg.loader.data == "/x"


@pytest.mark.parametrize("overrides, message", [
    ([], "missing required key loader.data"),
    (["loader.data=/x", "optim=3"], "optim must be a mapping"),
    (["loader.data=/x", "loss.style_mixing=1.5"], "loss.style_mixing must be in [0, 1]"),
    (["loader.data=/x", "optim.batch_gpu=two"], "optim.batch_gpu"),
    (["loader.data=/x", "run.dir"], "is not key=value"),
])
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(GANConfig, None, overrides)


def test_help_text_has_docstrings():
    text = help_text(GANConfig)
    assert "loss.r1_gamma (float, default 10.0)" in text and "R1 weight (gamma)" in text


def test_ema_half_life_counts_the_global_batch():
    beta = setup.ema_beta(32, 10.0, 10**6, None)
    assert beta ** (10_000 / 32) == pytest.approx(0.5)  # after ema_kimg of images, half the weight
    assert setup.ema_beta(32, 10.0, 1000, 0.05) < beta  # ramp-up: shorter half-life early on


def test_lazy_regularisation_adam_scaling():
    p = [torch.nn.Parameter(torch.zeros(2))]
    opt = setup.make_adam(p, 0.002, [0.0, 0.99], 1e-8, 16)
    g = opt.param_groups[0]
    assert g["lr"] == pytest.approx(0.002 * 16 / 17) and g["betas"][1] == pytest.approx(0.99 ** (16 / 17))
    assert setup.make_adam(p, 0.002, [0.0, 0.99], 1e-8, 0).param_groups[0]["lr"] == 0.002


def test_freeze_g_selects_layers_below_the_resolution():
    G = Generator(GeneratorConfig(size=32, style_dim=8, n_mlp=1, channel_multiplier=0.0625, channel_max=8))
    names = set(setup.generator_frozen_names(G, 16, mapping=False))
    assert "conv1.conv.weight" in names and "convs.1.conv.weight" in names  # 4 px, 8 px
    assert "convs.2.conv.weight" not in names and "to_rgbs.1.bias" not in names  # 16 px trains
    assert not any(n.startswith("style.") for n in names)
    assert any(n.startswith("style.") for n in setup.generator_frozen_names(G, 16, mapping=True))
    trainable = setup.apply_freeze(G, sorted(names))
    assert all(p.requires_grad for p in trainable) and len(trainable) + len(names) == len(list(G.parameters()))
    with pytest.raises(ConfigError):
        setup.generator_frozen_names(G, 12, False)


def test_loss_scale_backs_off_unscales_and_grows():
    p = torch.nn.Parameter(torch.zeros(1))
    s = DynamicLossScale(True, init=8.0, growth_interval=2)
    assert not s.unscale_and_check([p], finite=False) and s.scale == 4.0
    p.grad = torch.tensor([8.0])
    assert s.unscale_and_check([p], finite=True) and p.grad.item() == 2.0
    p.grad = torch.tensor([4.0])
    s.unscale_and_check([p], finite=True)
    assert s.scale == 8.0
    off = DynamicLossScale(False)
    assert off.scale == 1.0 and not off.unscale_and_check([p], finite=False)


def test_meters_mean_per_element_and_clear():
    class One:
        world = 1
        def gather_objects(self, o): return [o]
        def all_reduce_sum(self, t): return t
    m = Meters(torch.device("cpu"))
    m.add("a", torch.tensor([1.0, 3.0]))
    m.add("a", 5.0)
    assert m.reduce(One()) == {"a": 3.0} and m.reduce(One()) == {}


def test_resume_refuses_a_changed_frozen_set():
    base = load_config(GANConfig, None, ["loader.data=/x"])
    from trainer.run.config import to_dict
    meta = {"config": to_dict(base)}
    assert check_resume_compatible(meta, to_dict(load_config(GANConfig, None, ["loader.data=/x", "loss.r1_gamma=3"]))) \
        == ["loss.r1_gamma"]
    with pytest.raises(ConfigError, match="freeze.d"):
        check_resume_compatible(meta, to_dict(load_config(GANConfig, None, ["loader.data=/x", "freeze.d=2"])))
    assert math.isfinite(base.loss.r1_gamma)


@pytest.mark.parametrize("name", ["tiny", "webtoon1024", "freezesg256", "structure256"])
def test_shipped_gan_configs_parse_and_validate(name):
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "launch" / "configs" / f"{name}.yaml"
    cfg = load_config(GANConfig, path)
    assert cfg.loader.data and cfg.run.desc == name
