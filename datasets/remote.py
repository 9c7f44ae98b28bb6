"""Reading and writing shards on any fsspec URL, and webdataset's URL openers.

Local paths, ``file://``, ``memory://``, ``s3://``, ``gs://`` (where the user
installed s3fs / gcsfs) all go through fsspec. webdataset 1.0 opens none of
those by itself and turns ``pipe:`` URLs into shell commands; ``pipe:`` is
refused unless the user asks for it, since a shard list or manifest may come
from someone else.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from typing import IO, Any

import fsspec

from .errors import DataError

#: Schemes handed to fsspec when webdataset is asked to open them.
FSSPEC_SCHEMES = ("s3", "gs", "gcs", "memory", "az", "abfs", "file", "hf", "http", "https")


def is_pipe(url: str) -> bool:
    return url.startswith("pipe:")


def check_url(url: str, allow_pipe: bool = False) -> None:
    """Refuses ``pipe:`` URLs unless enabled (they run a shell command)."""
    if is_pipe(url) and not allow_pipe:
        raise DataError(f"refusing shell-command URL {url!r}: pass allow_pipe=True "
                        "(--allow-pipe) only for shard lists you wrote yourself")


def fs_and_path(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """URL or local path -> (filesystem, path inside it)."""
    fs, path = fsspec.core.url_to_fs(str(url))
    return fs, path


def join(base: str, *parts: str) -> str:
    """Joins URL parts with '/', keeping the scheme (``memory://x`` + ``a`` -> ``memory://x/a``)."""
    out = str(base).rstrip("/")
    for p in parts:
        out += "/" + str(p).strip("/")
    return out


def open_url(url: str, mode: str = "rb", allow_pipe: bool = False) -> IO[bytes]:
    """Opens a local path or any fsspec URL (``pipe:`` only when allowed)."""
    check_url(url, allow_pipe)
    if is_pipe(url):
        import webdataset  # noqa: F401,PLC0415 - only for explicit pipe: URLs

        return sys.modules["webdataset.gopen"].gopen_pipe(url, mode)
    if "://" not in url:
        return open(url, mode)  # noqa: SIM115 - caller closes; plain open is fastest locally
    return fsspec.open(url, mode).open()


def read_bytes(url: str) -> bytes:
    fs, path = fs_and_path(url)
    return fs.cat_file(path)


def read_json(url: str) -> Any:
    return json.loads(read_bytes(url).decode("utf-8"))


def exists(url: str) -> bool:
    fs, path = fs_and_path(url)
    return fs.exists(path)


def atomic_write(url: str, data: bytes) -> None:
    """Writes ``data`` to a temporary name beside ``url``, then renames it over.

    A crash leaves either the old file or the new one, never half of one.
    """
    fs, path = fs_and_path(url)
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


def write_json(url: str, obj: Any) -> None:
    atomic_write(url, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode("utf-8"))


def _fsspec_opener(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any) -> IO[bytes]:
    return fsspec.open(url, mode).open()


def _refuse_pipe(url: str, *_: Any, **__: Any) -> IO[bytes]:
    check_url(url, allow_pipe=False)
    raise AssertionError("unreachable")


def register_webdataset_handlers(allow_pipe: bool = False) -> None:
    """Makes ``webdataset.WebDataset("s3://...")`` open URLs through fsspec.

    Also replaces webdataset's ``pipe:`` opener with one that refuses, unless
    ``allow_pipe``; the registration is per process (call it in each worker
    that builds a webdataset pipeline; our loader does not need it).
    """
    import webdataset  # noqa: F401,PLC0415 - makes the module below importable

    gopen = sys.modules["webdataset.gopen"]
    for scheme in FSSPEC_SCHEMES:
        gopen.gopen_schemes[scheme] = _fsspec_opener
    if not allow_pipe:
        gopen.gopen_schemes["pipe"] = _refuse_pipe
