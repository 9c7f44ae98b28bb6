"""ReStyle files: exports ReStyle's code cannot build are marked, car-layout files are refused,
launch.invert resizes as ReStyle does and reports slow progress readably."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from eval.encoder_metrics import rate_text
from launch import invert as invert_cli
from trainer.encoder import formats
from trainer.encoder.data import ImageSource
from trainer.encoder.formats import (
    NOT_BUILDABLE,
    check_dataset_type,
    load_restyle,
    restyle_build_problems,
    restyle_dict,
    save_restyle,
)
from trainer.model_io import CheckpointError
from trainer.networks import Generator, GeneratorConfig
from trainer.networks.encoders import Encoder, EncoderConfig
from trainer.networks.restyle import ReStyle

TINY_G = {"size": 32, "style_dim": 32, "n_mlp": 2, "channel_multiplier": 0.0625, "channel_max": 32}
TINY_ENC = {"n_styles": 8, "style_dim": 32, "input_size": 32, "width": 0.125, "units": [1, 1, 1, 1]}


@pytest.fixture(scope="module")
def net() -> ReStyle:
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(**TINY_G)).eval()
    # a random latent_avg: update_w_avg's thousands of mapping passes are not what these tests check
    return ReStyle(Encoder(EncoderConfig(**TINY_ENC)), G, 0.1 * torch.randn(G.n_latent, G.style_dim)).eval()


def textured_image(h: int = 48, w: int = 40) -> np.ndarray:
    """Edges and noise: filters of different widths give visibly different pixels."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([(xx * 11) % 256, (yy * 7) % 256, ((xx + yy) % 8 < 4) * 255], -1).astype(np.float64)
    return np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------
# 1. Exports ReStyle's own code cannot build.

def test_tiny_export_warns_and_records_why_restyle_cannot_build_it(net, tmp_path):
    with pytest.warns(UserWarning, match="ReStyle's own code cannot build this model") as caught:
        path = save_restyle(tmp_path / "e.pt", net, {"n_iters_per_batch": 5})
    message = str(caught[0].message)
    assert "body width 0.125" in message and "do not ship it as a ReStyle model" in message
    reasons = torch.load(path, weights_only=True)["opts"][NOT_BUILDABLE]
    assert any("body width 0.125, units [1, 1, 1, 1]" in r for r in reasons)
    assert any("encoder input 32px" in r for r in reasons)
    assert any("generator style_dim 32" in r for r in reasons) and any("generator n_mlp 2" in r for r in reasons)
    back, opts = load_restyle(path)  # toonmix itself still loads it
    assert opts[NOT_BUILDABLE] == reasons
    for k, v in net.state_dict().items():
        if k != "decoder.w_avg":  # the fixture's generator never computed one; loading takes latent_avg's
            assert torch.equal(back.state_dict()[k], v), k


def test_public_layout_has_no_build_problems_and_each_difference_is_named():
    assert restyle_build_problems(EncoderConfig(), GeneratorConfig(size=1024)) == []
    assert restyle_build_problems(EncoderConfig(backbone="resnet34", n_styles=14), GeneratorConfig(size=256)) == []
    cases = [({"width": 0.5}, {}, "ir_se50 body width 0.5"),
             ({"units": [3, 4, 6, 3]}, {}, "units [3, 4, 6, 3]"),
             ({"input_size": 128}, {}, "encoder input 128px"),
             ({"input_nc": 3}, {}, "encoder input_nc 3"),
             ({"style_dim": 256}, {"style_dim": 256}, "generator style_dim 256"),
             ({}, {"n_mlp": 4}, "generator n_mlp 4"),
             ({}, {"channel_multiplier": 1.0}, "generator channel_multiplier 1"),
             ({}, {"channel_max": 1024}, "generator channel_max 1024"),
             ({}, {"blur_kernel": [1, 2, 1]}, "blur_kernel of 3 taps")]
    for enc, dec, expect in cases:
        found = restyle_build_problems(EncoderConfig(**enc), GeneratorConfig(size=1024, **dec))
        assert len(found) == 1 and expect in found[0], (enc, dec, found)


def test_a_buildable_export_carries_no_note_and_no_stale_one(net, tmp_path, monkeypatch, recwarn):
    stale = {NOT_BUILDABLE: ["from another file"]}
    assert restyle_dict(net, stale)["opts"][NOT_BUILDABLE] != ["from another file"]
    # The verdict for a public-layout network, without building one (hundreds of MB).
    monkeypatch.setattr(formats, "restyle_build_problems", lambda enc, dec: [])
    assert NOT_BUILDABLE not in restyle_dict(net, stale)["opts"]
    save_restyle(tmp_path / "e.pt", net)
    assert not [w for w in recwarn if "ReStyle" in str(w.message)]


# ----------------------------------------------------------------------------
# 2. dataset_type.

def test_car_models_are_refused_naming_dataset_type_and_the_supported_ones(net, tmp_path, capsys):
    torch.save(restyle_dict(net, {"dataset_type": "cars_encode"}), tmp_path / "cars.pt")
    with pytest.raises(CheckpointError, match="dataset_type 'cars_encode' is not supported") as e:
        load_restyle(tmp_path / "cars.pt")
    assert "192x256" in str(e.value) and "ffhq_encode" in str(e.value)
    with pytest.raises(CheckpointError, match="cars_hypernet"):
        check_dataset_type({"dataset_type": "cars_hypernet"}, "x.pt")
    for kind in ("ffhq_encode", "church_encode", "toonify", "webtoon_encode"):  # square, or a fork's own
        check_dataset_type({"dataset_type": kind}, "x.pt")
    check_dataset_type({}, "x.pt")
    torch.save(restyle_dict(net, {"dataset_type": "church_encode"}), tmp_path / "church.pt")
    assert load_restyle(tmp_path / "church.pt")[1]["dataset_type"] == "church_encode"
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(textured_image()).save(photos / "a.png")
    assert invert_cli.main(["--encoder", str(tmp_path / "cars.pt"), "--images", str(photos),
                            "--out", str(tmp_path / "lat.npz"), "--device", "cpu"]) == 2
    assert "dataset_type 'cars_encode'" in capsys.readouterr().err
    assert not (tmp_path / "lat.npz").exists()


# ----------------------------------------------------------------------------
# 3. Resizing as ReStyle does.

def test_bilinear_resize_is_pils_bilinear_and_differs_from_lanczos(tmp_path):
    img = textured_image()
    (tmp_path / "im").mkdir()
    Image.fromarray(img).save(tmp_path / "im" / "a.png")

    def read(resample: str) -> torch.Tensor:
        return torch.cat([x for _, x in ImageSource(str(tmp_path / "im"), 32, resample=resample).batches()])

    def pil(flt) -> torch.Tensor:
        arr = np.array(Image.fromarray(img).resize((32, 32), flt), dtype=np.uint8)
        return torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 127.5 - 1

    assert torch.equal(read("bilinear"), pil(Image.BILINEAR))
    assert torch.equal(read("lanczos"), pil(Image.LANCZOS))
    assert (read("bilinear") - read("lanczos")).abs().max() > 2 / 127.5


def test_invert_resizes_image_files_with_bilinear_by_default(net, tmp_path):
    enc = tmp_path / "e.pt"
    torch.save(restyle_dict(net), enc)
    img = textured_image()
    (tmp_path / "im").mkdir()
    Image.fromarray(img).save(tmp_path / "im" / "a.png")
    parser = invert_cli.build_parser()
    assert parser.parse_args(["--encoder", "e", "--images", "i", "--out", "o"]).resize == "bilinear"
    assert parser.parse_args(["--encoder", "e", "--images", "i", "--out", "o", "--resize", "lanczos"]).resize == "lanczos"
    out = tmp_path / "lat.npz"
    assert invert_cli.main(["--encoder", str(enc), "--images", str(tmp_path / "im"), "--out", str(out),
                            "--iters", "1", "--device", "cpu"]) == 0
    got = np.load(out)["latents"][0, 0]

    def latent(flt) -> np.ndarray:
        arr = np.array(Image.fromarray(img).resize((32, 32), flt), dtype=np.uint8)
        x = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 127.5 - 1
        return net.invert(x, 1)[0].latent[0].numpy()

    np.testing.assert_allclose(got, latent(Image.BILINEAR), atol=1e-5)
    assert not np.allclose(got, latent(Image.LANCZOS), atol=1e-5)


# ----------------------------------------------------------------------------
# 4. Progress of slow inversions.

def test_invert_and_eval_encoder_progress_shows_seconds_per_image_below_one_image_per_second():
    assert rate_text(10, 2.0) == "5.0 img/s"
    assert rate_text(3, 3.0) == "1.0 img/s"
    assert rate_text(2, 7.0) == "3.5 s/img"
    assert rate_text(1, 42.0) == "42.0 s/img"
    assert rate_text(0, 5.0) == "0 images in 5.0 s"
