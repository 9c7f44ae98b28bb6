"""A local web page that cartoonizes face photos with a bundle (``launch.bundle``).

    python -m launch.serve --bundle toonify.bundle [--host 127.0.0.1 --port 8000] [--examples photos/]

A person uploads a photo (or picks an example), places the square crop around
the face, chooses a character and sees the crop, its reconstruction and the
three cartoons (CDSM, toonify, W+ mixing) side by side, with a download of the
row as one PNG. The page is launch/serve_page.html; the app is FastAPI served
by uvicorn (one process: the networks are loaded once).

Endpoints: GET / (the page), GET /api/info, GET /api/reference/{character}/{i}.png,
GET /api/example/{i}.png, POST /api/cartoonize?character=&x=&y=&size=[&example=]
with the image file as the request body (or no body and example=i). Errors are
JSON {"error": message}: 400 for a non-image, a damaged file or a crop outside
the image, 404 for an unknown character or example, 413 for a file over
--max-upload-mb or an image over --max-megapixels, 503 when --queue requests
already wait (one is computed at a time, so memory stays bounded).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import ipaddress
import sys
import struct
import time
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, ImageOps, UnidentifiedImageError

PAGE = Path(__file__).with_name("serve_page.html")
ROW = ("photo", "reconstruction", "cdsm", "toonify", "wplus")
"""The cells of a result row, left to right (the page labels them)."""


class RequestError(Exception):
    """A request the page gets a message for (``status``: the HTTP status)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 10 << 20
    """Largest request body accepted; a larger one is refused before it is read whole."""
    max_pixels: int = 40_000_000
    """Largest decoded image (width x height); checked from the header, before decoding."""
    queue: int = 4
    """Requests that may wait while one is computed; more are turned away (503)."""


class Gate:
    """Admission and turns for the one job computed at a time, on the event loop.

    ``admit`` counts a request in before its body is read and refuses it (503) when
    ``waiting`` requests already wait besides the one running; ``turn`` then lets one
    admitted request compute at a time, in arrival order, while the others wait on the
    event loop (not in worker threads). One thread runs the loop, so the count needs no lock."""

    def __init__(self, waiting: int):
        self.capacity = waiting + 1
        self.inside = 0
        self._run = asyncio.Lock()

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        if self.inside >= self.capacity:
            raise RequestError(503, f"the server is busy ({self.inside} requests in line); try again shortly")
        self.inside += 1
        try:
            yield
        finally:
            self.inside -= 1

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        async with self._run:
            yield


# ----------------------------------------------------------------------
# Images in and out.

FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
"""The decoders uploads may reach (not EPS, which runs Ghostscript, nor the rarer decoders)."""


def _rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB as a browser shows ``im``: transparency over white, 16-bit grey scaled down."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return Image.fromarray((np.asarray(im, np.uint32) // 257).astype(np.uint8)).convert("RGB")
    if im.mode in ("I", "F"):
        raise RequestError(400, f"{im.mode!r} images (32-bit integer or float) are not read: save the photo "
                                "as an 8-bit PNG or JPEG")
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        white.alpha_composite(im)
        return white.convert("RGB")
    return im.convert("RGB")


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """An uploaded file as an upright RGB image, or a ``RequestError`` saying what is wrong with it."""
    if not data:
        raise RequestError(400, "the upload is empty: choose a photo file")
    try:
        im = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as e:
        raise RequestError(413, f"the image is too large to decode safely ({e})") from e
    except UnidentifiedImageError as e:
        raise RequestError(400, f"the file is not an image this server reads ({', '.join(FORMATS)})") from e
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as e:  # a header cut short
        raise RequestError(400, f"the image file is damaged or truncated and cannot be decoded ({e})") from e
    if im.width * im.height > max_pixels:
        raise RequestError(413, f"the image is {im.width}x{im.height} pixels; this server takes at most "
                                f"{max_pixels / 1e6:g} megapixels: downscale it first")
    try:
        im.load()
        return _rgb(ImageOps.exif_transpose(im))  # upright as the browser shows it
    except RequestError:
        raise
    except Exception as e:  # any decoder failure on a damaged file is the file's, not the server's
        raise RequestError(400, f"the image file is damaged or truncated and cannot be decoded ({e})") from e


def square_crop(im: Image.Image, x: int | None, y: int | None, size: int | None) -> tuple[Image.Image, tuple]:
    """The square (x, y, size) of ``im`` (default: the largest centred square) and the box used."""
    if size is None:
        size = min(im.size)
        x, y = (im.width - size) // 2, (im.height - size) // 2
    x, y = x or 0, y or 0
    if size < 1 or x < 0 or y < 0 or x + size > im.width or y + size > im.height:
        raise RequestError(400, f"the crop ({x}, {y}) with side {size} lies outside the {im.width}x{im.height} image")
    return im.crop((x, y, x + size, y + size)), (x, y, size)


def png_data_url(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def result_row(cells: dict[str, np.ndarray], side: int) -> np.ndarray:
    """The row's cells resized (nearest neighbour) to ``side`` and joined left to right with a gap."""
    gap = np.full((side, max(2, side // 32), 3), 255, np.uint8)
    tiles = [np.asarray(Image.fromarray(cells[k]).resize((side, side), Image.Resampling.NEAREST)) for k in ROW]
    return np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1)


# ----------------------------------------------------------------------
# The work of one request.

class Studio:
    """The loaded bundle, the example photos and what one request computes."""

    def __init__(self, toon, examples: list[Path], limits: Limits, title: str):
        self.toon, self.limits, self.title = toon, limits, title
        self.gate = Gate(limits.queue)
        self.examples: list[tuple[Image.Image, bytes]] = []  # decoded once: the page and requests reuse them
        for path in examples:
            try:
                im = decode_image(path.read_bytes(), limits.max_pixels)
            except (OSError, RequestError) as e:
                print(f"[serve] example {path} skipped: {e}", flush=True)
                continue
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            self.examples.append((im, buf.getvalue()))

    def info(self) -> dict:
        S = self.toon.G.size
        return {"title": self.title, "characters": self.toon.characters, "size": S,
                "input_size": self.toon.size, "methods": list(ROW[2:]),
                "references": {c: len(self.toon.references(c)) for c in self.toon.characters},
                "examples": len(self.examples), "max_upload_mb": round(self.limits.max_upload_bytes / 2**20, 3),
                "note": (f"this model draws {S} px cartoons; the page shows them enlarged" if S <= 64 else "")}

    def character(self, name: str) -> str:
        if name not in self.toon.characters:
            raise RequestError(404, f"no character {name!r}; this bundle holds: {', '.join(self.toon.characters)}")
        return name

    def example(self, i: int) -> tuple[Image.Image, bytes]:
        if not 0 <= i < len(self.examples):
            raise RequestError(404, f"no example {i} (there are {len(self.examples)})")
        return self.examples[i]

    def cartoonize(self, source: bytes | Image.Image, character: str, x: int | None, y: int | None,
                   size: int | None) -> dict:
        """Decode, crop, invert and mix one photo (upload bytes or a decoded example): the page's answer."""
        t0 = time.time()
        im = source if isinstance(source, Image.Image) else decode_image(source, self.limits.max_pixels)
        crop, box = square_crop(im, x, y, size)
        out = self.toon.compare(crop, self.character(character))
        S = self.toon.G.size
        cells = {"photo": np.asarray(crop.resize((S, S), Image.Resampling.LANCZOS)),
                 **{k: out[k][0] for k in ROW[1:]}}
        notes = []
        if box[2] < self.toon.size:
            notes.append(f"the crop is {box[2]} px, smaller than the model's {self.toon.size} px input: "
                         f"it was enlarged, so expect a blurred result")
        seconds = time.time() - t0
        print(f"[serve] {character}: crop {box} of a {im.width}x{im.height} photo in {seconds:.2f} s", flush=True)
        return {"character": character, "crop": list(box), "size": S, "seconds": round(seconds, 3),
                "notes": notes, "images": {k: png_data_url(v) for k, v in cells.items()},
                "sheet": png_data_url(result_row(cells, max(S, 256)))}


# ----------------------------------------------------------------------
# The app.

def _error(e: RequestError) -> JSONResponse:
    return JSONResponse({"error": str(e)}, status_code=e.status)


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the file is {int(declared) / 2**20:.1f} MB; this server takes at most "
                                f"{limit / 2**20:.3g} MB")
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise RequestError(413, f"the file is over this server's {limit / 2**20:.3g} MB limit")
        chunks.append(chunk)
    return b"".join(chunks)


LOOPBACK_HOSTS = ["127.0.0.1", "localhost"]
"""Host headers a server on 127.0.0.1 or localhost answers (any other: a DNS-rebinding page, refused)."""


def build_app(studio: Studio, allowed_hosts: list[str] | None = None) -> FastAPI:
    """The FastAPI app serving ``studio``; ``allowed_hosts``: the Host headers it answers (None: any)."""
    app = FastAPI(title="toonmix cartoonizer", docs_url=None, redoc_url=None, openapi_url=None)
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(request: Request, exc: RequestValidationError) -> JSONResponse:
        said = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": f"bad request parameters ({said})"}, status_code=422)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    @app.get("/api/info")
    def info() -> dict:
        return studio.info()

    @app.get("/api/reference/{character}/{i}.png")
    def reference(character: str, i: int):
        try:
            refs = studio.toon.references(studio.character(character))
        except RequestError as e:
            return _error(e)
        if not 0 <= i < len(refs):
            return _error(RequestError(404, f"{character} has {len(refs)} reference thumbnails"))
        buf = io.BytesIO()
        Image.fromarray(refs[i]).save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png")

    @app.get("/api/example/{i}.png")
    def example(i: int):
        try:
            return Response(studio.example(i)[1], media_type="image/png")
        except RequestError as e:
            return _error(e)

    @app.post("/api/cartoonize")
    async def cartoonize(request: Request, character: str, x: int | None = None, y: int | None = None,
                         size: int | None = None, example: int | None = None):
        try:
            studio.character(character)
            async with studio.gate.admit():  # before the body is read: a busy server reads no more uploads
                source = studio.example(example)[0] if example is not None else \
                    await _body(request, studio.limits.max_upload_bytes)
                async with studio.gate.turn():
                    return JSONResponse(await run_in_threadpool(studio.cartoonize, source, character, x, y, size))
        except RequestError as e:
            return _error(e)
        except Exception as e:  # the server keeps serving; the log keeps the traceback
            traceback.print_exc()
            return JSONResponse({"error": f"the server failed on this request ({type(e).__name__}: {e}); "
                                          "its log has the details"}, status_code=500)

    return app


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, help="the bundle file (python -m launch.bundle)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--device", default="cpu", help="torch device for the networks (cpu, cuda, cuda:1)")
    p.add_argument("--examples", help="a folder of example photos the page offers (the first 8 image files)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload accepted, in MB")
    p.add_argument("--max-megapixels", type=float, default=40.0, help="largest image accepted, in megapixels")
    p.add_argument("--queue", type=int, default=4, help="requests that may wait while one is computed")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="uvicorn's log level (each request is logged at info)")
    return p


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def make_server(args: argparse.Namespace):
    """The uvicorn server ``main`` runs (tests run it in a thread); exit 2 for a bad bundle or folder."""
    import uvicorn

    from datasets.imageio import image_files
    from eval.bundle import Cartoonizer
    from launch._args import fail
    from trainer.model_io import CheckpointError

    if args.queue < 0 or args.max_upload_mb <= 0 or args.max_megapixels <= 0:
        fail("--queue must be >= 0, --max-upload-mb and --max-megapixels > 0")
    try:
        toon = Cartoonizer.load(args.bundle, device=args.device)
    except CheckpointError as e:
        fail(f"error: {e}")
    examples: list[Path] = []
    if args.examples:
        if not Path(args.examples).is_dir():
            fail(f"error: --examples {args.examples} is not a folder")
        examples = [Path(f) for f in image_files(args.examples)[:8]]
    limits = Limits(int(args.max_upload_mb * 2**20), int(args.max_megapixels * 1e6), args.queue)
    studio = Studio(toon, examples, limits, Path(args.bundle).name)
    if not _loopback(args.host):
        print(f"[serve] listening on {args.host}: anyone who can reach this machine can use the page", flush=True)
    hosts = LOOPBACK_HOSTS if args.host in LOOPBACK_HOSTS else None
    return uvicorn.Server(uvicorn.Config(build_app(studio, hosts), host=args.host, port=args.port,
                                         log_level=args.log_level, limit_concurrency=64 + args.queue))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    server = make_server(args)
    print(f"[serve] {args.bundle}: open http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
