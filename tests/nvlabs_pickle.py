"""Writes NVlabs-style network pickles for tests, with the persistent-object
structure of stylegan2-ada-pytorch: every module pickles as
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` where ``meta``
holds the module source, the class name and the module ``__dict__``.

The embedded source writes a marker file when executed, so a test can prove
that importing never runs it.
"""

from __future__ import annotations

import pickle
import sys
import types
from collections import OrderedDict

import torch

from trainer.model_io import nvlabs

BUFFERS = ("w_avg", "noise_const", "resample_filter")


def _install_fake_modules() -> tuple[types.FunctionType, type]:
    """Registers importable ``torch_utils.persistence`` and ``dnnlib.util`` so pickle
    can name their globals (the reader maps those names to its own data types)."""
    pers = types.ModuleType("torch_utils.persistence")
    util = types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):  # never called by the reader
        raise AssertionError("the reader must not call the pickled reconstructor")

    _reconstruct_persistent_obj.__module__ = pers.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    pers._reconstruct_persistent_obj = _reconstruct_persistent_obj

    class EasyDict(dict):
        pass

    EasyDict.__module__ = util.__name__
    EasyDict.__qualname__ = "EasyDict"
    util.EasyDict = EasyDict
    sys.modules.setdefault("torch_utils", types.ModuleType("torch_utils"))
    sys.modules.setdefault("dnnlib", types.ModuleType("dnnlib"))
    sys.modules[pers.__name__], sys.modules[util.__name__] = pers, util
    return _reconstruct_persistent_obj, EasyDict


class _Persistent:
    """A module as NVlabs pickles it."""

    def __init__(self, reconstruct, class_name: str, state: dict, marker: str):
        self.reconstruct, self.class_name, self.state, self.marker = reconstruct, class_name, state, marker

    def __reduce__(self):
        src = f"open({self.marker!r}, 'w').write('executed')\nclass {self.class_name}: pass\n"
        meta = dict(type="class", version=6, module_src=src, class_name=self.class_name, state=self.state)
        return self.reconstruct, (meta,)


def _tree(flat: dict[str, torch.Tensor], reconstruct, marker: str, class_name: str,
          attrs: dict[str, dict], path: str = "") -> _Persistent:
    """Nested persistent modules from a flat NVlabs state dict; ``attrs`` maps a
    dotted module path to extra attributes of that module."""
    children: dict[str, dict] = OrderedDict()
    params, buffers = OrderedDict(), OrderedDict()
    for name, t in flat.items():
        head, _, rest = name.partition(".")
        if rest:
            children.setdefault(head, OrderedDict())[rest] = t
        elif name in BUFFERS:
            buffers[name] = t.clone()
        else:
            params[name] = torch.nn.Parameter(t.clone(), requires_grad=False)
    prefix = path + "." if path else ""
    for key in attrs:
        if key.startswith(prefix) and key != path:
            children.setdefault(key[len(prefix):].split(".")[0], OrderedDict())
    state = {"training": False, "_parameters": params, "_buffers": buffers,
             "_non_persistent_buffers_set": set(), "_modules": OrderedDict()}
    state.update(attrs.get(path, {}))
    for head, sub in children.items():
        state["_modules"][head] = _tree(sub, reconstruct, marker, head.capitalize(), attrs, prefix + head)
    return _Persistent(reconstruct, class_name, state, marker)


def _fp16(cfg, res: int, log_size: int) -> bool:
    """NVlabs' use_fp16 for a block at ``res``: one of the num_fp16_res highest, never 4 px."""
    return res >= max(2 ** (log_size + 1 - cfg.num_fp16_res), 8)


def _override(mods: dict[str, dict], extra: dict[str, dict] | None) -> None:
    for path, values in (extra or {}).items():
        mods.setdefault(path, {}).update(values)


def write_nvlabs_pickle(path, G=None, G_ema=None, D=None, marker: str = "/nonexistent",
                        lr_mlp: float = 0.01, attrs: dict[str, dict[str, dict]] | None = None) -> None:
    """Pickles our networks in NVlabs' layout and naming, with the module attributes
    NVlabs stores that change outputs: each conv layer's ``conv_clamp`` and each
    block's ``use_fp16`` (from the network's config). ``attrs`` overrides them per
    network key and module path, e.g. {"G_ema": {"synthesis.b8.conv0": {"conv_clamp": 1}}}."""
    reconstruct, EasyDict = _install_fake_modules()
    f = torch.tensor([1.0, 3.0, 3.0, 1.0])
    filt = torch.outer(f, f) / 64
    data = {"training_set_kwargs": EasyDict(resolution=0), "augment_pipe": None}
    for key, net in (("G", G), ("G_ema", G_ema)):
        if net is not None:
            flat = nvlabs.to_nvlabs(net.state_dict(), nvlabs.generator_pairs(net.cfg.n_mlp, net.size))
            for r in [4 * 2 ** i for i in range(net.log_size - 1)]:
                flat[f"synthesis.b{r}.resample_filter"] = filt
            mods = {f"mapping.fc{i}": {"lr_multiplier": lr_mlp} for i in range(net.cfg.n_mlp)}
            mods[""] = {"init_kwargs": EasyDict(z_dim=net.style_dim)}
            for r in [4 * 2 ** i for i in range(net.log_size - 1)]:
                mods[f"synthesis.b{r}"] = {"use_fp16": _fp16(net.cfg, r, net.log_size)}
                for layer in ("conv0", "conv1", "torgb") if r > 4 else ("conv1", "torgb"):
                    mods[f"synthesis.b{r}.{layer}"] = {"conv_clamp": net.cfg.conv_clamp}
            _override(mods, (attrs or {}).get(key))
            data[key] = _tree(flat, reconstruct, marker, "Generator", mods)
    if D is not None:
        flat = nvlabs.to_nvlabs(D.state_dict(), nvlabs.discriminator_pairs(D.cfg.size))
        flat[f"b{D.cfg.size}.resample_filter"] = filt
        mods = {"b4.mbstd": {"group_size": D.cfg.stddev_group, "num_channels": 1},
                "b4.conv": {"conv_clamp": D.cfg.conv_clamp}, f"b{D.cfg.size}.fromrgb": {"conv_clamp": D.cfg.conv_clamp}}
        for r in [D.cfg.size >> j for j in range(D.log_size - 2)]:
            mods[f"b{r}"] = {"use_fp16": _fp16(D.cfg, r, D.log_size)}
            mods.update({f"b{r}.{n}": {"conv_clamp": D.cfg.conv_clamp} for n in ("conv0", "conv1")})
            mods[f"b{r}.skip"] = {"conv_clamp": None}  # NVlabs gives its resnet skips no clamp
        _override(mods, (attrs or {}).get("D"))
        data["D"] = _tree(flat, reconstruct, marker, "Discriminator", mods)
    with open(path, "wb") as fh:
        pickle.dump(data, fh, protocol=4)
