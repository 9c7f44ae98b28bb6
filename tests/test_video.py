"""datasets.imageio.save_video: H.264 MP4 through imageio-ffmpeg, GIF as the fallback."""

from __future__ import annotations

import sys

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from datasets.imageio import save_video


def _frames(n: int, h: int, w: int) -> list[np.ndarray]:
    return [np.full((h, w, 3), 20 * i, np.uint8) for i in range(n)]


def test_mp4_decodes_with_every_frame_and_odd_sides_padded(tmp_path):
    path = save_video(_frames(9, 33, 47), tmp_path / "v" / "sweep", fps=8)
    assert path == tmp_path / "v" / "sweep.mp4" and not list(path.parent.glob(".*"))  # no temporary left
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    frames = [np.frombuffer(f, np.uint8).reshape(34, 48, 3) for f in reader]
    assert meta["codec"] == "h264" and meta["size"] == (48, 34) and meta["fps"] == 8 and len(frames) == 9
    # Flat grey frames survive H.264 at CRF 18 to within a few levels, in order.
    assert [int(round(f[:33, :47].mean())) for f in frames] == pytest.approx([20 * i for i in range(9)], abs=3)


def test_gif_on_request_and_when_imageio_ffmpeg_is_missing(tmp_path, monkeypatch):
    gif = save_video(_frames(5, 16, 24), tmp_path / "a", fps=10, fmt="gif")
    with Image.open(gif) as im:
        assert gif.suffix == ".gif" and im.n_frames == 5 and im.size == (24, 16) and im.info["duration"] == 100
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails as when it is not installed
    with pytest.warns(UserWarning, match="imageio-ffmpeg is not installed: writing a GIF"):
        path = save_video(_frames(3, 16, 16), tmp_path / "b")
    with Image.open(path) as im:
        assert path == tmp_path / "b.gif" and im.n_frames == 3
    with pytest.raises(ValueError, match="video format must be one of"):
        save_video(_frames(1, 8, 8), tmp_path / "c", fmt="avi")
    with pytest.raises(ValueError, match="no frames"):
        save_video([], tmp_path / "d")
    with pytest.raises(ValueError, match=r"frame 1 is uint8 \(8, 10, 3\)"):
        save_video([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)], tmp_path / "e", fmt="gif")
    assert not list(tmp_path.glob(".*"))  # nothing half-written left behind


def test_a_dotted_stem_keeps_its_dot(tmp_path):
    assert save_video(_frames(2, 8, 8), tmp_path / "photo.v1").name == "photo.v1.mp4"
    assert save_video(_frames(2, 8, 8), tmp_path / "photo.v2", fmt="gif").name == "photo.v2.gif"
