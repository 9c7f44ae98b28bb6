"""Decoding untrusted image bytes into RGB, resizing and encoding samples.

Every image that enters a shard goes through ``decode_rgb``: it refuses what
cannot be read completely (``Rejected`` with a reason the manifest counts) and
normalises the modes people's folders contain (grayscale, palette, RGBA, CMYK,
16-bit) to 8-bit RGB, so nothing unreadable or oddly typed reaches a shard.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import warnings
from typing import Callable

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import DataError, Rejected

try:
    import simplejpeg
except ImportError:  # optional: PIL decodes everything, a little slower
    simplejpeg = None

#: Default pixel limit (width * height) of an input image: 16k x 16k. Webtoon
#: episode strips are tall (800 x 30000 is common), so PIL's own limit of 89 MP
#: is kept as the ceiling and ours is checked before decoding.
DEFAULT_MAX_PIXELS = 16384 * 16384 // 3

ENCODINGS = ("png", "jpg")

# Alpha is composited on white: webtoon pages and most transparent cut-outs
# sit on a white background, and black would put dark halos around faces.
_BACKGROUND = (255, 255, 255)

Upscaler = Callable[[Image.Image, int], Image.Image]


def decode_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Bytes -> fully loaded 8-bit RGB image, or ``Rejected``.

    Reasons: ``empty`` (zero bytes), ``not_image`` (no decoder recognises it),
    ``too_many_pixels``, ``corrupt`` (truncated or damaged data: PIL is never
    allowed to pad a truncated file), ``unsupported_mode``.
    """
    if not data:
        raise Rejected("empty", "zero-byte file")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone flipped the global: truncated files would decode as grey.
        raise DataError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; refusing to decode")
    # Our limit is checked below from the header; PIL's own (89 MP) must not undercut
    # a higher one chosen for tall webtoon strips.
    Image.MAX_IMAGE_PIXELS = max(max_pixels, DEFAULT_MAX_PIXELS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise Rejected("too_many_pixels", f"{w}x{h} > {max_pixels} pixels")
            img.load()
    except Rejected:
        raise
    except UnidentifiedImageError:
        raise Rejected("not_image", "no image decoder recognises the bytes") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise Rejected("too_many_pixels", str(e)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise Rejected("corrupt", f"{type(e).__name__}: {e}") from None
    if w == 0 or h == 0:
        raise Rejected("corrupt", "image with a zero-length side")
    try:
        img = ImageOps.exif_transpose(img)  # phone photos store their rotation in EXIF
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the image
        pass
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB (alpha over white, 16-bit scaled, CMYK converted)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # PIL's convert("L") clips 16-bit values at 255 instead of scaling them.
        a = np.asarray(img, dtype=np.int64)
        peak = 65535 if mode.startswith("I;16") or a.max(initial=0) > 255 else 255
        a = np.clip(a * 255.0 / peak + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if mode == "F":
        raise Rejected("unsupported_mode", "32-bit float image (no defined white level)")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, _BACKGROUND)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    try:
        return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    except (ValueError, OSError) as e:
        raise Rejected("unsupported_mode", f"{mode}: {e}") from None


def center_square(img: Image.Image) -> Image.Image:
    """Central square crop (inputs that are already face crops but not square)."""
    w, h = img.size
    if w == h:
        return img
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s))


def load_upscaler(spec: str | None) -> Upscaler | None:
    """``"package.module:function"`` -> callable(img, size) -> img, or None.

    The hook is called for crops smaller than the training resolution (the
    seeds used SRCNN for this); it must return an RGB image of at least
    ``size`` pixels, which is then resized to exactly ``size`` as usual.
    """
    if not spec:
        return None
    module, _, name = spec.partition(":")
    if not module or not name:
        raise DataError(f"upscaler must look like 'package.module:function', got {spec!r}")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise DataError(f"cannot load upscaler {spec!r}: {e}") from None
    if not callable(fn):
        raise DataError(f"upscaler {spec!r} is not callable")
    return fn


def resize_square(img: Image.Image, size: int, upscaler: Upscaler | None = None) -> Image.Image:
    """Square image -> ``size`` x ``size`` with Lanczos (the upscaler first if smaller)."""
    if upscaler is not None and img.width < size:
        img = to_rgb(upscaler(img, size))
    if img.size != (size, size):
        # reducing_gap makes large reductions a box pre-shrink + Lanczos: same
        # look, several times faster on 4k inputs.
        img = img.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return img


def encode(img: Image.Image, encoding: str, jpeg_quality: int = 95, png_level: int = 6) -> bytes:
    """RGB image -> PNG or JPEG bytes (JPEG without chroma subsampling)."""
    buf = io.BytesIO()
    if encoding == "png":
        img.save(buf, format="PNG", compress_level=png_level)
    elif encoding == "jpg":
        img.save(buf, format="JPEG", quality=jpeg_quality, subsampling=0)
    else:
        raise DataError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    return buf.getvalue()


def stored_format(data: bytes, size: int) -> str | None:
    """``"jpg"``/``"png"`` when ``data`` can enter a shard as it is: an 8-bit RGB
    JPEG or PNG of exactly size x size, without transparency or an EXIF rotation."""
    with Image.open(io.BytesIO(data)) as img:  # header only: no second decode
        if img.size != (size, size) or img.mode != "RGB" or "transparency" in img.info:
            return None
        if img.getexif().get(0x0112, 1) != 1:  # Orientation tag
            return None
        return {"JPEG": "jpg", "PNG": "png"}.get(img.format)


def pixel_hash(img: Image.Image) -> str:
    """Content hash of the decoded pixels (size included): equal iff the images are equal."""
    a = np.asarray(img)
    h = hashlib.sha256(f"{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:32]


class WrongSize(ValueError):
    """A shard member whose header declares another size than the manifest's."""


def _check_size(wh: tuple[int, int], size: int | None) -> None:
    if size is not None and tuple(wh) != (size, size):
        raise WrongSize(f"image is {wh[0]}x{wh[1]}, the manifest says {size}")


def decode_array(data: bytes, size: int | None = None) -> np.ndarray:
    """Shard member bytes -> HxWx3 uint8 array (the loader's decode step).

    JPEGs go through libjpeg-turbo straight into numpy (simplejpeg, strict:
    corrupt data raises), about 1.3x faster than PIL at 1024 px on this
    project's benchmark machine; anything else, or a JPEG simplejpeg cannot
    take (CMYK), goes through PIL. With ``size``, an image whose header is not
    size x size raises ValueError before any pixel is decoded: a crafted shard's
    member declaring a huge image costs nothing.
    """
    if data[:2] == b"\xff\xd8" and simplejpeg is not None:
        try:
            _check_size(simplejpeg.decode_jpeg_header(data)[1::-1], size)
            return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
        except WrongSize:
            raise
        except ValueError:
            pass  # PIL decides: it decodes what simplejpeg refuses, or raises
    try:
        img = Image.open(io.BytesIO(data))  # header only, until load()
    except Image.DecompressionBombError as e:  # over PIL's hard limit: no manifest size is that large
        raise ValueError(str(e)) from None
    with img:
        _check_size(img.size, size)
        img.load()
        if img.mode != "RGB":
            img = to_rgb(img)
        return np.asarray(img)
