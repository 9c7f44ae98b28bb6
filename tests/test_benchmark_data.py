"""benchmarks/data.py: both sides read the same images; the JSON line carries the named keys."""

from __future__ import annotations

import io
import json

import numpy as np
import torch
from PIL import Image

import benchmarks.data as bench
from datasets.images import decode_array
from datasets.loader import LoaderConfig, ShardLoader


def test_both_sides_deliver_the_same_pixels(tmp_path):
    paths = bench.prepare(tmp_path, 6, [64], workers=0)
    lmdb = bench.RosinalityLMDB(paths["lmdb"], 64)
    loader = ShardLoader(LoaderConfig(paths["shards_64"], batch_size=6, workers=0), 0, 1, "eval")
    batch = next(iter(loader))
    for i, idx in enumerate(batch.index.tolist()):
        with lmdb.env.begin() as txn:
            data = txn.get(f"64-{idx:05d}".encode())
        ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert np.array_equal(decode_array(data), ref)  # libjpeg-turbo path == PIL
        assert np.array_equal(batch.images[i].permute(1, 2, 0).numpy(), ref)
        x = lmdb[idx]  # the baseline's float output is the same picture (maybe mirrored)
        expect = torch.from_numpy(ref).permute(2, 0, 1).float() / 127.5 - 1
        assert torch.allclose(x, expect, atol=1e-5) or torch.allclose(x, expect.flip(-1), atol=1e-5)


def test_run_reports_the_named_keys(capsys):
    summary = bench.main(["--sizes", "64", "--repeats", "1", "--quick"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == summary
    for key in ("shards_img_s_64", "lmdb_img_s_64", "shards_png_img_s_64"):
        assert summary[key] > 0
    assert abs(summary["ratio_64"] - summary["shards_img_s_64"] / summary["lmdb_img_s_64"]) < 2e-3
