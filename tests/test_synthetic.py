"""The demo's procedural two-domain faces: deterministic, resumable, and two domains apart."""

from __future__ import annotations

import json

import numpy as np

from datasets.loader import LoaderConfig, ShardLoader
from datasets.synthetic import cartoon_face, character_traits, photo_face
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
    # Images of one character are closer to each other than to another character's.
    means = {c: [np.asarray(cartoon_face(traits[c], rng(i), 48), float).mean((0, 1)) for i in range(6)]
             for c in range(4)}
    within = np.mean([np.linalg.norm(a - b) for c in means for a in means[c] for b in means[c]])
    between = np.mean([np.linalg.norm(np.mean(means[c], 0) - np.mean(means[d], 0)) for c in means for d in means if c != d])
    assert between > 2 * within


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
    victim = out / "characters" / "character1" / "00002.png"
    before = victim.read_bytes()
    victim.unlink()
    assert make_demo_data.main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["written"] == 1
    assert victim.read_bytes() == before
    assert make_shards.main(["--kind", "folder", "--input", str(out / "characters"), "--labels", "subfolder",
                             "--out", str(tmp_path / "shards"), "--size", "32", "--min-size", "32"]) == 0
    loader = ShardLoader(LoaderConfig(str(tmp_path / "shards"), batch_size=12, workers=0), 0, 1, "eval")
    assert loader.labels == ("character0", "character1", "character2")
    assert sorted(next(iter(loader)).labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    assert make_demo_data.main(["--out", str(out), "--size", "8"]) == 2
