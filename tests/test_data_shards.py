"""Shard writing from every source kind, bad inputs, the manifest and resume."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image

from datasets import shards as shards_mod
from datasets.errors import DataError
from datasets.faces import read_landmarks
from datasets.lmdb_io import write_rosinality_lmdb
from datasets.shards import WriterConfig, shuffle_items, write_shards
from datasets.sources import box_items, face_items, folder_items, lmdb_items
from launch import make_shards as make_shards_cli
from tests.data_fixtures import bad_files, face, jpeg_bytes, odd_modes, png_bytes, write

ROOT = Path(__file__).resolve().parents[1]


def read_shard(path) -> dict[str, dict[str, bytes]]:
    """Shard -> {key: {ext: bytes}}; fails on anything that is not a complete tar."""
    samples: dict[str, dict[str, bytes]] = {}
    with fsspec.open(str(path), "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for m in tar:
            key, ext = m.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def all_samples(out) -> dict[str, dict[str, bytes]]:
    fs, base = fsspec.core.url_to_fs(str(out))
    found: dict[str, dict[str, bytes]] = {}
    for p in sorted(fs.glob(base.rstrip("/") + "/shard-*.tar")):
        found.update(read_shard(f"{fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol}://{p}"
                                if "://" in str(out) else p))
    return found


def cfg(out, **kw) -> WriterConfig:
    return WriterConfig(out=str(out), image_size=32, workers=0, shard_samples=4, **kw)


@pytest.fixture()
def char_folder(tmp_path) -> Path:
    root = tmp_path / "chars"
    for c, label in enumerate(["alice", "bob"]):
        for i in range(5):
            face(10 * c + i).save(write(root / label / f"{i}.png", b""))
    (root / ".DS_Store").write_bytes(b"\0\0")  # hidden: ignored, not counted
    return root


def test_folder_labels_manifest_and_samples(char_folder, tmp_path):
    m = write_shards(folder_items(str(char_folder), "subfolder"), cfg(tmp_path / "out"), progress=False)
    assert m["num_samples"] == 10 and m["labels"] == ["alice", "bob"]
    assert m["label_counts"] == {"alice": 5, "bob": 5} and m["unlabelled"] == 0
    assert [s["count"] for s in m["shards"]] == [4, 4, 2]
    assert m["image_size"] == 32 and m["rejected"] == [] and m["num_inputs"] == 10
    samples = all_samples(tmp_path / "out")
    assert sorted(samples) == [f"{i:09d}" for i in range(10)]
    for rec in m["samples"]:
        s = samples[rec["key"]]
        meta = json.loads(s["json"])
        assert meta["source"] == rec["source"] and meta["label"] == rec["label"]
        assert int(s["cls"]) == m["labels"].index(rec["label"])
        assert Image.open(io.BytesIO(s["png"])).size == (32, 32)
    assert m["samples"][0]["source"] == f"folder:{char_folder}/alice/0.png"


def test_every_bad_input_is_counted_and_nothing_unreadable_enters(tmp_path):
    root = tmp_path / "mixed"
    for i in range(3):
        face(i).save(write(root / f"ok{i}.png", b""))
    for name, (data, _) in bad_files().items():
        write(root / name, data)
    for name, data in odd_modes().items():
        write(root / name, data)
    big = Image.new("RGB", (300, 300), (9, 9, 9))
    big.save(write(root / "huge.png", b""))
    m = write_shards(folder_items(str(root)), cfg(tmp_path / "out", max_pixels=200 * 200), progress=False)
    by_source = {Path(r["source"]).name: r["reason"] for r in m["rejected"]}
    expected = {name: reason for name, (_, reason) in bad_files().items()} | {"huge.png": "too_many_pixels"}
    assert by_source == expected
    assert m["rejected_counts"] == {"corrupt": 2, "empty": 1, "not_image": 2, "too_many_pixels": 1, "too_small": 1}
    assert m["num_samples"] == 3 + len(odd_modes())
    samples = all_samples(tmp_path / "out")
    assert len(samples) == m["num_samples"]
    for s in samples.values():  # every member decodes to 8-bit RGB at the training size
        img = Image.open(io.BytesIO(s["png"]))
        img.load()
        assert img.mode == "RGB" and img.size == (32, 32)


def test_odd_modes_are_converted_faithfully(tmp_path):
    root = tmp_path / "modes"
    for name, data in odd_modes(64).items():
        write(root / name, data)
    m = write_shards(folder_items(str(root)), WriterConfig(out=str(tmp_path / "o"), image_size=64, workers=0),
                     progress=False)
    samples = all_samples(tmp_path / "o")
    px = {Path(r["source"]).name: np.asarray(Image.open(io.BytesIO(samples[r["key"]]["png"])))
          for r in m["samples"]}
    assert (px["rgba.png"][:10] == 255).all()  # transparent band composited on white
    g = px["gray16.png"].astype(int)  # 16-bit: 65535 -> 255, 32768 -> 128 (scaled, not clipped)
    assert (g[:, 5] == 255).all() and (np.abs(g[:, -5] - 128) <= 1).all()
    assert (px["gray.png"][..., 0] == px["gray.png"][..., 2]).all()
    ref = np.asarray(face(101, 64)).astype(int)
    assert np.abs(px["cmyk.jpg"].astype(int) - ref).mean() < 12  # CMYK JPEG decoded to the same picture


def test_exact_duplicates_removed_by_content(tmp_path):
    root = tmp_path / "d"
    face(1).save(write(root / "a.png", b""))
    face(1).save(write(root / "b" / "copy.png", b""))
    face(2).save(write(root / "c.png", b""))
    m = write_shards(folder_items(str(root)), cfg(tmp_path / "o"), progress=False)
    assert m["num_samples"] == 2 and m["num_duplicates"] == 1
    assert m["duplicates"] == [{"source": f"folder:{root}/b/copy.png", "duplicate_of": "000000000"}]
    m2 = write_shards(folder_items(str(root)), cfg(tmp_path / "o2", dedup=False), progress=False)
    assert m2["num_samples"] == 3


def test_zip_source_with_subfolder_labels(tmp_path):
    z = tmp_path / "faces.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for i in range(3):
            zf.writestr(f"carol/{i}.png", png_bytes(face(40 + i)))
        zf.writestr("dave/0.png", png_bytes(face(50)))
        zf.writestr("dave/broken.png", png_bytes(face(51))[:200])  # cut inside the pixel data
    m = write_shards(folder_items(str(z), "subfolder"), cfg(tmp_path / "o"), progress=False)
    assert m["label_counts"] == {"carol": 3, "dave": 1}
    assert [r["reason"] for r in m["rejected"]] == ["corrupt"]


def webtoon_crawl(tmp_path) -> tuple[Path, Path]:
    """A crawl layout with one page per episode and a box CSV with good and bad rows."""
    root = tmp_path / "crawl"
    # A tinted page: white margins would count as blank border (see test_faces).
    page = Image.new("RGB", (400, 400), (236, 222, 200))
    page.paste(face(7, 100, bg=(236, 222, 200)), (150, 120))
    for title in ("titleA", "titleB"):
        page.save(write(root / title / "ep1" / "001.png", b""))
    rows = [
        "titleA/ep1/001.png,170,130,250,210",   # good
        "titleB/ep1/001.png,170,130,250,210",   # good (same pixels: a duplicate of titleA's)
        "titleA/ep1/001.png,500,500,600,600",   # outside the page
        "titleA/ep1/001.png,170,130,290,210",   # aspect 1.5
        "titleA/ep1/001.png,10,10,40,40",       # too small
        "titleA/ep1/001.png,0,0,80,80",         # mostly outside after expansion: blank border
        "titleA/ep1/001.png,1,2,three,4",       # malformed: line 7
        "titleA/ep1/001.png,1,2",               # malformed: line 8
        "titleA/ep9/404.png,170,130,250,210",   # file missing
    ]
    csv = write(tmp_path / "boxes.csv", ("\n".join(rows) + "\n").encode())
    return root, csv


def test_webtoon_boxes_crops_rules_and_line_numbers(tmp_path):
    root, csv = webtoon_crawl(tmp_path)
    m = write_shards(box_items(str(root), str(csv), "title"), cfg(tmp_path / "o"), progress=False)
    reasons = sorted(r["reason"] for r in m["rejected"])
    assert reasons == sorted(["box_outside", "aspect", "too_small", "blank_border", "malformed_row",
                              "malformed_row", "missing_file"])
    lines = sorted(r["source"].rsplit(":", 1)[1] for r in m["rejected"] if r["reason"] == "malformed_row")
    assert lines == ["7", "8"]
    assert m["num_samples"] == 1 and m["num_duplicates"] == 1  # titleB's crop equals titleA's
    assert m["labels"] == ["titleA", "titleB"] and m["label_counts"] == {"titleA": 1, "titleB": 0}


def test_detector_json_with_score_threshold(tmp_path):
    root, _ = webtoon_crawl(tmp_path)
    det = {"titleA/ep1/001.png": [[170, 130, 250, 210, 0.9], [160, 120, 240, 200, 0.2]],
           "titleB/ep1/001.png": [[172, 131, 251, 212, 0.95]]}
    path = write(tmp_path / "det.json", json.dumps(det).encode())
    listing = box_items(str(root), str(path), "title", min_score=0.5)
    assert [it.crop[1:] for it in listing.items] == [(170, 130, 250, 210), (172, 131, 251, 212)]
    m = write_shards(listing, cfg(tmp_path / "o"), progress=False)
    assert m["label_counts"] == {"titleA": 1, "titleB": 1}


def test_icartoonface_detection_csv_without_labels(tmp_path):
    root = tmp_path / "icf"
    img = Image.new("RGB", (300, 300), (90, 140, 200))
    img.paste(face(3, 90, bg=(90, 140, 200)), (100, 100))
    img.save(write(root / "personai_0001.jpg", b""))
    csv = write(tmp_path / "icf.csv", b"personai_0001.jpg,110,105,180,175\npersonai_0001.jpg,-50,-50,-10,-10\n")
    m = write_shards(box_items(str(root), str(csv), "none"), cfg(tmp_path / "o"), progress=False)
    assert m["num_samples"] == 1 and m["labels"] == [] and m["unlabelled"] == 1
    assert m["rejected_counts"] == {"box_outside": 1}


def test_real_faces_aligned_and_missing_landmarks_counted(tmp_path):
    root = tmp_path / "photos"
    for i in range(3):
        face(60 + i, 128).save(write(root / f"p{i}.png", b""))
    marks = "filename,lx,ly,rx,ry,nx,ny,mlx,mly,mrx,mry\n"
    marks += "p0.png,48,48,80,48,64,64,50,88,78,88\n"
    marks += "p1.png,48,48,80,48,64,64,50,88\n"  # short row: line 3
    lm_path = write(tmp_path / "lm.csv", marks.encode())
    found, bad = read_landmarks(lm_path)
    listing = face_items(str(root), found, bad, str(lm_path))
    m = write_shards(listing, cfg(tmp_path / "o"), progress=False)
    assert m["num_samples"] == 1
    got = {(Path(r["source"]).name if "faces:" in r["source"] else r["source"].rsplit(":", 1)[1], r["reason"])
           for r in m["rejected"]}
    assert got == {("3", "malformed_row"), ("p1.png", "no_landmarks"), ("p2.png", "no_landmarks")}


def test_rosinality_lmdb_source(tmp_path):
    imgs = [face(i, 64) for i in range(4)]
    write_rosinality_lmdb(str(tmp_path / "db"), imgs, sizes=[32, 64])
    listing = lmdb_items(str(tmp_path / "db"))
    assert listing.description["size"] == 64 and len(listing.items) == 4
    m = write_shards(listing, cfg(tmp_path / "o"), progress=False)
    assert m["num_samples"] == 4
    assert [s["source"] for s in m["samples"]][1] == f"lmdb:{tmp_path / 'db'}#64-00001"
    with pytest.raises(DataError, match="stores sizes"):
        lmdb_items(str(tmp_path / "db"), size=128)


def test_jpeg_encoding_size_limits_and_upscaler_hook(char_folder, tmp_path):
    c = WriterConfig(out=str(tmp_path / "o"), image_size=128, workers=0, encoding="jpg",
                     shard_bytes=30_000, upscaler="tests.data_fixtures:double")
    m = write_shards(folder_items(str(char_folder)), c, progress=False)
    assert m["num_samples"] == 10 and all(s["bytes"] <= 30_000 + 10_240 for s in m["shards"])
    assert len(m["shards"]) > 1
    img = np.asarray(Image.open(io.BytesIO(next(iter(all_samples(tmp_path / "o").values()))["jpg"])))
    assert img.shape == (128, 128, 3) and img[0, 0, 0] > 200 and img[0, 0, 1] < 60  # the hook's marker


@pytest.mark.parametrize("shuffled", [False, True])
def test_interrupted_write_resumes_to_identical_output(char_folder, tmp_path, monkeypatch, shuffled):
    listing = folder_items(str(char_folder), "subfolder")
    if shuffled:  # the order is recomputed by the rerun: it must come out the same
        listing = shuffle_items(folder_items(str(char_folder), "subfolder"), 3)
        assert listing.items != folder_items(str(char_folder), "subfolder").items
    reference = write_shards(listing, cfg(tmp_path / "ref"), progress=False)
    calls = {"n": 0}
    real_add = shards_mod.ShardSink.add

    def crash_on_seventh(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("simulated kill in the middle of shard 1")
        return real_add(self, *a, **kw)

    monkeypatch.setattr(shards_mod.ShardSink, "add", crash_on_seventh)
    monkeypatch.setattr(shards_mod.ShardSink, "abandon", lambda self: None)  # a kill cleans nothing up
    with pytest.raises(KeyboardInterrupt):
        write_shards(listing, cfg(tmp_path / "out"), progress=False)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("shard-*.tar")) == ["shard-000000.tar"]
    assert list(out.glob("*.tmp-*")), "the killed run leaves its half-written shard under a temporary name"
    assert not (out / "manifest.json").exists()
    monkeypatch.undo()
    resumed = write_shards(listing, cfg(out), progress=False)
    assert not list(out.glob("*.tmp-*"))
    for key in ("samples", "shards", "rejected", "duplicates", "label_counts"):
        assert resumed[key] == reference[key]
    for name in ("shard-000000.tar", "shard-000001.tar", "shard-000002.tar"):
        assert (out / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    again = write_shards(listing, cfg(out), progress=False)  # complete: nothing rewritten
    assert again == resumed
    with pytest.raises(DataError, match="another input"):
        write_shards(listing, cfg(out, encoding="jpg"), progress=False)


def test_fsspec_memory_round_trip_in_and_out(tmp_path):
    fs = fsspec.filesystem("memory")
    for i in range(5):
        fs.pipe(f"/rt-in/x/{i}.png", png_bytes(face(80 + i)))
    m = write_shards(folder_items("memory://rt-in", "subfolder"), cfg("memory://rt-out"), progress=False)
    assert m["num_samples"] == 5 and m["label_counts"] == {"x": 5}
    assert fs.exists("/rt-out/manifest.json") and fs.exists("/rt-out/shard-000001.tar")
    assert not fs.glob("/rt-out/*.tmp-*") and not fs.exists("/rt-out/_progress")
    assert len(read_shard("memory://rt-out/shard-000000.tar")) == 4


def test_cli_runs_with_process_pool_and_reports(char_folder, tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "launch.make_shards", "--kind", "folder", "--input", str(char_folder),
                        "--labels", "subfolder", "--out", str(out), "--size", "32", "--workers", "2", "--quiet"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["samples"] == 10 and summary["labels"] == 2
    r = subprocess.run([sys.executable, "-m", "launch.make_shards", "--kind", "boxes", "--input", str(char_folder),
                        "--out", str(tmp_path / "x")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "needs --boxes" in r.stderr
    r = subprocess.run([sys.executable, "-m", "launch.make_shards", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "--kind" in r.stdout and "rosinality" in r.stdout


def test_finished_images_keep_their_bytes_and_others_are_reencoded(tmp_path):
    root = tmp_path / "ready"
    ready_jpg = jpeg_bytes(face(90, 32), quality=90)
    write(root / "a.jpg", ready_jpg)                      # RGB JPEG at the training size: kept
    write(root / "b.png", png_bytes(face(91, 48)))        # other size: resized and re-encoded
    write(root / "c.png", png_bytes(face(92, 32).convert("L")))  # grayscale: converted
    m = write_shards(folder_items(str(root)), cfg(tmp_path / "o", min_size=16), progress=False)
    samples = all_samples(tmp_path / "o")
    by_name = {Path(r["source"]).name: samples[r["key"]] for r in m["samples"]}
    assert by_name["a.jpg"] == {"jpg": ready_jpg, "cls": b"-1", "json": by_name["a.jpg"]["json"]}
    assert set(by_name["b.png"]) == {"png", "cls", "json"} and set(by_name["c.png"]) == {"png", "cls", "json"}
    assert Image.open(io.BytesIO(by_name["c.png"]["png"])).mode == "RGB"
    m2 = write_shards(folder_items(str(root)), cfg(tmp_path / "o2", min_size=16, keep_encoded=False),
                      progress=False)
    assert "png" in all_samples(tmp_path / "o2")[m2["samples"][0]["key"]]


def test_a_process_killed_by_one_input_rejects_only_that_input(tmp_path):
    root = tmp_path / "k"
    for i in range(5):
        face(500 + i, 48).save(write(root / f"{i}.png", b""))
    face(600, 33).save(write(root / "killer.png", b""))
    c = WriterConfig(out=str(tmp_path / "o"), image_size=64, min_size=16, workers=2,
                     upscaler="tests.data_fixtures:crash_on_33px")
    m = write_shards(folder_items(str(root)), c, progress=False)
    assert m["num_samples"] == 5
    assert [(Path(r["source"]).name, r["reason"]) for r in m["rejected"]] == [("killer.png", "crashed")]


def test_errors_beyond_the_checks_are_rejections_not_crashes(tmp_path):
    z = tmp_path / "bad.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("a/0.png", png_bytes(face(70)))
        zf.writestr("a/1.png", png_bytes(face(71)))
    raw = bytearray(z.read_bytes())
    offset = raw.find(b"IDAT", raw.find(b"a/1.png")) + 20
    raw[offset] ^= 0xFF  # a flipped byte inside the second member: bad CRC-32
    z.write_bytes(bytes(raw))
    m = write_shards(folder_items(str(z), "subfolder"), cfg(tmp_path / "o"), progress=False)
    assert m["num_samples"] == 1 and [r["reason"] for r in m["rejected"]] == ["unreadable"]
    assert "CRC" in m["rejected"][0]["detail"]
    root = tmp_path / "photos"
    face(1, 64).save(write(root / "p.png", b""))
    far = {"p.png": np.array([[5000, 5000], [5040, 5000], [5020, 5020], [5005, 5040], [5035, 5040]], float)}
    m = write_shards(face_items(str(root), far, [], "lm.csv"), cfg(tmp_path / "o2"), progress=False)
    assert m["num_samples"] == 0 and len(m["rejected"]) == 1  # landmarks far outside the photo
    assert m["rejected"][0]["reason"] in ("landmarks", "failed")


def test_bom_and_quoted_newlines_keep_csv_line_numbers(tmp_path):
    root, _ = webtoon_crawl(tmp_path)
    text = '\ufefffilename,x1,y1,x2,y2\n"titleA/ep1/\n001.png",1,2,3,4\ntitleA/ep1/001.png,1,2,x,4\n'
    path = write(tmp_path / "bom.csv", text.encode("utf-8"))
    listing = box_items(str(root), str(path), "title")
    malformed = [r["source"].rsplit(":", 1)[1] for r in listing.rejects if r["reason"] == "malformed_row"]
    assert malformed == ["4"]  # the header is recognised despite the BOM; the row after the quoted newline is line 4


def per_shard_labels(m: dict) -> list[set]:
    shards: list[set] = [set() for _ in m["shards"]]
    for rec in m["samples"]:
        shards[rec["shard"]].add(rec["label"])
    return shards


@pytest.fixture()
def four_characters(tmp_path) -> Path:
    root = tmp_path / "four"
    for c in range(4):
        for i in range(8):
            face(700 + 10 * c + i, 16).save(write(root / f"char{c}" / f"{i}.png", b""))
    return root


def shard_cli(src: Path, out: Path, *extra: str) -> int:
    return make_shards_cli.main(["--kind", "folder", "--input", str(src), "--labels", "subfolder", "--out", str(out),
                                 "--size", "16", "--min-size", "16", "--shard-samples", "8", "--workers", "0",
                                 "--quiet", *extra])


def test_make_shards_spreads_each_character_over_the_shards_unless_told_to_keep_order(four_characters, tmp_path):
    assert shard_cli(four_characters, tmp_path / "mixed") == 0
    mixed = json.loads((tmp_path / "mixed" / "manifest.json").read_text())
    assert len(mixed["shards"]) == 4 and mixed["label_counts"] == {f"char{c}": 8 for c in range(4)}
    assert all(len(labels) >= 3 for labels in per_shard_labels(mixed))  # in path order: one label each
    assert mixed["sources"][0]["order"] == "shuffled" and mixed["sources"][0]["order_seed"] == 0
    assert shard_cli(four_characters, tmp_path / "again") == 0  # the order is a function of inputs and seed
    assert json.loads((tmp_path / "again" / "manifest.json").read_text())["samples"] == mixed["samples"]
    # ... of the inputs relative to their folder: a copy elsewhere is written in the same order.
    copy = shutil.copytree(four_characters, tmp_path / "elsewhere" / "chars")
    assert shard_cli(copy, tmp_path / "copied") == 0
    rel = [(r["source"].split("/chars/")[-1], r["label"])
           for r in json.loads((tmp_path / "copied" / "manifest.json").read_text())["samples"]]
    assert rel == [(r["source"].split(f"{four_characters.name}/")[-1], r["label"]) for r in mixed["samples"]]
    assert shard_cli(four_characters, tmp_path / "seed1", "--order-seed", "1") == 0
    assert json.loads((tmp_path / "seed1" / "manifest.json").read_text())["samples"] != mixed["samples"]

    assert shard_cli(four_characters, tmp_path / "kept", "--keep-order") == 0
    kept = json.loads((tmp_path / "kept" / "manifest.json").read_text())
    assert per_shard_labels(kept) == [{f"char{c}"} for c in range(4)]
    sources = [r["source"] for r in kept["samples"]]
    assert sources == sorted(sources) and "order" not in kept["sources"][0]
    help_text = make_shards_cli.build_parser().format_help()
    assert "--keep-order" in help_text and "--order-seed" in help_text


def test_an_output_written_in_listing_order_is_recognised(four_characters, tmp_path, capsys):
    # Made before shuffling was the default (or with --keep-order): the default
    # command is another job there, and says how to resume or keep that output.
    assert shard_cli(four_characters, tmp_path / "old", "--keep-order") == 0
    assert shard_cli(four_characters, tmp_path / "old") == 2
    assert "add --keep-order" in capsys.readouterr().err
    assert shard_cli(four_characters, tmp_path / "old", "--keep-order") == 0
    assert "nothing to do" in capsys.readouterr().err
