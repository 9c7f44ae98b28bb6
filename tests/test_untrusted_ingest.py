"""Crafted inputs to the data commands are refused cleanly: no user file lost, no memory
blown, no hang, no shard read from outside its manifest's folder."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import pytest

from datasets import shards as shards_mod
from datasets.crawl import CrawlConfig, crawl
from datasets.errors import DataError
from datasets.imageio import ImageTooLarge, open_image
from datasets.images import decode_array
from datasets.loader import LoaderConfig, ShardLoader, load_shard_set
from datasets.shards import WriterConfig, write_shards
from datasets.sources import folder_items
from tests.untrusted_harness import params, run_attack
from tests.untrusted_ingest import CASES, pixel_bomb, png, trickle_server, write_shard, write_zip_bomb

PEAK_MB = 1024


@pytest.mark.parametrize("case", params(CASES))
def test_a_crafted_input_is_refused_cleanly(case, tmp_path):
    with contextlib.ExitStack() as stack:
        attack = case.build(tmp_path, stack)
        r = run_attack(case.name, attack)
    assert r.refused_cleanly(attack), (r.exit_code, r.stderr[-2000:])
    assert r.peak_mb < PEAK_MB and not r.user_files_lost and r.seconds < attack.timeout


def _cfg(out: Path, **kw) -> WriterConfig:
    return WriterConfig(out=str(out), image_size=32, min_size=16, workers=0, **kw)


def test_a_zip_bomb_member_is_listed_as_too_large_and_the_rest_written(tmp_path):
    write_zip_bomb(tmp_path / "in.zip", "a/big.png", {f"a/{i}.png": png(i) for i in range(3)})
    t0 = time.time()
    m = write_shards(folder_items(str(tmp_path / "in.zip")), _cfg(tmp_path / "out"), progress=False)
    assert time.time() - t0 < 5  # refused from its directory entry: 1.5 GiB is never inflated
    assert m["num_samples"] == 3 and m["rejected_counts"] == {"too_large": 1}
    assert m["rejected"][0]["source"].endswith("a/big.png")


def test_a_file_larger_than_the_limit_is_refused_before_it_is_read(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "big.png").write_bytes(png(0, 256))
    (tmp_path / "in" / "ok.png").write_bytes(png(1))
    m = write_shards(folder_items(str(tmp_path / "in")), _cfg(tmp_path / "out", max_file_bytes=50_000),
                     progress=False)
    assert m["num_samples"] == 1 and m["rejected_counts"] == {"too_large": 1}


def test_a_resumed_job_deletes_only_its_own_files(tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        (src / f"{i}.png").write_bytes(png(i))
    out = tmp_path / "out"
    calls = {"n": 0}
    real_add = shards_mod.ShardSink.add

    def killed_on_third(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill in shard 1")
        return real_add(self, *a, **kw)

    monkeypatch.setattr(shards_mod.ShardSink, "add", killed_on_third)
    monkeypatch.setattr(shards_mod.ShardSink, "abandon", lambda self: None)  # a kill cleans nothing up
    with pytest.raises(KeyboardInterrupt):
        write_shards(folder_items(str(src)), _cfg(out, shard_samples=2), progress=False)
    monkeypatch.undo()
    assert list(out.glob("shard-000001.tar.tmp-*"))
    user = {out / "_progress" / "notes.txt": b"notes", out / "thesis.tmp-final": b"draft"}
    for p, data in user.items():
        p.write_bytes(data)
    m = write_shards(folder_items(str(src)), _cfg(out, shard_samples=2), progress=False)
    assert m["num_samples"] == 6 and not list(out.glob("shard-*.tmp-*"))
    assert all(p.read_bytes() == data for p, data in user.items())
    assert sorted(p.name for p in (out / "_progress").iterdir()) == ["notes.txt"]  # our records are gone


def test_a_run_killed_before_its_first_shard_still_resumes_and_a_foreign_folder_is_refused(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(png(0))
    out = tmp_path / "out"
    (out / "_progress").mkdir(parents=True)
    (out / "shard-000000.tar.tmp-1700000000000000000").write_bytes(b"half a shard")
    (out / ".DS_Store").write_bytes(b"\0")  # hidden: never ours to touch, and no reason to refuse
    assert write_shards(folder_items(str(src)), _cfg(out), progress=False)["num_samples"] == 1
    assert sorted(p.name for p in out.iterdir()) == [".DS_Store", "manifest.json", "shard-000000.tar"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "README").write_text("mine")
    with pytest.raises(DataError, match="did not write"):
        write_shards(folder_items(str(src)), _cfg(other), progress=False)
    assert sorted(p.name for p in other.iterdir()) == ["README"]


def test_an_image_declaring_too_many_pixels_is_refused_from_its_header(tmp_path):
    (tmp_path / "huge.png").write_bytes(pixel_bomb(30000, full=False))  # over PIL's own hard limit
    (tmp_path / "big.png").write_bytes(pixel_bomb(100, full=False))
    with pytest.raises(ImageTooLarge, match="too many pixels"):
        open_image(tmp_path / "huge.png")
    with pytest.raises(ImageTooLarge, match="100x100"):
        open_image(tmp_path / "big.png", max_pixels=9999)
    with open_image(tmp_path / "big.png") as im:
        assert im.size == (100, 100)
    with pytest.raises(ValueError, match="900000000 pixels"):  # a shard member: refused before decoding
        decode_array(pixel_bomb(30000, full=False), 32)


def test_an_image_folder_reads_the_good_images_beside_a_bomb(tmp_path):
    from eval.features import FolderSource

    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(png(i))
    (tmp_path / "bomb.png").write_bytes(pixel_bomb(30000, full=False))
    src = FolderSource(str(tmp_path))
    got = [i for index, _ in src.batches(8, 0, 1) for i in index]
    assert got == [0, 1, 2] and dict(src.skipped) == {"too many pixels": 1}  # bomb.png, sorted last, skipped


def _manifest(folder: Path, name: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(
        {"image_size": 32, "labels": [], "shards": [{"name": name, "count": 2}]}))
    return str(folder)


def test_manifest_shard_names_must_stay_in_its_folder_unless_allowed(tmp_path):
    write_shard(tmp_path / "other" / "shard-000000.tar")
    outside = tmp_path / "other" / "shard-000000.tar"
    for k, name in enumerate(["../other/shard-000000.tar", "sub/../../other/shard-000000.tar", str(outside),
                              outside.as_uri(), "memory://somewhere/shard.tar"]):
        data = _manifest(tmp_path / f"m{k}", name)
        with pytest.raises(DataError, match="outside its folder"):
            load_shard_set(data)
        assert load_shard_set(data, allow_external=True).urls
    inside = tmp_path / "m_in"
    write_shard(inside / "sub" / "shard-000000.tar")
    for name in ["sub/shard-000000.tar", str(inside / "sub" / "shard-000000.tar"),
                 (inside / "sub" / "shard-000000.tar").as_uri()]:
        assert load_shard_set(_manifest(inside, name)).total == 2
    data = _manifest(tmp_path / "m0", "../other/shard-000000.tar")
    loader = ShardLoader(LoaderConfig(data, batch_size=2, workers=0, allow_external_shards=True), 0, 1, "eval")
    assert [b.images.shape[0] for b in loader] == [2]


def test_a_trickling_server_ends_at_the_request_deadline_without_a_retry(tmp_path):
    with contextlib.ExitStack() as stack:
        url, server = trickle_server(stack, interval=0.05)
        (tmp_path / "urls.csv").write_text(f"t,1,{url}\n")
        t0 = time.monotonic()
        summary = crawl(CrawlConfig(out=tmp_path / "out", url_list=tmp_path / "urls.csv", timeout_s=0.5,
                                    deadline_s=0.6, retries=2, rate_limit_s=0, respect_robots=False,
                                    progress=False))
        elapsed = time.monotonic() - t0
    assert summary["failed"] == {"deadline": 1} and summary["fetched"] == 0 and server.requests == 1
    assert 0.6 <= elapsed < 2.0
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file() and p.name != "crawl_log.jsonl"]
