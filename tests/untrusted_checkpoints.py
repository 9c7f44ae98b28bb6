"""Crafted checkpoint folders: code in DCP's ``.metadata`` or in a value DCP pickles, a cut ``.metadata``.

Each folder carries what a forger would add by hand: a ``COMPLETE`` marker listing every file
with its true size and a ``meta.json`` the command accepts, so that the only thing left to
refuse is the DCP content. The payloads write ``marker`` (a file in the scratch folder) when
unpickled by a plain unpickler; each case names the command that reads the folder: export,
resume of a GAN run, and an encoder given as a checkpoint folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shlex
from pathlib import Path
from unittest import mock

import torch
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

from tests.data_fixtures import face_shards
from tests.untrusted_harness import Attack, Case

ROOT = Path(__file__).resolve().parents[1]
TINY_G = dict(size=32, style_dim=32, n_mlp=2, channel_multiplier=0.0625, channel_max=32)
TINY_D = dict(size=32, channel_multiplier=0.0625, channel_max=32)
TINY_ENC = dict(n_styles=8, style_dim=32, input_size=32, width=0.125, units=[1, 1, 1, 1])
GAN_ARGS = ["--config", str(ROOT / "launch/configs/tiny.yaml"), "loader.workers=0", "optim.batch=4",
            "run.total_kimg=0.016", "run.tick_kimg=0.016"]
REFUSED_GLOBAL = "refusing to unpickle"


class _Shell:
    """Pickles as a call of ``os.system`` (what a plain unpickler runs on load)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Exec:
    """Pickles as a call of ``builtins.exec``."""

    def __init__(self, source: str):
        self.source = source

    def __reduce__(self):
        return exec, (self.source,)


def seal(folder: Path, step: int = 1) -> None:
    """The marker a forger writes: every file of the folder with its size."""
    files = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name != "COMPLETE"}
    (folder / "COMPLETE").write_text(json.dumps({"step": step, "world": 1, "files": files}))


def _folder(tmp: Path, meta: dict, metadata: bytes) -> Path:
    folder = tmp / "checkpoints" / "ckpt-000000001"
    folder.mkdir(parents=True)
    (folder / ".metadata").write_bytes(metadata)
    (folder / "__0_0.distcp").write_bytes(b"")
    (folder / "meta.json").write_text(json.dumps(meta))
    seal(folder)
    return folder


def _gan_meta() -> dict:
    from trainer.networks import DiscriminatorConfig, GeneratorConfig

    return {"step": 1, "nimg": 0, "world": 1, "config": {}, "g_config": GeneratorConfig(**TINY_G).to_dict(),
            "d_config": DiscriminatorConfig(**TINY_D).to_dict(), "src_config": None}


def gan_checkpoint(tmp: Path) -> Path:
    """A checkpoint of tiny G, D, G_ema written by CheckpointManager (what export reads)."""
    from trainer.networks import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig
    from trainer.run.checkpoint import CheckpointManager

    torch.manual_seed(0)
    nets = {"G": Generator(GeneratorConfig(**TINY_G)), "D": Discriminator(DiscriminatorConfig(**TINY_D)),
            "G_ema": Generator(GeneratorConfig(**TINY_G))}
    return Path(CheckpointManager(str(tmp / "checkpoints")).save(1, nets, {}, _gan_meta()))


def _store_value(folder: Path, fqn: str, payload: bytes) -> None:
    """Points ``fqn`` of a real checkpoint at ``payload`` (appended to its data file), declared as a
    pickled value, and reseals the folder: every record stays one DCP itself writes."""
    from trainer.run.safe_dcp import read_metadata

    meta = read_metadata((folder / ".metadata").read_bytes())
    data = folder / "__0_0.distcp"
    offset = data.stat().st_size
    with open(data, "ab") as f:
        f.write(payload)
    meta.state_dict_metadata[fqn] = BytesStorageMetadata()
    for index in [i for i in meta.storage_data if i.fqn == fqn]:
        del meta.storage_data[index]
    meta.storage_data[MetadataIndex(fqn)] = _StorageInfo("__0_0.distcp", offset, len(payload))
    (folder / ".metadata").write_bytes(pickle.dumps(meta))
    seal(folder, json.loads((folder / "COMPLETE").read_text())["step"])


def _torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _user_file(tmp: Path, name: str) -> dict[Path, bytes]:
    path = tmp / name
    path.write_bytes(b"the user's own file")
    return {path: path.read_bytes()}


# ----------------------------------------------------------------------------- cases


def export_metadata_code(tmp: Path, stack: contextlib.ExitStack) -> Attack:
    marker = tmp / "PWNED"
    _folder(tmp, _gan_meta(), pickle.dumps(_Shell(f"touch {shlex.quote(str(marker))}")))
    return Attack(["launch.export_gan", "--ckpt", str(tmp / "checkpoints" / "latest"), "--out", str(tmp / "g.pt")],
                  marker=marker, user_files=_user_file(tmp, "g.pt"), expect_message=REFUSED_GLOBAL)


def resume_metadata_code(tmp: Path, stack: contextlib.ExitStack) -> Attack:
    from trainer.gan.config import GANConfig
    from trainer.run.config import load_config, to_dict

    marker = tmp / "PWNED"
    shards = face_shards(tmp / "data", 8, 32, shard_samples=8)
    args = [*GAN_ARGS, f"loader.data={shards}", f"run.dir={tmp / 'run'}"]
    meta = {**_gan_meta(), "config": to_dict(load_config(GANConfig, args[1], args[2:]))}
    folder = _folder(tmp, meta, pickle.dumps(_Shell(f"touch {shlex.quote(str(marker))}")))
    return Attack(["launch.train_gan", "--resume", str(folder), *args], marker=marker,
                  user_files=_user_file(tmp, "notes.txt"), expect_message=REFUSED_GLOBAL)


def encoder_metadata_code(tmp: Path, stack: contextlib.ExitStack) -> Attack:
    from trainer.networks import GeneratorConfig
    from trainer.networks.encoders import EncoderConfig

    marker = tmp / "PWNED"
    meta = {"step": 1, "config": {}, "g_config": GeneratorConfig(**TINY_G).to_dict(),
            "enc_config": EncoderConfig(**TINY_ENC).to_dict()}
    folder = _folder(tmp, meta, pickle.dumps(_Exec(f"open({str(marker)!r}, 'w').close()")))
    (tmp / "images").mkdir()
    return Attack(["launch.invert", "--encoder", str(folder), "--images", str(tmp / "images"), "--out",
                   str(tmp / "latents.npz"), "--device", "cpu"], marker=marker,
                  user_files=_user_file(tmp, "latents.npz"), expect_message=REFUSED_GLOBAL)


def resume_pickled_value_code(tmp: Path, stack: contextlib.ExitStack) -> Attack:
    """A checkpoint of a real one-tick run whose stored learning rate (a value DCP pickles) runs code."""
    from launch import train_gan

    marker = tmp / "PWNED"
    shards = face_shards(tmp / "data", 8, 32, shard_samples=8)
    args = [*GAN_ARGS, f"loader.data={shards}", f"run.dir={tmp / 'run'}"]
    with mock.patch.dict(os.environ, {"ACCELERATE_USE_CPU": "1"}):
        assert train_gan.main(args) == 0
    folder = sorted((tmp / "run" / "checkpoints").glob("ckpt-*"))[-1]
    _store_value(folder, "opt_G.param_groups.0.lr", _torch_bytes(_Shell(f"touch {shlex.quote(str(marker))}")))
    return Attack(["launch.train_gan", "--resume", str(folder), *args], marker=marker,
                  user_files=_user_file(tmp, "notes.txt"), expect_message="refusing to unpickle the stored value")


def export_tensor_as_pickle(tmp: Path, stack: contextlib.ExitStack) -> Attack:
    """A real checkpoint in which one weight is re-declared as a pickled value that runs code."""
    marker = tmp / "PWNED"
    folder = gan_checkpoint(tmp)
    _store_value(folder, "G_ema.style.1.weight", _torch_bytes(_Shell(f"touch {shlex.quote(str(marker))}")))
    return Attack(["launch.export_gan", "--ckpt", str(folder), "--out", str(tmp / "g.pt")], marker=marker,
                  user_files=_user_file(tmp, "g.pt"), expect_message="refusing a pickled value stored for tensor")


def export_truncated_metadata(tmp: Path, stack: contextlib.ExitStack) -> Attack:
    folder = gan_checkpoint(tmp)
    meta = folder / ".metadata"
    meta.write_bytes(meta.read_bytes()[: meta.stat().st_size // 2])
    seal(folder)  # sizes agree: only reading the pickle shows the damage
    return Attack(["launch.export_gan", "--ckpt", str(folder), "--out", str(tmp / "g.pt")],
                  user_files=_user_file(tmp, "g.pt"), expect_message="truncated or corrupt metadata")


CASES: list[Case] = [
    Case("ckpt_export_metadata_code", export_metadata_code),
    Case("ckpt_resume_metadata_code", resume_metadata_code, slow=True),
    Case("ckpt_encoder_metadata_code", encoder_metadata_code, slow=True),
    Case("ckpt_resume_pickled_value_code", resume_pickled_value_code, slow=True),
    Case("ckpt_export_tensor_as_pickle", export_tensor_as_pickle, slow=True),
    Case("ckpt_export_truncated_metadata", export_truncated_metadata, slow=True),
]
