"""Webtoon face crop, FFHQ alignment and landmark files, on images made here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from datasets.errors import DataError, Rejected
from datasets.faces import (
    _gaussian_blur,
    align_ffhq,
    crop_webtoon_face,
    ffhq_quad,
    read_landmarks,
    square_box,
)

GREY = (128, 128, 128)


def page(width: int = 800, height: int = 1200, colour=GREY) -> Image.Image:
    return Image.new("RGB", (width, height), colour)


def paint(img: Image.Image, x0: int, y0: int, x1: int, y1: int, colour) -> None:
    """Fills pixels x0 <= x < x1, y0 <= y < y1."""
    img.paste(Image.new("RGB", (x1 - x0, y1 - y0), colour), (x0, y0))


def reason(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.reason


# ---------------------------------------------------------------- webtoon crop


@pytest.mark.parametrize(
    "box, expand, shift, expected",
    [
        # w = h = 100: side 180, centre (350, 450 + 20).
        ((300, 400, 400, 500), 1.8, 0.2, (260, 380, 440, 560)),
        # w 100, h 120: side 216, centre (60, 80 + 24).
        ((10, 20, 110, 140), 1.8, 0.2, (-48, -4, 168, 212)),
        # w 50, h 40: side 100, centre (25, 20 + 20).
        ((0, 0, 50, 40), 2.0, 0.5, (-25, -10, 75, 90)),
    ],
)
def test_square_box_geometry(box, expand, shift, expected):
    assert square_box(box, expand, shift) == pytest.approx(expected)


def test_crop_places_markers_where_the_geometry_says():
    img = page()
    box = (300, 400, 400, 500)  # window (260, 380, 440, 560), side 180
    paint(img, 270, 390, 280, 400, (255, 0, 0))
    paint(img, 345, 445, 355, 455, (0, 0, 255))
    paint(img, 430, 550, 440, 560, (0, 255, 0))
    crop = crop_webtoon_face(img, box)
    assert crop.size == (180, 180) and crop.mode == "RGB"
    a = np.asarray(crop)
    assert (a[10:20, 10:20] == (255, 0, 0)).all()
    assert (a[65:75, 85:95] == (0, 0, 255)).all()
    assert (a[170:180, 170:180] == (0, 255, 0)).all()
    # Nothing else is coloured: the markers did not land anywhere else.
    assert (a != GREY).any(axis=2).sum() == 3 * 100


def test_crop_side_is_rounded_expanded_long_edge():
    box = (300.4, 400.2, 399.6, 500.3)  # w 99.2, h 100.1 -> side 180.18
    crop = crop_webtoon_face(page(), box)
    assert crop.size == (180, 180)
    crop = crop_webtoon_face(page(), (300, 400, 400, 490), expand=1.5)
    assert crop.size == (150, 150)


def test_crop_of_grey_page_is_rgb():
    crop = crop_webtoon_face(page().convert("L"), (300, 400, 400, 500))
    assert crop.mode == "RGB" and (np.asarray(crop) == 128).all()


@pytest.mark.parametrize("box", [(100, 100, 200, 250), (100, 100, 250, 200)])
def test_reject_aspect(box):
    with pytest.raises(Rejected) as e:
        crop_webtoon_face(page(), box)
    assert reason(e) == "aspect"


def test_aspect_at_the_limit_passes():
    assert crop_webtoon_face(page(), (300, 400, 430, 500)).size == (234, 234)


def test_reject_too_small():
    with pytest.raises(Rejected) as e:
        crop_webtoon_face(page(), (300, 400, 340, 440))
    assert reason(e) == "too_small"
    assert crop_webtoon_face(page(), (300, 400, 340, 440), min_size=40).size == (72, 72)


@pytest.mark.parametrize(
    "box",
    [
        (900, 100, 1000, 200),  # right of an 800-wide page
        (-200, 100, -100, 200),
        (100, 1200, 200, 1300),  # below
        (100, 100, 100, 200),  # zero width
        (100, 200, 200, 100),  # y2 < y1
        (float("nan"), 100, 200, 200),
    ],
)
def test_reject_box_outside(box):
    with pytest.raises(Rejected) as e:
        crop_webtoon_face(page(), box)
    assert reason(e) == "box_outside"


def test_crop_slightly_outside_passes_with_white_padding():
    # Window left edge at x = -10: 10 of 180 columns (5.6%) are off the page.
    crop = np.asarray(crop_webtoon_face(page(), (30, 500, 130, 600)))
    assert crop.shape == (180, 180, 3)
    assert (crop[:, :10] == 255).all()
    assert (crop[:, 10:] == 128).all()
    # Top edge at y = -10 (window top = y1 - 20).
    crop = np.asarray(crop_webtoon_face(page(), (300, 10, 400, 110)))
    assert (crop[:10] == 255).all() and (crop[10:] == 128).all()


@pytest.mark.parametrize(
    "box",
    [
        (20, 500, 120, 600),  # 20 columns off the page: 11.1%
        (30, 10, 130, 110),  # 10 columns and 10 rows: 3500 / 32400 = 10.8%
        (700, 1100, 790, 1190),  # off the bottom-right corner
    ],
)
def test_reject_blank_border_outside_page(box):
    with pytest.raises(Rejected) as e:
        crop_webtoon_face(page(), box)
    assert reason(e) == "blank_border"


def test_white_gutter_on_the_crop_edge_counts_as_blank():
    img = page()
    paint(img, 0, 380, 800, 400, (250, 250, 250))  # the crop's top 20 rows
    with pytest.raises(Rejected) as e:
        crop_webtoon_face(img, (300, 400, 400, 500))
    assert reason(e) == "blank_border"
    # Only pixels off the page count when the tolerance is off.
    assert crop_webtoon_face(img, (300, 400, 400, 500), blank_tol=None).size == (180, 180)
    # A white more than blank_tol away from pure white is content.
    assert crop_webtoon_face(img, (300, 400, 400, 500), blank_tol=2).size == (180, 180)


def test_white_band_inside_the_crop_is_not_blank():
    img = page()
    paint(img, 0, 460, 800, 480, (255, 255, 255))  # crop rows 80..99
    crop = np.asarray(crop_webtoon_face(img, (300, 400, 400, 500)))
    assert (crop[80:100] == 255).all() and (crop[:80] == 128).all()


# ------------------------------------------------------------- FFHQ alignment


def rotate(points: np.ndarray, degrees: float, about) -> np.ndarray:
    t = math.radians(degrees)
    r = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    about = np.asarray(about, dtype=np.float64)
    return (np.asarray(points, dtype=np.float64) - about) @ r.T + about


def test_ffhq_quad_symmetric_face_is_axis_aligned_square():
    # Eye distance 60, eye-to-mouth 70: half-side max(2 * 60, 1.8 * 70) = 126,
    # centre = eye midpoint (130, 100) + 0.1 * (0, 70).
    lm = np.array([[100, 100], [160, 100], [130, 135], [110, 170], [150, 170]])
    quad = ffhq_quad(lm)
    assert quad == pytest.approx(np.array([[4, -19], [4, 233], [256, 233], [256, -19]]))
    # Wide eyes: the eye term wins, half-side 2 * 100.
    lm = np.array([[100, 100], [200, 100], [150, 120], [130, 150], [170, 150]])
    quad = ffhq_quad(lm)
    assert quad == pytest.approx(np.array([[-50, -95], [-50, 305], [350, 305], [350, -95]]))


def test_ffhq_quad_rotates_with_the_face():
    lm = np.array([[100, 100], [160, 104], [131, 135], [110, 171], [152, 168]], float)
    for degrees in (30, -75, 180):
        rotated = ffhq_quad(rotate(lm, degrees, (37, -12)))
        assert rotated == pytest.approx(rotate(ffhq_quad(lm), degrees, (37, -12)), abs=1e-9)


@pytest.mark.parametrize(
    "lm",
    [
        [[100, 100], [160, 100], [130, float("nan")], [110, 170], [150, 170]],
        [[100, 100], [100, 100], [130, 135], [110, 170], [150, 170]],  # eyes coincide
        [[0, 0], [2, 0], [1, 1], [0, -2], [2, -2]],  # mirrored and upside down
        [[100, 100], [160, 100], [110, 170], [150, 170]],  # four points
    ],
)
def test_reject_bad_landmarks(lm):
    with pytest.raises(Rejected) as e:
        ffhq_quad(np.array(lm, dtype=np.float64))
    assert reason(e) == "landmarks"
    with pytest.raises(Rejected):
        align_ffhq(page(64, 64), np.array(lm, dtype=np.float64), output_size=32, transform_size=64)


# Face frame, centred on the quad centre (0, 0), which is 0.1 * 70 below the
# eye midpoint: eyes 60 apart, mouth 70 below them; half-side S = 126.
FACE = np.array([[-30, -7], [30, -7], [0, 20], [-25, 63], [25, 63]], dtype=np.float64)
S = 126.0


def draw_face(size: tuple[int, int], lm: np.ndarray, radius: float) -> Image.Image:
    """Grey image with a red left eye, a green right eye and blue mouth corners."""
    w, h = size
    a = np.full((h, w, 3), 128, np.uint8)
    yy, xx = np.mgrid[:h, :w]
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 255)]
    for (x, y), colour in zip(lm[[0, 1, 3, 4]], colours):
        a[(xx - x) ** 2 + (yy - y) ** 2 <= radius**2] = colour
    return Image.fromarray(a)


def centroid(a: np.ndarray, channel: int) -> np.ndarray:
    a = a.astype(np.float64)
    others = [c for c in range(3) if c != channel]
    weight = np.clip(a[..., channel] - a[..., others].mean(axis=2), 0, None)
    weight[weight < 40] = 0  # resampling ripples on the grey background
    yy, xx = np.mgrid[: a.shape[0], : a.shape[1]]
    return np.array([(xx * weight).sum(), (yy * weight).sum()]) / weight.sum()


def expected_eyes(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Output pixel centres of the eyes: the quad spans 2 * S source pixels."""
    left = (FACE[0] + S) / (2 * S) * n - 0.5
    right = (FACE[1] + S) / (2 * S) * n - 0.5
    return left, right


@pytest.mark.parametrize("degrees", [0.0, 30.0, -50.0])
def test_align_ffhq_levels_a_rotated_face(degrees):
    centre = np.array([256.0, 256.0])
    lm = rotate(FACE + centre, degrees, centre)  # quad centred on the image
    img = draw_face((512, 512), lm, radius=5)
    out = align_ffhq(img, lm, output_size=128, transform_size=256)
    assert out.size == (128, 128) and out.mode == "RGB"
    a = np.asarray(out)
    left, right = centroid(a, 0), centroid(a, 1)
    want_left, want_right = expected_eyes(128)
    # Measured error is under 0.1 px; the bound leaves room for resampling.
    assert left == pytest.approx(want_left, abs=0.3)
    assert right == pytest.approx(want_right, abs=0.3)
    assert abs(left[1] - right[1]) < 0.3  # level
    assert (left[0] + right[0]) / 2 == pytest.approx(63.5, abs=0.3)  # symmetric


def test_align_ffhq_shrinks_large_faces():
    # qsize 252 for a 48 px output: the image is first shrunk by 2.
    centre = np.array([256.0, 256.0])
    lm = rotate(FACE + centre, 20, centre)
    out = align_ffhq(draw_face((512, 512), lm, radius=8), lm, output_size=48, transform_size=96)
    left, right = centroid(np.asarray(out), 0), centroid(np.asarray(out), 1)
    want_left, want_right = expected_eyes(48)
    assert left == pytest.approx(want_left, abs=0.5)
    assert right == pytest.approx(want_right, abs=0.5)


def test_align_ffhq_pads_faces_at_the_border():
    # The quad reaches x = 100 - 126 < 0 on a 300x300 image.
    lm = FACE + (100, 150)
    img = draw_face((300, 300), lm, radius=5)
    padded = np.asarray(align_ffhq(img, lm, output_size=64, transform_size=128))
    bare = np.asarray(align_ffhq(img, lm, output_size=64, transform_size=128, enable_padding=False))
    # Without padding the transform samples black off the image; with it the
    # margin is filled from the (grey) picture.
    assert bare[:, :3].max() < 20
    assert np.abs(padded[:, :3].astype(int) - 128).max() < 20
    want_left, _ = expected_eyes(64)
    assert centroid(padded, 0) == pytest.approx(want_left, abs=0.5)


def reflect_index(i: int, n: int) -> int:
    """scipy.ndimage 'reflect': (d c b a | a b c d | d c b a)."""
    i %= 2 * n
    return i if i < n else 2 * n - 1 - i


@pytest.mark.parametrize("sigma", [1.5, 6.0])
def test_gaussian_blur_matches_direct_sum(sigma):
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 255, (20, 17, 3)).astype(np.float32)
    radius = int(4 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    want = a.astype(np.float64)
    for axis in (0, 1):
        n = want.shape[axis]
        out = np.zeros_like(want)
        for i in range(n):
            for k, t in zip(range(-radius, radius + 1), taps):
                src = np.take(want, reflect_index(i + k, n), axis=axis)
                idx = [slice(None)] * 3
                idx[axis] = i
                out[tuple(idx)] += t * src
        want = out
    assert _gaussian_blur(a, sigma) == pytest.approx(want, abs=1e-3)


# ------------------------------------------------------------- landmark files

ROW = ",".join(str(v) for v in range(1, 11))


def test_read_landmarks_csv_with_bad_rows(tmp_path):
    path = tmp_path / "lm.csv"
    path.write_text(
        "name,lex,ley,rex,rey,nx,ny,lmx,lmy,rmx,rmy\n"  # 1 header
        f"a.png,{ROW}\n"  # 2
        "b.png,1,2,3\n"  # 3 short
        "c.png,1,2,3,4,5,six,7,8,9,10\n"  # 4 non-numeric
        "\n"  # 5 blank
        "d.png,1,2,3,4,5,6,7,8,9,nan\n"  # 6 non-finite
        f"a.png,{ROW}\n"  # 7 duplicate
        f"e.png,{ROW},\n"  # 8 trailing comma
    )
    found, bad = read_landmarks(path)
    assert sorted(found) == ["a.png", "e.png"]
    assert found["a.png"].shape == (5, 2)
    assert found["a.png"].tolist() == [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]]
    assert [n for n, _ in bad] == [3, 4, 6, 7]
    assert "11 fields" in bad[0][1] and "duplicate" in bad[3][1]


def test_read_landmarks_tsv_without_header(tmp_path):
    path = tmp_path / "lm.tsv"
    path.write_text(f"x y.png\t{ROW.replace(',', chr(9))}\nz.png\t1\t2\n")
    found, bad = read_landmarks(path)
    assert list(found) == ["x y.png"] and [n for n, _ in bad] == [2]


def test_read_landmarks_json(tmp_path):
    path = tmp_path / "lm.json"
    good = [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]]
    path.write_text(json.dumps({"a.png": good, "b.png": [[1, 2]], "c.png": "x", "d.png": good}))
    found, bad = read_landmarks(path)
    assert sorted(found) == ["a.png", "d.png"]
    assert found["d.png"].tolist() == good
    assert [n for n, _ in bad] == [2, 3] and "'b.png'" in bad[0][1]
    path.write_text("{not json")
    with pytest.raises(DataError):
        read_landmarks(path)
