"""The demo's probes: trained on drawn images they recognise characters and face geometry,
reject what is not a character, and launch.probe turns a demo run folder into probe.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.synthetic import DemoData, cartoon_face, character_traits, read_labels, write_demo_data
from eval.probe import (GEOMETRY, NONE, PHOTO, THRESHOLDS, agreement, fit_character_probe, fit_geometry_probe,
                        judge, load_images, sanity_images, shares)
from launch import probe as probe_cmd
from trainer.model_io import save_checkpoint
from trainer.networks import Generator, GeneratorConfig

SIZE, CHARS = 32, 3


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    """A small drawn data set (as launch.make_demo_data writes it) and its images at 32 px."""
    root = tmp_path_factory.mktemp("probe") / "data"
    write_demo_data(DemoData(str(root), photos=32, test_photos=8, characters=CHARS, per_character=16, size=SIZE))
    labels = read_labels(root)["images"]
    parts = ("characters", "photos/train", "photos/test")
    keys = {part: sorted(k for k in labels if k.startswith(part)) for part in parts}
    d = {"root": root, "labels": labels}
    for part, ks in keys.items():
        d[part] = load_images([root / k for k in ks])
        d[part + "/geometry"] = np.array([[labels[k][g] for g in GEOMETRY] for k in ks])
        d[part + "/keys"] = ks
    d["characters/labels"] = np.array([labels[k]["character"] for k in keys["characters"]])
    return d


def fresh_characters(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images of the same characters the data set never held: (images, characters, geometry)."""
    from datasets.synthetic import cartoon_geometry

    imgs, chars, geo = [], [], []
    for c in range(CHARS):
        t = character_traits(0, c)
        for i in range(n):
            rng = [0, 99, c, i]
            imgs.append(np.asarray(cartoon_face(t, np.random.default_rng(rng), SIZE)))
            g = cartoon_geometry(t, np.random.default_rng(rng))
            chars.append(c)
            geo.append([g.cx, g.cy, g.width])
    return np.stack(imgs), np.array(chars), np.array(geo)


def test_character_probe_recognises_new_drawings_and_rejects_photos_and_noise(demo):
    names = [f"character{c}" for c in range(CHARS)]
    cp, report = fit_character_probe(demo["characters"], demo["characters/labels"], names, demo["photos/train"])
    assert report["character_accuracy"] >= 0.95 and report["held_out_photos_as_photo"] >= 0.9
    imgs, chars, _ = fresh_characters(6)
    assert (cp.predict(imgs) == chars).mean() >= 0.95
    photos = shares(cp, cp.predict(demo["photos/test"]))
    assert photos["character_share"] == 0 and photos["photo_share"] >= 0.75
    odd = sanity_images(32)
    assert (cp.predict(odd["noise"]) == NONE).all()
    assert shares(cp, cp.predict(odd["blobs"]))["character_share"] == 0
    # Without a photo class, photos are rejected by distance alone.
    bare, _ = fit_character_probe(demo["characters"], demo["characters/labels"], names)
    assert PHOTO not in bare.classes and shares(bare, bare.predict(demo["photos/test"]))["character_share"] <= 0.125


def test_geometry_probe_measures_where_the_face_is(demo):
    gp, report = fit_geometry_probe(demo["characters"], demo["characters/geometry"])
    assert report["held_out_images"] == 12 and np.isfinite(report["centre_mae_px"])
    imgs, _, geo = fresh_characters(8)
    found = agreement(gp.predict(imgs), geo)
    assert found["centre_mae_px"] < 1.5 and found["cx_corr"] > 0.8 and found["width_corr"] > 0.5
    assert found["shuffled_centre_mae_px"] > 2 * found["centre_mae_px"]
    # A cartoon placed at random scores as a method that ignores the photo: no gain over shuffling.
    shuffled = agreement(gp.predict(imgs), geo[np.random.default_rng(0).permutation(len(geo))])
    assert shuffled["centre_gain"] < 1.6 < found["centre_gain"]


def test_judge_marks_each_threshold_and_missing_values():
    checks = {c["key"]: c for c in judge({"probe": {"character_accuracy": 0.5}, "target_g": {"character_share": 0.9}})}
    assert set(checks) == set(THRESHOLDS)
    assert checks["probe.character_accuracy"]["passed"] is False
    assert checks["target_g.character_share"]["passed"] is True
    assert checks["cartoons.cdsm.centre_mae_px"]["passed"] is None  # not measured


def tiny_generator(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    G = Generator(GeneratorConfig(size=SIZE, style_dim=32, n_mlp=2, channel_multiplier=0.0625, channel_max=32))
    save_checkpoint(path, "rosinality", g_ema=G)


def fake_run(tmp_path: Path, demo: dict) -> dict[str, str]:
    """A demo run folder's probe inputs: generators, and cartoons laid out as launch.cartoonize
    writes them. CDSM's stand-in draws the character where the photo's face is; W+ mixing's
    draws it at another photo's place; toonify's is the photo itself."""
    from datasets.synthetic import Geometry

    tiny_generator(tmp_path / "gs.pt", 0)
    tiny_generator(tmp_path / "gt.pt", 1)
    keys, geo = demo["photos/test/keys"], demo["photos/test/geometry"]
    t = character_traits(0, 1)
    out = tmp_path / "cartoons" / "character1"
    for i, key in enumerate(keys):
        stem = Path(key).stem
        for method, g in (("cdsm", geo[i]), ("wplus", geo[(i + 3) % len(keys)])):
            place = Geometry(g[0], g[1], g[2], g[2] * t.aspect)
            (out / method).mkdir(parents=True, exist_ok=True)
            cartoon_face(t, np.random.default_rng(i), SIZE, place).save(out / method / f"{stem}.png")
        (out / "toonify").mkdir(parents=True, exist_ok=True)
        Image.fromarray(demo["photos/test"][i]).save(out / "toonify" / f"{stem}.png")
    (out / "report.json").write_text("{}")  # what else cartoonize leaves there is not read
    return {"--data": str(demo["root"]), "--cartoons": str(tmp_path / "cartoons"),
            "--g-source": str(tmp_path / "gs.pt"), "--g-target": str(tmp_path / "gt.pt"),
            "--out": str(tmp_path / "metrics" / "probe.json")}


def _finite(obj) -> bool:
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_finite(v) for v in obj)
    return not isinstance(obj, float) or math.isfinite(obj)


def test_launch_probe_writes_every_number_of_a_run_folder(tmp_path, demo, capsys):
    args = fake_run(tmp_path, demo)
    assert probe_cmd.main([*sum(args.items(), ()), "--samples", "16"]) == 0
    assert capsys.readouterr().out.count("[probe] ") >= 6  # a line per step, then the verdict
    m = json.loads(Path(args["--out"]).read_text())
    assert _finite({k: v for k, v in m.items() if k != "checks"})
    for key in ("character_share", "per_character", "photo_share", "none_share", "coverage"):
        assert key in m["target_g"] and key in m["source_g"]
    assert m["target_g"]["images"] == 16 and set(m["target_g"]["per_character"]) == {"character0", "character1",
                                                                                        "character2"}
    cdsm, wplus, toonify = (m["cartoons"][k] for k in ("cdsm", "wplus", "toonify"))
    assert cdsm["images"] == cdsm["pairs"] == 8 and cdsm["requested_share"] >= 0.875
    assert toonify["requested_share"] == 0 and toonify["photo_share"] >= 0.75  # photos are not cartoons
    assert cdsm["centre_mae_px"] < 1.5 < wplus["centre_mae_px"] and cdsm["centre_gain"] > 2
    assert m["probe"]["noise_as_character"] == 0 and m["probe"]["photos_as_character"] == 0
    checks = {c["key"]: c for c in m["checks"]}
    assert set(checks) == set(THRESHOLDS) and all(c["passed"] is not None for c in checks.values())
    for key in ("probe.character_accuracy", "cartoons.cdsm.requested_share", "cartoons.cdsm.centre_gain"):
        assert checks[key]["passed"], checks[key]


def test_launch_probe_names_a_missing_input_and_exits_2(tmp_path, demo, capsys):
    args = fake_run(tmp_path, demo)
    args["--g-target"] = str(tmp_path / "nope.pt")
    assert probe_cmd.main(list(sum(args.items(), ()))) == 2
    assert "nope.pt" in capsys.readouterr().err
    args["--g-target"], args["--cartoons"] = str(tmp_path / "gt.pt"), str(tmp_path / "gone")
    assert probe_cmd.main(list(sum(args.items(), ()))) == 2
    assert "gone" in capsys.readouterr().err and not Path(args["--out"]).exists()
    args["--cartoons"] = str(tmp_path / "cartoons")
    stranger = tmp_path / "cartoons" / "stranger" / "cdsm"
    stranger.mkdir(parents=True)
    Image.fromarray(demo["characters"][0]).save(stranger / "00000.png")
    assert probe_cmd.main(list(sum(args.items(), ()))) == 2
    assert "'stranger' is not a character of the data" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        probe_cmd.main(["--help"])
    assert e.value.code == 0
