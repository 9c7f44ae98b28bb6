"""launch.bundle and eval.bundle.Cartoonizer on the tiny networks of test_cartoonize."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from datasets.imageio import to_uint8
from eval.bundle import BundleError, Cartoonizer, photos_tensor, read_bundle
from launch import bundle as bundle_cli
from launch import cartoonize as cli
from trainer.model_io import UnsafeCheckpointError
from trainer.model_io.safe_pickle import torch_load


def _cartoonize(argv: list[str]) -> int:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ACCELERATE_USE_CPU", "1")
        return cli.main(argv)


def _pngs(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(folder / f"p{i}.png")) for i in range(4)])


@pytest.mark.parametrize("method", cli.METHODS)
def test_bundle_cartoons_equal_the_six_path_command(packed, method):
    got = packed["toon"].cartoonize(packed["photos"], "hero", method, batch_size=2)
    assert got.dtype == np.uint8 and np.array_equal(got, _pngs(packed["six"] / method))


def test_cartoonize_with_bundle_writes_the_same_pngs(packed, tmp_path, capsys):
    out = tmp_path / "out"
    assert _cartoonize(["--photos", str(packed["clean"]), "--character", "hero", "--bundle", str(packed["bundle"]),
                        "--out", str(out), "--batch", "2"]) == 0
    for method in cli.METHODS:
        assert np.array_equal(_pngs(out / method), _pngs(packed["six"] / method))
    assert json.loads((out / "report.json").read_text())["settings"]["iters"] == 2  # the bundle's passes
    assert _cartoonize(["--photos", str(packed["clean"]), "--character", "villain", "--bundle",
                        str(packed["bundle"]), "--out", str(out)]) == 2
    assert "no character 'villain' in the bundle; it holds: hero" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["--photos", "p", "--character", "hero", "--out", "o", "--bundle", "b", "--g-source", "g",
                  "--mix-index", "3"])
    assert e.value.code == 2
    assert "--bundle holds --g-source, --mix-index" in capsys.readouterr().err


def test_api_methods_batches_and_latents(packed):
    toon = packed["toon"]
    assert toon.characters == ["hero"] and toon.size == 32
    refs = toon.references("hero")
    assert refs.dtype == np.uint8 and refs.shape == (4, 64, 64, 3)  # 64 px references are not enlarged
    photos = packed["photos"]
    for method in cli.METHODS:
        one, w1 = toon.cartoonize(photos[0], "hero", method, return_latents=True)
        four, w4 = toon.cartoonize(photos, "hero", method, return_latents=True, batch_size=4)
        assert one.shape == (1, 32, 32, 3) and four.shape == (4, 32, 32, 3) and four.dtype == np.uint8
        assert w1.shape == (1, 8, 32) and w4.shape == (4, 8, 32)
        assert np.abs(one[0].astype(int) - four[0].astype(int)).max() <= 1
    # A PIL image and a float tensor at the encoder's size are the same photo.
    x = torch.from_numpy(np.asarray(Image.fromarray(photos[1]).resize((32, 32), Image.Resampling.LANCZOS),
                                    np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    a = toon.cartoonize(Image.fromarray(photos[1]), "hero")
    assert np.array_equal(a, toon.cartoonize(x, "hero"))
    with pytest.raises(KeyError, match="hero"):
        toon.cartoonize(photos[0], "villain")
    with pytest.raises(ValueError, match="method"):
        toon.cartoonize(photos[0], "hero", "sketch")
    # compare: one inversion for every method, the same cartoons, and the encoder's reconstruction.
    row = toon.compare(photos, "hero", batch_size=2)
    for method in cli.METHODS:
        assert np.array_equal(row[method], _pngs(packed["six"] / method))
    with torch.no_grad():  # the first batch of two, as compare computed it
        last = toon.encoder.invert(torch.stack([photos_tensor(p, 32)[0] for p in photos[:2]]), 2)[-1]
    assert np.array_equal(row["reconstruction"][:2], to_uint8(last.image))
    assert torch.equal(row["latents"][:2], last.latent) and row["latents"].shape == (4, 8, 32)


@pytest.fixture(scope="module")
def payload(packed) -> dict:
    return torch_load(packed["bundle"])


def _refusal(payload: dict, tmp_path: Path, change) -> tuple[str, Path]:
    """The message ``read_bundle`` refuses ``payload`` with after ``change``, and the file's path."""
    obj = copy.deepcopy(payload)
    change(obj)
    path = tmp_path / "changed.bundle"
    torch.save(obj, path)
    with pytest.raises(BundleError) as e:
        read_bundle(path)
    return str(e.value), path


def test_a_missing_part_a_newer_version_and_another_format_are_named(payload, tmp_path):
    for change, message in ((lambda o: o.pop("encoder_source"), "missing part(s): encoder_source"),
                            (lambda o: o.update(version=3), "bundle version 3 is newer than this code reads (version 2)"),
                            (lambda o: o.update(format="something.else"), "is not a toonmix bundle")):
        said, path = _refusal(payload, tmp_path, change)
        assert message in said and str(path) in said


def test_the_encoders_name_their_bundled_decoder_and_version_1_files_still_read(packed, payload, tmp_path):
    toon = packed["toon"]
    for key, name in (("encoder_source", "g_source"), ("encoder_target", "g_swap")):
        assert payload[key]["decoder_in_bundle"] == name
        assert not [k for k in payload[key]["state_dict"] if k.startswith("decoder.")]  # no second copy
    assert payload["version"] == 2
    # Version 1 kept each encoder's decoder weights in its dict: read as before, the same cartoons.
    old = copy.deepcopy(payload)
    old["version"] = 1
    for key, G in (("encoder_source", toon.bundle.g_source), ("encoder_target", toon.bundle.G_swap)):
        del old[key]["decoder_in_bundle"]
        old[key]["state_dict"].update({f"decoder.{k}": v for k, v in G.state_dict().items() if k != "w_avg"})
    torch.save(old, tmp_path / "v1.bundle")
    v1 = Cartoonizer.load(tmp_path / "v1.bundle")
    assert np.array_equal(v1.cartoonize(packed["photos"], "hero"), toon.cartoonize(packed["photos"], "hero"))
    # A decoder that is not the bundled generator (another G, a fine-tuned copy) stays in the file.
    from eval.bundle import _shared_decoder

    other = copy.deepcopy(old["encoder_source"])
    other["state_dict"]["decoder.conv1.conv.weight"] += 0.01
    kept = _shared_decoder(other, toon.bundle.g_source, "g_source")
    assert "decoder_in_bundle" not in kept and torch.equal(kept["state_dict"]["decoder.conv1.conv.weight"],
                                                             other["state_dict"]["decoder.conv1.conv.weight"])
    said, path = _refusal(payload, tmp_path, lambda o: o["encoder_source"].update(decoder_in_bundle="g_other"))
    assert "its decoder is 'g_other', which is not a part of this bundle" in said and str(path) in said


def test_a_part_that_does_not_build_and_a_table_of_another_g_swap_are_named(payload, tmp_path):
    for change, message in ((lambda o: o["g_target"]["g_ema"].pop("conv1.conv.weight"), "part 'g_target' does not build"),
                            (lambda o: o.update(swap_res=16), "does not match the bundled G_swap")):
        said, path = _refusal(payload, tmp_path, change)
        assert message in said and str(path) in said


MARKER: list[str] = []


def _mark(text: str) -> None:
    MARKER.append(text)


class Payload:
    """Runs ``_mark`` when unpickled by a loader that builds arbitrary objects."""

    def __reduce__(self):
        return _mark, ("ran",)


def test_a_foreign_pickle_is_refused_without_running_it(tmp_path):
    path = tmp_path / "evil.bundle"
    torch.save({"format": "toonmix.bundle", "version": 1, "g_source": Payload()}, path)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load a Python object"):
        Cartoonizer.load(path)
    assert MARKER == []


def test_run_dir_layout_and_explicit_flags_override_it(packed, tmp_path, capsys):
    run = tmp_path / "run"
    for rel, src in (("gan_target/network.pt", packed["g_tgt"]), ("encoder_source/encoder-restyle.pt", packed["enc_s"]),
                     ("lut.pt", packed["six"] / "lut.pt")):
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, run / rel)
    (run / "encoder_target").mkdir()
    (run / "encoder_target" / "config.yaml").write_text(yaml.safe_dump(
        {"decoder": {"source": packed["g_src"], "target_mode": "swap", "swap_res": 32}}))
    (run / "stages").mkdir()
    (run / "stages" / "cartoonize.json").write_text(json.dumps(
        {"commands": ["accelerate launch -m launch.cartoonize --photos x --mix-index 5 --iters 2 --k 4"]}))
    out = tmp_path / "demo.bundle"
    assert bundle_cli.main(["--out", str(out), "--run-dir", str(run), "--thumbs", "0"]) == 0
    assert "wrote" in capsys.readouterr().out
    b = read_bundle(out)
    assert (b.mix.m, b.iters, b.mix.swap_resolution, b.encoder_target, b.references) == (5, 2, 32, None, {})
    args = bundle_cli.build_parser().parse_args(["--out", "x", "--run-dir", str(run), "--mix-index", "3"])
    assert bundle_cli.resolve(args)["mix_index"] == 3
    assert bundle_cli.main(["--out", str(out), "--run-dir", str(run), "--characters", "hero,nobody"]) == 2
    assert "no character(s) nobody; the table holds: hero" in capsys.readouterr().err
