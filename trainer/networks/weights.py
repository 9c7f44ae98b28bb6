"""Pretrained weight files in the layouts their public releases use, read from local paths.

Nothing is downloaded: clusters and CI machines often have no internet. Each
entry says which file a network needs, where users get it, and how it is
verified. torchvision files carry the first 8 hex digits of their SHA-256 in
the name (``resnet34-b627a593.pth``) and are checked against it exactly as
torchvision does; other files are checked against ``expected_sha256`` when the
caller gives one, and their SHA-256 is always reported so a run can record it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.model_io.errors import CheckpointError
from trainer.model_io.safe_pickle import torch_load


class WeightsError(CheckpointError):
    """A weight file is missing, corrupt, fails its hash or has the wrong layout."""


@dataclass(frozen=True)
class WeightFile:
    key: str
    filename: str
    """The file name of the public release."""
    source: str
    """Where users get it."""


PUBLIC: dict[str, WeightFile] = {w.key: w for w in (
    WeightFile("ir_se50", "model_ir_se50.pth",
               "the pSp / ReStyle pretrained-models list (TreB1eN InsightFace_Pytorch IR-SE50, ArcFace)"),
    WeightFile("resnet34", "resnet34-b627a593.pth", "https://download.pytorch.org/models/resnet34-b627a593.pth"),
    WeightFile("resnet50", "resnet50-0676ba61.pth", "https://download.pytorch.org/models/resnet50-0676ba61.pth"),
    WeightFile("alexnet", "alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    WeightFile("vgg16", "vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
    WeightFile("lpips_alex", "alex.pth", "the lpips package (richzhang/PerceptualSimilarity), lpips/weights/v0.1/alex.pth"),
    WeightFile("lpips_vgg", "vgg.pth", "the lpips package (richzhang/PerceptualSimilarity), lpips/weights/v0.1/vgg.pth"),
    WeightFile("moco_v2", "moco_v2_800ep_pretrain.pt",
               "facebookresearch/moco (MoCo v2, 800 epochs; ReStyle's list names it moco_v2_800ep_pretrain.pt)"),
    WeightFile("inception_fid", "pt_inception-2015-12-05-6726825d.pth",
               "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"),
    WeightFile("inception_nvidia", "inception-2015-12-05.pt",
               "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"),
    # torch-fidelity's converter writes pytorch-fid's key layout (utils/util_convert_inception_weights.py).
    WeightFile("inception_fidelity", "weights-inception-2015-12-05-6726825d.pth",
               "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"),
)}

_TORCHVISION_NAME = re.compile(r"-([0-9a-f]{8,})\.pth?$")


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def missing_message(key: str, what: str) -> str:
    w = PUBLIC[key]
    return f"{what} needs {w.filename} ({w.key}); get it from {w.source} and give its local path"


def verify(path: str | Path, expected_sha256: str | None = None) -> str:
    """Checks ``path`` against ``expected_sha256`` (a prefix is enough) or the hash prefix in a
    torchvision file name; returns the full SHA-256."""
    digest = sha256(path)
    expected = expected_sha256 or (m.group(1) if (m := _TORCHVISION_NAME.search(Path(path).name)) else None)
    if expected and not digest.startswith(expected.lower()):
        raise WeightsError(f"{path}: SHA-256 {digest[:16]}... does not match the recorded {expected} "
                           "(a different or damaged file; rename it or pass the right expected hash)")
    return digest


def load_weights(path: str | Path | None, key: str, what: str, expected_sha256: str | None = None,
                 check_hash: bool = True) -> dict:
    """The object stored in public weight file ``key`` at ``path`` (tensors and containers only).

    ``what`` names the network that needs it, for the error message.
    """
    if path is None or not Path(path).is_file():
        where = "no path given" if path is None else f"{path} does not exist"
        raise WeightsError(f"{missing_message(key, what)} ({where})")
    if check_hash:
        verify(path, expected_sha256)
    try:
        obj = torch_load(path)
    except CheckpointError as e:
        raise WeightsError(f"{what}: {e}") from e
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a state dict for {what}, found {type(obj).__name__}")
    return obj


def tensors(obj: dict, path: str | Path) -> dict[str, torch.Tensor]:
    """Only the tensor entries of a loaded state dict (fails if there are none)."""
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise WeightsError(f"{path}: holds no tensors at the top level (keys: {list(obj)[:6]})")
    return sd


def load_into(module: torch.nn.Module, sd: dict[str, torch.Tensor], what: str, path: str | Path,
              allow_missing: tuple[str, ...] = (), allow_unexpected: tuple[str, ...] = ()) -> None:
    """``load_state_dict`` with a clear error for missing, unexpected or mis-shaped keys;
    keys starting with an allowed prefix may be missing or unexpected.

    BatchNorm's ``num_batches_tracked`` may be missing: files saved before torch 0.4.1
    have none (torch's own loader fills it in from version metadata that a plain dict
    of tensors does not carry), and evaluation never reads it.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in sd and not k.startswith(allow_missing or ("\0",))
               and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in sd if k not in own and not k.startswith(allow_unexpected or ("\0",))]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs network {tuple(own[k].shape)}"
              for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise WeightsError(f"{path} does not fit {what}: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                           f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, shapes {shapes[:3]}")
    module.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
