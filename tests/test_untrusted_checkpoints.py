"""Crafted checkpoint folders are refused: exit 2, one clear line, no code run, bounded memory.

The cases are in tests/untrusted_checkpoints.py (shared with benchmarks/untrusted.py). Folders
the trainers write still load: below, and the round trips of tests/test_checkpoint.py (whose
state holds strings, lists and floats, i.e. values DCP pickles).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pickle

import pytest
import torch

from tests.untrusted_checkpoints import CASES, TINY_G, gan_checkpoint, seal
from tests.untrusted_harness import params, run_attack
from trainer.model_io import CheckpointError as FileError
from trainer.networks import Generator, GeneratorConfig
from trainer.run.checkpoint import CheckpointError, CheckpointManager
from trainer.run.safe_dcp import read_metadata


@pytest.mark.parametrize("case", params(CASES))
def test_crafted_folder_is_refused_cleanly(case, tmp_path):
    with contextlib.ExitStack() as stack:
        attack = case.build(tmp_path, stack)
        r = run_attack(case.name, attack)
    assert not r.code_executed, r.stderr[-2000:]
    assert r.refused_cleanly(attack), (r.exit_code, r.stderr[-2000:])
    assert r.peak_mb < 1024, r.peak_mb
    assert r.user_files_lost == []


def test_written_folder_loads_through_the_restricted_reader(tmp_path):
    folder = gan_checkpoint(tmp_path)  # its G is the first network built after manual_seed(0)
    torch.manual_seed(0)
    want = Generator(GeneratorConfig(**TINY_G)).state_dict()
    torch.manual_seed(1)
    G = Generator(GeneratorConfig(**TINY_G))
    CheckpointManager(str(folder.parent)).load(str(folder), {"G": G})
    torch.testing.assert_close(dict(G.state_dict()), dict(want), rtol=0, atol=0, equal_nan=True)  # w_avg: NaN


def test_a_folder_refusal_is_also_a_model_file_error():
    # Commands that catch only trainer.model_io's CheckpointError (launch.cartoonize) exit 2 on it too.
    assert issubclass(CheckpointError, FileError)


def _unlist_metadata(folder):
    marker = json.loads((folder / "COMPLETE").read_text())
    del marker["files"][".metadata"]
    (folder / "COMPLETE").write_text(json.dumps(marker))


def _retarget(**change):
    def tamper(folder):
        meta = read_metadata((folder / ".metadata").read_bytes())
        for index, info in meta.storage_data.items():
            meta.storage_data[index] = dataclasses.replace(info, **change)
        (folder / ".metadata").write_bytes(pickle.dumps(meta))
        seal(folder)
    return tamper


@pytest.mark.parametrize("tamper, message", [
    (_unlist_metadata, "does not list .metadata"),
    (_retarget(relative_path="../../outside.distcp"), "malformed dcp storage entry"),
    (_retarget(relative_path="__0_1.distcp"), "points into files complete does not list"),
    (_retarget(transform_descriptors=["zstd"]), "refusing stream transforms"),
], ids=["unlisted_metadata", "path_outside", "unlisted_data_file", "stream_transform"])
def test_folder_is_checked_before_dcp_reads_it(tamper, message, tmp_path):
    folder = gan_checkpoint(tmp_path)
    tamper(folder)
    with pytest.raises(CheckpointError) as e:
        CheckpointManager(str(folder.parent)).load(str(folder), {"G": Generator(GeneratorConfig(**TINY_G))})
    assert message in str(e.value).lower()
