"""Name and shape mapping between NVlabs StyleGAN2 networks and ours.

Our names are rosinality's. Every NVlabs tensor maps to one of ours by a
reshape (NVlabs drops the leading singleton dimensions rosinality keeps):

| NVlabs (G) | ours |
|---|---|
| ``mapping.fc{i}.weight/bias`` | ``style.{i+1}.weight/bias`` |
| ``mapping.w_avg`` | ``w_avg`` (rosinality ``latent_avg``) |
| ``synthesis.b4.const`` [C,4,4] | ``input.input`` [1,C,4,4] |
| ``synthesis.b4.conv1.*`` | ``conv1.*`` |
| ``synthesis.b4.torgb.*`` | ``to_rgb1.*`` |
| ``synthesis.b{r}.conv0/conv1/torgb`` (block k, r = 8 * 2**k) | ``convs.{2k}`` / ``convs.{2k+1}`` / ``to_rgbs.{k}`` |
| layer ``.weight`` [O,I,k,k] | ``.conv.weight`` [1,O,I,k,k] |
| layer ``.affine.weight/bias`` | ``.conv.modulation.weight/bias`` |
| layer ``.bias`` [O] | ``.activate.bias`` (ToRGB: ``.bias`` [1,3,1,1]) |
| layer ``.noise_strength`` [] | ``.noise.weight`` [1] |
| layer ``.noise_const`` [r,r] | ``noises.noise_{j}`` [1,1,r,r], j = 0 for b4, 2k+1 / 2k+2 |

| NVlabs (D, resnet) | ours |
|---|---|
| ``b{R}.fromrgb.weight/bias`` | ``convs.0.0.weight`` / ``convs.0.1.bias`` |
| ``b{r}.conv0`` (block j from the top) | ``convs.{j}.conv1.0.weight`` / ``.1.bias`` |
| ``b{r}.conv1`` | ``convs.{j}.conv2.1.weight`` / ``.2.bias`` |
| ``b{r}.skip.weight`` | ``convs.{j}.skip.1.weight`` |
| ``b4.conv`` / ``b4.fc`` / ``b4.out`` | ``final_conv.0/1`` / ``final_linear.0`` / ``final_linear.1`` |

``resample_filter`` buffers are not copied: ours derive from the blur kernel,
and the import checks that the NVlabs filter is the same [1, 3, 3, 1].

Module attributes that change what a network computes are read from the
records too: ``conv_clamp`` of every conv layer (NVlabs gives all but the
resnet skips the network's one value; 256 in its 'stylegan2' and 'paper256'
configurations) becomes the config's ``conv_clamp``; the blocks' ``use_fp16``
flags (the ``num_fp16_res`` highest resolutions) become ``num_fp16_res`` with
``precision="float16"``; D's ``b4.mbstd.group_size`` becomes ``stddev_group``.
"""

from __future__ import annotations

import math
import numbers
import re

import numpy as np
import torch

from trainer.networks import DiscriminatorConfig, GeneratorConfig
from trainer.networks.layers import make_kernel

from .build import channel_settings
from .errors import CheckpointError
from .safe_pickle import PersistentRecord, find_record, flatten_record


def _layer(nv: str, ours: str, torgb: bool = False) -> list[tuple[str, str]]:
    pairs = [(f"{nv}.weight", f"{ours}.conv.weight"),
             (f"{nv}.affine.weight", f"{ours}.conv.modulation.weight"),
             (f"{nv}.affine.bias", f"{ours}.conv.modulation.bias")]
    if torgb:
        return pairs + [(f"{nv}.bias", f"{ours}.bias")]
    return pairs + [(f"{nv}.bias", f"{ours}.activate.bias"),
                    (f"{nv}.noise_strength", f"{ours}.noise.weight")]


def generator_pairs(n_mlp: int, size: int) -> list[tuple[str, str]]:
    """(NVlabs name, our name) for every generator tensor."""
    pairs = [(f"mapping.fc{i}.{p}", f"style.{i + 1}.{p}") for i in range(n_mlp) for p in ("weight", "bias")]
    pairs += [("mapping.w_avg", "w_avg"), ("synthesis.b4.const", "input.input"),
              ("synthesis.b4.conv1.noise_const", "noises.noise_0")]
    pairs += _layer("synthesis.b4.conv1", "conv1") + _layer("synthesis.b4.torgb", "to_rgb1", True)
    k, r = 0, 8
    while r <= size:
        b = f"synthesis.b{r}"
        pairs += _layer(f"{b}.conv0", f"convs.{2 * k}") + _layer(f"{b}.conv1", f"convs.{2 * k + 1}")
        pairs += _layer(f"{b}.torgb", f"to_rgbs.{k}", True)
        pairs += [(f"{b}.conv0.noise_const", f"noises.noise_{2 * k + 1}"),
                  (f"{b}.conv1.noise_const", f"noises.noise_{2 * k + 2}")]
        k, r = k + 1, r * 2
    return pairs


def discriminator_pairs(size: int) -> list[tuple[str, str]]:
    """(NVlabs name, our name) for every discriminator tensor."""
    pairs = [(f"b{size}.fromrgb.weight", "convs.0.0.weight"), (f"b{size}.fromrgb.bias", "convs.0.1.bias")]
    j, r = 1, size
    while r > 4:
        pairs += [(f"b{r}.conv0.weight", f"convs.{j}.conv1.0.weight"),
                  (f"b{r}.conv0.bias", f"convs.{j}.conv1.1.bias"),
                  (f"b{r}.conv1.weight", f"convs.{j}.conv2.1.weight"),
                  (f"b{r}.conv1.bias", f"convs.{j}.conv2.2.bias"),
                  (f"b{r}.skip.weight", f"convs.{j}.skip.1.weight")]
        j, r = j + 1, r // 2
    pairs += [("b4.conv.weight", "final_conv.0.weight"), ("b4.conv.bias", "final_conv.1.bias"),
              ("b4.fc.weight", "final_linear.0.weight"), ("b4.fc.bias", "final_linear.0.bias"),
              ("b4.out.weight", "final_linear.1.weight"), ("b4.out.bias", "final_linear.1.bias")]
    return pairs


def _check_filters(sd: dict[str, torch.Tensor], what: str) -> None:
    want = make_kernel([1, 3, 3, 1])
    for k, v in sd.items():
        if k.endswith("resample_filter") and (v.shape != want.shape or not torch.allclose(v.float(), want)):
            raise CheckpointError(f"{what}: {k} is not the [1, 3, 3, 1] filter this importer supports")


def _rename(sd: dict, pairs: list[tuple[str, str]], what: str, optional: tuple[str, ...] = ()) -> dict:
    known = {nv for nv, _ in pairs}
    extra = [k for k in sd if k not in known and not k.endswith("resample_filter")]
    missing = [nv for nv, _ in pairs if nv not in sd and nv not in optional]
    if extra or missing:
        raise CheckpointError(f"{what}: unsupported NVlabs network: unexpected {extra[:10]}, missing {missing[:10]}")
    return {ours: sd[nv] for nv, ours in pairs if nv in sd}


def _attr(rec: PersistentRecord, path: str, name: str, default=None):
    sub = find_record(rec, path)
    state = sub.state if sub is not None and isinstance(sub.state, dict) else {}
    return state.get(name, default)


def conv_clamp_of(rec: PersistentRecord, layers: list[str], what: str) -> float | None:
    """The one ``conv_clamp`` the records at ``layers`` share (None: no clamp).

    Ours apply one value to every conv layer, so records that disagree, or hold
    anything but a positive finite number or None, are refused."""
    values: dict[float | None, str] = {}
    for path in layers:
        v = _attr(rec, path, "conv_clamp")
        if v is not None:
            ok = isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
            try:
                c = float(v) if ok else math.nan
            except (OverflowError, TypeError, ValueError):  # an int past float's range
                c = math.nan
            if not (math.isfinite(c) and c > 0):
                raise CheckpointError(f"{what}: {path}.conv_clamp is {str(v)[:40]!r}, not a positive number or None")
            v = c
        values.setdefault(v, path)
    if len(values) > 1:
        seen = ", ".join(f"{p}: {v}" for v, p in values.items())
        raise CheckpointError(f"{what}: layers use different conv_clamp values ({seen}); "
                              "this importer supports one value for every layer")
    return next(iter(values), None)


def num_fp16_res_of(rec: PersistentRecord, blocks: list[str], what: str) -> int:
    """How many of ``blocks`` (highest resolution first) run in float16 (their ``use_fp16``).

    NVlabs picks the N highest resolutions; any other pattern is refused."""
    flags = []
    for path in blocks:
        v = _attr(rec, path, "use_fp16", False)
        if not isinstance(v, (bool, np.bool_)):
            raise CheckpointError(f"{what}: {path}.use_fp16 is {str(v)[:40]!r}, not a bool")
        flags.append(bool(v))
    n = sum(flags)
    if flags != [True] * n + [False] * (len(flags) - n):
        fp16 = [p for p, f in zip(blocks, flags) if f]
        raise CheckpointError(f"{what}: float16 blocks {fp16} are not the highest resolutions; "
                              "this importer supports NVlabs' num_fp16_res layout only")
    return n


def import_generator(rec: PersistentRecord, what: str) -> tuple[dict, GeneratorConfig]:
    """Our state dict (ours' shapes are applied when building) and config from a G record."""
    sd = flatten_record(rec, what=what)
    if "mapping.embed.weight" in sd:
        raise CheckpointError(f"{what}: conditional generators (c_dim > 0) are not supported")
    n_mlp = len([k for k in sd if re.match(r"mapping\.fc\d+\.weight$", k)])
    if n_mlp == 0 or "synthesis.b4.const" not in sd:
        raise CheckpointError(f"{what}: not a StyleGAN2 generator (class {rec.class_name})")
    z_dim, w_dim = sd["mapping.fc0.weight"].shape[1], sd["mapping.fc0.weight"].shape[0]
    if z_dim != w_dim:
        raise CheckpointError(f"{what}: z_dim {z_dim} != w_dim {w_dim} is not supported")
    ch = {int(m.group(1)): sd[k].shape[0] for k in sd
          if (m := re.match(r"synthesis\.b(\d+)\.conv1\.weight$", k))}
    size = max(ch)
    _check_filters(sd, what)
    sd = _rename(sd, generator_pairs(n_mlp, size), what)
    fc0 = find_record(rec, "mapping.fc0")
    lr_mlp = float((fc0.state if fc0 else {}).get("lr_multiplier", 0.01))
    cm, cmax = channel_settings(ch)
    res = sorted(ch, reverse=True)
    layers = [f"synthesis.b{r}.{n}" for r in res
              for n in (("conv0", "conv1", "torgb") if r > 4 else ("conv1", "torgb"))]
    # b4 never runs in float16 in NVlabs' networks (nor in ours): only b8 and above count.
    fp16 = num_fp16_res_of(rec, [f"synthesis.b{r}" for r in res if r > 4], what)
    cfg = GeneratorConfig(size=size, style_dim=w_dim, n_mlp=n_mlp, lr_mlp=lr_mlp,
                          channel_multiplier=cm, channel_max=cmax, num_fp16_res=fp16, precision="float16",
                          conv_clamp=conv_clamp_of(rec, layers, what))
    return _reshape_to(sd, cfg, generator=True), cfg


def import_discriminator(rec: PersistentRecord, what: str) -> tuple[dict, DiscriminatorConfig]:
    sd = flatten_record(rec, what=what)
    if any(k.startswith("mapping.") for k in sd):
        raise CheckpointError(f"{what}: conditional discriminators are not supported")
    fromrgb = [int(m.group(1)) for k in sd if (m := re.match(r"b(\d+)\.fromrgb\.weight$", k))]
    if len(fromrgb) != 1 or not any(k.endswith(".skip.weight") for k in sd):
        raise CheckpointError(f"{what}: only the resnet discriminator architecture is supported")
    size = fromrgb[0]
    ch = {size: sd[f"b{size}.fromrgb.weight"].shape[0]}
    ch.update({r // 2: sd[f"b{r}.conv1.weight"].shape[0] for r in (size >> j for j in range(20)) if r > 4})
    _check_filters(sd, what)
    feat = sd["b4.conv.weight"].shape[1] - ch[4]
    sd = _rename(sd, discriminator_pairs(size), what)
    epi = find_record(rec, "b4.mbstd")
    group = int((epi.state if epi else {}).get("group_size", 4) or 4)
    cm, cmax = channel_settings(ch)
    res = [size >> j for j in range(20) if size >> j > 4]
    # The resnet skips carry no clamp in NVlabs' networks: they are left out.
    layers = [f"b{size}.fromrgb"] + [f"b{r}.{n}" for r in res for n in ("conv0", "conv1")] + ["b4.conv"]
    cfg = DiscriminatorConfig(size=size, channel_multiplier=cm, channel_max=cmax,
                              stddev_group=group, stddev_feat=feat,
                              num_fp16_res=num_fp16_res_of(rec, [f"b{r}" for r in res], what),
                              precision="float16", conv_clamp=conv_clamp_of(rec, layers, what))
    return _reshape_to(sd, cfg, generator=False), cfg


def _reshape_to(sd: dict, cfg, generator: bool) -> dict:
    """Applies our shapes (NVlabs stores the same numbers without singleton dims)."""
    from trainer.networks import Discriminator, Generator
    with torch.device("meta"):
        own = (Generator if generator else Discriminator)(cfg).state_dict()
    out = {}
    for k, v in sd.items():
        if k in own and v.numel() == own[k].numel():
            v = v.reshape(own[k].shape)
        out[k] = v
    return out


def nvlabs_shape(nv_name: str, t: torch.Tensor) -> tuple[int, ...]:
    """The shape NVlabs stores our tensor ``t`` in under ``nv_name``."""
    if nv_name.endswith("noise_strength"):
        return ()
    if nv_name.endswith("noise_const"):
        return tuple(t.shape[-2:])
    if nv_name.endswith("torgb.bias"):
        return (t.numel(),)
    if nv_name.endswith(".const") or (nv_name.startswith("synthesis.") and t.ndim == 5):
        return tuple(t.shape[1:])
    return tuple(t.shape)


def to_nvlabs(sd: dict, pairs: list[tuple[str, str]]) -> dict:
    """Our state dict renamed and reshaped to NVlabs names and shapes."""
    return {nv: sd[ours].reshape(nvlabs_shape(nv, sd[ours])) for nv, ours in pairs if ours in sd}
