"""Crafted inputs for the data commands: an output folder holding the user's files, zip and
pixel bombs, a server that trickles bytes, manifests that point outside their folder.

Each case writes a small file that declares a large one (a 1.5 MB zip inflating to 1.5 GiB,
a 140 KB PNG of 12000 x 12000 pixels) and names the command that reads it; see
tests/untrusted_harness.py for how they run and what is measured.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import struct
import tarfile
import threading
import zipfile
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from tests.untrusted_harness import Attack, Case

ZIP_BOMB_MIB = 1536
"""Inflated size of the zip bomb's member (1.5 GiB of zeros, about 1.5 MB zipped)."""
_ZIP_BOMB_CRC = 0x400AE278  # zlib.crc32 of ZIP_BOMB_MIB MiB of zeros (a second to compute)
PIXEL_BOMB_SIDE = 12000
"""Side of the pixel bomb PNG: 144 MP, over the 67 MP limit and under PIL's own hard limit
(179 MP: PIL only warns), so without a check of its own a reader decodes it (over 1 GB)."""
FID = ["--protocol", "custom", "--num-gen", "2", "--detector", "untrained", "--cache-dir", "", "--batch", "4"]


def png(seed: int, size: int = 32) -> bytes:
    """A small RGB noise PNG (distinct per seed, so no two are duplicates)."""
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


@functools.lru_cache(maxsize=None)
def pixel_bomb(side: int = PIXEL_BOMB_SIDE, full: bool = True) -> bytes:
    """A grayscale PNG declaring side x side pixels; ``full``: with all its (zero) pixel rows,
    so decoding it really allocates and fills them; else the header alone."""
    c, idat = zlib.compressobj(9), b""
    if full:
        row = bytes(side + 1)  # filter byte + one byte per pixel
        idat = b"".join(c.compress(row) for _ in range(side))
    idat += c.flush()
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


@functools.lru_cache(maxsize=None)
def zip_bomb_member() -> tuple[bytes, int]:
    """(raw deflate stream of ZIP_BOMB_MIB MiB of zeros, its length inflated).

    One MiB deflated and fully flushed is a byte-aligned fragment that decodes the same
    wherever it stands, so the stream is that fragment repeated, then an empty final
    block: built in milliseconds instead of deflating 1.5 GiB.
    """
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    return piece * ZIP_BOMB_MIB + b"\x03\x00", ZIP_BOMB_MIB << 20


def write_zip_bomb(path: Path, member: str, good: dict[str, bytes]) -> None:
    """A zip whose ``member`` inflates to 1.5 GiB, plus the ``good`` members as they are."""
    data, size = zip_bomb_member()
    name = member.encode()
    fields = (20, 0, 8, 0, 0x21, _ZIP_BOMB_CRC, len(data), size, len(name))  # deflate, 1980-01-01
    local = b"PK\x03\x04" + struct.pack("<HHHHHIIIHH", *fields, 0) + name
    central = (b"PK\x01\x02" + struct.pack("<HHHHHHIIIHHHHHII", 20, *fields, 0, 0, 0, 0, 0, 0) + name)
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, len(central), len(local) + len(data), 0)
    path.write_bytes(local + data + central + end)
    with zipfile.ZipFile(path, "a") as z:  # zipfile appends the good members and rewrites the directory
        for n, b in good.items():
            z.writestr(n, b)


def write_shard(path: Path, n: int = 2, size: int = 32) -> None:
    """A valid webdataset shard of n noise images, as make_shards writes them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(n):
            for ext, data in (("png", png(100 + i, size)), ("cls", b"-1")):
                info = tarfile.TarInfo(f"{i:09d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _images(folder: Path, seeds: range) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for s in seeds:
        (folder / f"{s:03d}.png").write_bytes(png(s))
    return folder


def _make_shards(src: Path, out: Path) -> list[str]:
    return ["launch.make_shards", "--kind", "folder", "--input", str(src), "--out", str(out), "--size", "32",
            "--min-size", "16", "--workers", "0", "--quiet"]


def user_files_in_out(tmp: Path, stack: contextlib.ExitStack) -> Attack:
    """--out names a folder of the user's own, whose names look like a writer's leftovers."""
    out = tmp / "thesis"
    user = {out / "_progress" / "notes.txt": b"my notes\n", out / "thesis.tmp-final": b"the final draft\n"}
    for p, data in user.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return Attack(argv=_make_shards(_images(tmp / "in", range(3)), out), user_files=user,
                  expect_message="did not write", timeout=30)


def zip_bomb(tmp: Path, stack: contextlib.ExitStack) -> Attack:
    """One member of an input zip inflates to 1.5 GiB: refused from its size, the rest written.

    make_shards' convention for one bad input among many: skipped and counted (exit 0); its
    reason is on stderr and in the manifest (tests/test_untrusted_ingest.py reads that too).
    """
    write_zip_bomb(tmp / "in.zip", "a/big.png", {f"a/{i}.png": png(i) for i in range(3)})
    return Attack(argv=_make_shards(tmp / "in.zip", tmp / "out"), expect_exit=0,
                  expect_message="too_large: 1", timeout=30)


def pixel_bomb_in_fid(tmp: Path, stack: contextlib.ExitStack) -> Attack:
    """An image folder whose two PNGs declare 144 MP and 900 MP: neither is decoded.

    Each is skipped and counted (launch.fid's convention for one bad file); with nothing
    readable left the whole --real is refused (exit 2). The folder holds no good image so
    that the case stops before a 2048-dim FID (seconds of CPU); tests/test_untrusted_ingest.py
    checks that good images beside a bomb are still read.
    """
    real = tmp / "real"
    real.mkdir()
    (real / "bomb.png").write_bytes(pixel_bomb())
    (real / "huge.png").write_bytes(pixel_bomb(30000, full=False))
    fake = _images(tmp / "fake", range(10, 13))
    return Attack(argv=["launch.fid", "--real", str(real), "--fake", str(fake), *FID],
                  expect_message="'too many pixels': 2", timeout=60)


class _Trickle(BaseHTTPRequestHandler):
    """Promises 1000 bytes of image and sends one every ``server.interval`` seconds (2 s: never
    a read timeout under --timeout 3)."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.requests += 1
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", "1000")
        self.end_headers()
        for _ in range(1000):
            try:
                self.wfile.write(b"\xff")
                self.wfile.flush()
            except OSError:  # the crawler hung up
                return
            if self.server.stopping.wait(self.server.interval):
                return

    def log_message(self, *args) -> None:
        pass


def trickle_server(stack: contextlib.ExitStack, interval: float = 2.0) -> tuple[str, ThreadingHTTPServer]:
    """(the URL of an image, the server) of a trickling server on localhost, stopped when ``stack`` closes;
    ``server.requests`` counts the requests it received."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    server.daemon_threads = True
    server.interval, server.stopping = interval, threading.Event()
    server.requests = 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stack.callback(server.server_close)
    stack.callback(server.shutdown)
    stack.callback(server.stopping.set)  # callbacks run last-in first: wake the trickling handler first
    return f"http://127.0.0.1:{server.server_address[1]}/a.jpg", server


def slow_server(tmp: Path, stack: contextlib.ExitStack) -> Attack:
    """A server trickling one byte per 2 s under --timeout 3: the URL ends at the request deadline
    (2 x --timeout by default) and fails as 'deadline'; the crawl goes on and exits 0 (its convention)."""
    urls = tmp / "urls.csv"
    urls.write_text(f"t,1,{trickle_server(stack)[0]}\n")
    return Attack(argv=["launch.crawl", "--out", str(tmp / "out"), "--url-list", str(urls), "--timeout", "3",
                        "--rate-limit", "0", "--ignore-robots", "--no-progress"],
                  expect_exit=0, expect_message="deadline", timeout=15)


def _manifest_to(name_of: Callable[[Path], str], reader: str) -> Callable[[Path, contextlib.ExitStack], Attack]:
    """A manifest in shards/ naming a real shard in other/ by ``name_of(tmp)``, given to ``reader``
    (``loader``: launch.train_gan's training loader; ``fid``: launch.fid's --real): refused (exit 2)."""

    def build(tmp: Path, stack: contextlib.ExitStack) -> Attack:
        write_shard(tmp / "other" / "shard-000000.tar")
        shards = tmp / "shards"
        shards.mkdir()
        manifest = {"format": "toonmix.shards", "version": 1, "image_size": 32, "labels": [],
                    "shards": [{"name": name_of(tmp), "count": 2, "bytes": 0}]}
        (shards / "manifest.json").write_text(json.dumps(manifest))
        if reader == "loader":
            argv = ["launch.train_gan", "--config", "launch/configs/tiny.yaml", f"loader.data={shards}",
                    f"run.dir={tmp / 'run'}"]
        else:
            argv = ["launch.fid", "--real", str(shards), "--fake", str(_images(tmp / "fake", range(10, 13))), *FID]
        return Attack(argv=argv, expect_message="outside its folder", timeout=60)

    return build


CASES: list[Case] = [
    Case("make_shards_user_files", user_files_in_out),
    Case("make_shards_zip_bomb", zip_bomb),
    Case("fid_pixel_bomb", pixel_bomb_in_fid, slow=True),
    Case("crawl_slow_server", slow_server),
    Case("manifest_file_url_outside",
         _manifest_to(lambda tmp: (tmp / "other" / "shard-000000.tar").as_uri(), "loader")),
    Case("manifest_dotdot_outside", _manifest_to(lambda tmp: "../other/shard-000000.tar", "fid"), slow=True),
]
