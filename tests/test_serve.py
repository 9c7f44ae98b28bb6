"""launch.serve: the web page's server on a free local port, with test_cartoonize's tiny bundle."""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from launch import serve

MAX_UPLOAD_MB = 0.05  # 52 KB: an oversized file stays cheap to make


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(packed, tmp_path_factory):
    """``launch.serve``'s own server (``make_server``) running in a thread; yields its base URL."""
    examples = tmp_path_factory.mktemp("examples")
    shutil.copy(packed["clean"] / "p0.png", examples / "a.png")
    args = serve.build_parser().parse_args([
        "--bundle", str(packed["bundle"]), "--port", str(_free_port()), "--examples", str(examples),
        "--max-upload-mb", str(MAX_UPLOAD_MB), "--max-megapixels", "1", "--log-level", "warning"])
    srv = serve.make_server(args)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and thread.is_alive() and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "the server did not start"
    yield f"http://127.0.0.1:{args.port}"
    srv.should_exit = True
    thread.join(10)


def _post(url: str, body: bytes | None, **query) -> tuple[int, dict]:
    q = "&".join(f"{k}={v}" for k, v in query.items())
    req = urllib.request.Request(f"{url}/api/cartoonize?{q}", data=body or b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _decode(data_url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


def _info(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/api/info", timeout=30) as r:
        return json.loads(r.read())


def test_a_good_upload_returns_the_api_s_cartoons(server, packed):
    photo = Image.fromarray(packed["photos"][1])  # 72 px; the crop below is its 64 px top-left square
    code, got = _post(server, _png_bytes(photo), character="hero", x=4, y=2, size=64)
    assert code == 200, got
    assert got["crop"] == [4, 2, 64] and got["size"] == 32 and got["notes"] == []
    crop = photo.crop((4, 2, 68, 66))
    want = packed["toon"].compare(crop, "hero")
    for key in ("reconstruction", "cdsm", "toonify", "wplus"):
        assert np.array_equal(_decode(got["images"][key]), want[key][0]), key  # PNG is lossless
    sheet = _decode(got["sheet"])
    assert sheet.shape[0] == 256 and sheet.shape[1] > 5 * 256  # five cells and the gaps between them
    # No crop given: the largest centred square, as the page starts.
    code, got = _post(server, _png_bytes(photo.crop((0, 0, 72, 60))), character="hero")
    assert code == 200 and got["crop"] == [6, 0, 60]


def test_bad_uploads_get_a_message_and_the_server_keeps_serving(server, packed):
    good = _png_bytes(Image.fromarray(packed["photos"][0]))
    noise = np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)  # incompressible
    oversized = _png_bytes(Image.fromarray(noise))
    assert len(oversized) > MAX_UPLOAD_MB * 2**20
    cases = [(b"%PDF-1.4 not a picture", 400, "not an image"),
             (good[: len(good) // 2], 400, "damaged or truncated"),
             (good[:20], 400, "damaged or truncated"),  # the header itself cut short
             (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n", 400, "not an image"),  # EPS: never decoded
             (_png_bytes(Image.new("I;16", (72, 72))), 200, None),
             (_png_bytes(Image.new("RGBA", (72, 72), (0, 0, 0, 0))), 200, None),
             (oversized, 413, "at most 0.05 MB"),
             (_png_bytes(Image.new("RGB", (1200, 1000))), 413, "at most 1 megapixels"),
             (b"", 400, "the upload is empty")]
    for body, status, message in cases:
        code, got = _post(server, body, character="hero")
        assert code == status and (message is None or message in got["error"]), (status, got)
    # A transparent image is cartoonized as the browser shows it: over white.
    code, got = _post(server, _png_bytes(Image.new("RGBA", (72, 72), (0, 0, 0, 0))), character="hero")
    assert (_decode(got["images"]["photo"]) == 255).all()
    code, got = _post(server, good, character="hero", x="left")
    assert code == 422 and "bad request parameters (x:" in got["error"]
    code, got = _post(server, good, character="villain")
    assert code == 404 and got["error"] == "no character 'villain'; this bundle holds: hero"
    code, got = _post(server, good, character="hero", x=40, y=0, size=64)
    assert code == 400 and "lies outside the 72x72 image" in got["error"]
    # A body sent in chunks, with no length announced, is cut off at the limit too.
    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/api/cartoonize?character=hero", body=iter([oversized[i:i + 8192]
                 for i in range(0, len(oversized), 8192)]), encode_chunked=True)
    r = conn.getresponse()
    assert r.status == 413 and "over this server's 0.05 MB limit" in json.loads(r.read())["error"]
    conn.close()
    # Still serving: the page, its description and a good upload.
    assert _info(server)["characters"] == ["hero"]
    code, got = _post(server, good, character="hero")
    assert code == 200 and set(got["images"]) == set(serve.ROW)


def test_page_examples_and_references_are_served(server, packed):
    with urllib.request.urlopen(server + "/", timeout=30) as r:
        page = r.read().decode()
    assert "<title>toonmix cartoonizer</title>" in page and 'id="go"' in page
    info = _info(server)
    assert info["examples"] == 1 and info["references"] == {"hero": 4} and info["size"] == 32
    assert "32 px" in info["note"]
    with urllib.request.urlopen(server + "/api/reference/hero/3.png", timeout=30) as r:
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.read()))), packed["toon"].references("hero")[3])
    with urllib.request.urlopen(server + "/api/example/0.png", timeout=30) as r:
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.read()))), packed["photos"][0])
    code, got = _post(server, None, character="hero", example=0)
    code_up, up = _post(server, _png_bytes(Image.fromarray(packed["photos"][0])), character="hero")
    assert code == code_up == 200 and got["images"]["cdsm"] == up["images"]["cdsm"]
    code, got = _post(server, None, character="hero", example=5)
    assert code == 404 and "no example 5 (there are 1)" in got["error"]


def test_the_gate_admits_one_running_and_the_queue_and_turns_away_the_rest():
    async def scenario() -> list[str]:
        gate, order = serve.Gate(waiting=1), []
        release = asyncio.Event()

        async def job(name: str, hold: bool) -> None:
            async with gate.admit():
                async with gate.turn():
                    order.append(name)
                    if hold:
                        await release.wait()

        first = asyncio.create_task(job("first", True))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(job("second", False))  # admitted: waits its turn
        await asyncio.sleep(0.01)
        assert gate.inside == 2 and order == ["first"]
        with pytest.raises(serve.RequestError) as e:
            await job("third", False)
        assert e.value.status == 503 and "busy (2 requests in line)" in str(e.value)
        release.set()
        await asyncio.gather(first, second)
        assert gate.inside == 0
        await job("fourth", False)  # free again
        return order

    assert asyncio.run(scenario()) == ["first", "second", "fourth"]


def test_a_dns_rebinding_host_is_refused(server):
    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/api/info", headers={"Host": f"attacker.example:{port}"})
    assert conn.getresponse().status == 400
    conn.close()


def test_a_bad_bundle_exits_2_and_a_network_address_is_said(packed, tmp_path, capsys):
    bad = tmp_path / "x.bundle"
    bad.write_bytes(b"garbage")
    for argv, message in ((["--bundle", str(bad)], str(bad)),
                          (["--bundle", str(tmp_path / "none.bundle")], "`make demo` writes runs/demo/demo.bundle"),
                          (["--bundle", str(packed["bundle"]), "--examples", str(tmp_path / "none")], "not a folder"),
                          (["--bundle", str(packed["bundle"]), "--queue", "-1"], "--queue must be >= 0")):
        with pytest.raises(SystemExit) as e:
            serve.make_server(serve.build_parser().parse_args(argv))
        assert e.value.code == 2 and message in capsys.readouterr().err
    serve.make_server(serve.build_parser().parse_args(["--bundle", str(packed["bundle"]), "--host", "0.0.0.0"]))
    assert "anyone who can reach this machine" in capsys.readouterr().out
    assert serve._loopback("127.0.0.1") and serve._loopback("::1") and not serve._loopback("example.org")


@pytest.mark.slow
def test_the_page_in_headless_chromium(server, packed, tmp_path):
    """Drives the page as a person would: choose a file, move the crop, pick a character,
    press the button; the five result cells appear and a screenshot is saved."""
    for tool in ("chromium", "chromedriver"):
        if not shutil.which(tool):
            pytest.skip(f"needs Debian's chromium and chromium-driver packages ({tool} is not installed)")
    from tests.browser import drive_page

    photo = tmp_path / "photo.png"  # a portrait photo: 72 x 96, the face in its middle
    portrait = Image.new("RGB", (72, 96), (200, 200, 200))
    portrait.paste(Image.fromarray(packed["photos"][2]), (0, 12))
    portrait.save(photo)
    shot = tmp_path / "page.png"
    got = drive_page(server, photo, "hero", crop_side=48, screenshot=shot)
    assert got["status"].startswith("hero, crop 48 px at (12, 24)"), got
    assert got["canvas"] == [225, 300]  # the longer side drawn at 300 px however often the slider moved
    im = Image.open(shot)
    assert im.size[0] >= 1000 and np.asarray(im).std() > 10  # a drawn page, not a blank one
