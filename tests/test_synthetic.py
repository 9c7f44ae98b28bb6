"""The demo's procedural two-domain faces: deterministic, resumable, and two domains apart."""

from __future__ import annotations

import json

import numpy as np

from datasets.loader import LoaderConfig, ShardLoader
from datasets.synthetic import (cartoon_face, cartoon_geometry, character_traits, photo_face, photo_geometry,
                                 read_labels)
from launch import make_demo_data, make_shards


def flat_fraction(img) -> float:
    """Share of pixels equal to their right neighbour: flat colour regions."""
    a = np.asarray(img, np.int16)
    return float((np.abs(a[:, 1:] - a[:, :-1]).max(axis=2) == 0).mean())


def test_same_seed_same_images_and_characters_keep_their_traits():
    rng = lambda i: np.random.default_rng(i)  # noqa: E731
    assert np.array_equal(np.asarray(photo_face(rng(1), 48)), np.asarray(photo_face(rng(1), 48)))
    assert not np.array_equal(np.asarray(photo_face(rng(1), 48)), np.asarray(photo_face(rng(2), 48)))
    traits = [character_traits(0, c) for c in range(4)]
    assert traits == [character_traits(0, c) for c in range(4)] and len(set(traits)) == 4
    # Images of one character share their colours more than two characters do (their mean colour
    # does not: the face's size, and so the share of background, varies by +-20 %).
    colours = {c: [colour_set(cartoon_face(traits[c], rng(i), 48)) for i in range(6)] for c in range(4)}
    within = np.mean([np.abs(a - b).sum() for c in colours for a in colours[c] for b in colours[c]])
    between = np.mean([np.abs(a - b).sum() for c in colours for d in colours if c != d
                       for a in colours[c] for b in colours[d]])
    assert between > 2.5 * within


def colour_set(img) -> np.ndarray:
    """Which of 64 coarse colours cover more than 1 % of the image."""
    a = np.asarray(img) // 64
    hist = np.bincount((a[..., 0] * 16 + a[..., 1] * 4 + a[..., 2]).ravel(), minlength=64)
    return (hist > 0.01 * hist.sum()).astype(float)


def test_geometry_is_drawn_first_spreads_wide_and_keeps_the_face_in_frame():
    rng = lambda i: np.random.default_rng([0, 2, i])  # noqa: E731
    geos = [photo_geometry(rng(i)) for i in range(300)]
    geos += [cartoon_geometry(character_traits(0, i % 4), rng(i)) for i in range(300)]
    cx, cy, w, h = (np.array([getattr(g, k) for g in geos]) for k in ("cx", "cy", "width", "height"))
    assert cx.min() < 0.40 and cx.max() > 0.60 and cy.min() < 0.44 and cy.max() > 0.60  # +-4 px at 32 px
    assert 0.08 < w.std() / w.mean() < 0.16 and w.min() < 0.5 < 0.66 < w.max()  # +-20 %, uniform
    assert (cx - w / 2 > 0).all() and (cx + w / 2 < 1).all() and (cy - h / 2 > 0).all() and (cy + h / 2 < 1).all()


def test_cartoon_is_drawn_where_its_geometry_says():
    for c in range(4):
        for i in range(3):
            t, size = character_traits(0, c), 64
            g = cartoon_geometry(t, np.random.default_rng(i))
            a = np.asarray(cartoon_face(t, np.random.default_rng(i), size), int)
            skin = np.abs(a - np.array(t.skin)).max(axis=2) < 12  # the face's fill colour
            cols, rows = np.flatnonzero(skin.any(0)), np.flatnonzero(skin.any(1))
            assert abs((cols[0] + cols[-1] + 1) / 2 - g.cx * size) < 1
            # Narrower by the black outline (and glasses' rims) only; the chin is the lowest skin.
            assert 0.8 * g.width * size < cols[-1] + 1 - cols[0] < g.width * size + 0.5
            assert abs(rows[-1] + 1 - (g.cy + g.height / 2) * size) < 3


def test_domains_differ_in_flat_colour():
    photos = [flat_fraction(photo_face(np.random.default_rng(i), 64)) for i in range(4)]
    cartoons = [flat_fraction(cartoon_face(character_traits(0, i), np.random.default_rng(i), 64)) for i in range(4)]
    assert max(photos) < 0.1 < 0.4 < min(cartoons)  # sensor noise vs flat fills


def test_cli_writes_resumes_and_feeds_make_shards(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["--out", str(out), "--photos", "6", "--test-photos", "2", "--characters", "3", "--per-character", "4",
            "--size", "32"]
    assert make_demo_data.main(argv) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["images"] == first["written"] == 6 + 2 + 3 * 4
    labels = read_labels(out)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert sorted(labels["images"]) == files and labels["characters"] == ["character0", "character1", "character2"]
    test = labels["images"]["photos/test/00001.png"]  # test photos are drawn from index 1_000_001
    assert test == {"domain": "photo", **vars(photo_geometry(np.random.default_rng([0, 2, 1_000_001])))}
    char = labels["images"]["characters/character2/00003.png"]
    again = cartoon_geometry(character_traits(0, 2), np.random.default_rng([0, 3, 2, 3]))
    assert char == {"domain": "character", "character": 2, **vars(again)}
    victim = out / "characters" / "character1" / "00002.png"
    before, labels_before = victim.read_bytes(), (out / "labels.json").read_bytes()
    victim.unlink()
    (out / "labels.json").unlink()
    assert make_demo_data.main(argv) == 0  # resumes: draws the missing image only, labels come back whole
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["written"] == 1
    assert victim.read_bytes() == before and (out / "labels.json").read_bytes() == labels_before
    assert make_shards.main(["--kind", "folder", "--input", str(out / "characters"), "--labels", "subfolder",
                             "--out", str(tmp_path / "shards"), "--size", "32", "--min-size", "32"]) == 0
    loader = ShardLoader(LoaderConfig(str(tmp_path / "shards"), batch_size=12, workers=0), 0, 1, "eval")
    assert loader.labels == ("character0", "character1", "character2")
    assert sorted(next(iter(loader)).labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    assert make_demo_data.main(["--out", str(out), "--size", "8"]) == 2
