"""Polite webtoon image crawler: one host, robots.txt, a rate limit, retries and resume.

Fetches episode images into ``<out>/<title>/<episode>/<NNN>.<ext>`` (NNN: the
zero-padded image index; ext from the content type, else the URL) for the face
cropper. URLs come from a ``title,episode,url`` list or from a template such as
``https://host/{title}/{episode}/{index}.jpg``, where an episode ends at its first
404. A request ends at its deadline however slowly the server sends (the socket
timeout bounds each read only). Each URL's outcome is appended to
``<out>/crawl_log.jsonl``. Files are renamed
into place when complete, so a rerun skips them without a request; one crawler
per ``out`` at a time, as a run deletes the temporary files it finds there.
"""

from __future__ import annotations

import csv
import http.client
import json
import os
import string
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import urllib.robotparser
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from tqdm import tqdm

from datasets.deadline import Deadlines, watched_handlers
from datasets.errors import DataError

DEFAULT_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif")
EXT_BY_TYPE = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/gif": "gif"}
URL_EXTS = {"jpg": "jpg", "jpeg": "jpg", "png": "png", "webp": "webp", "gif": "gif"}
LOG_NAME = "crawl_log.jsonl"
TMP_SUFFIX = ".tmp"
CHUNK = 64 * 1024
ROBOTS_MAX_BYTES = 512 * 1024  # RFC 9309 asks crawlers to parse at least 500 KiB
TEMPLATE_FIELDS = {"title", "episode", "index"}

T = TypeVar("T")


@dataclass
class CrawlConfig:
    """What to fetch, from which host, and how politely."""

    out: str | Path
    """Root folder; images land in ``<out>/<title>/<episode>/<NNN>.<ext>``."""
    host: str | None = None
    """The only origin (``scheme://host[:port]``) ever contacted; default: the first URL's."""
    url_list: str | Path | None = None
    """File of ``title,episode,url`` lines (CSV or tab-separated); exclusive with ``template``."""
    template: str | None = None
    """URL with ``{title}``, ``{episode}`` and ``{index}`` fields; exclusive with ``url_list``."""
    titles: Sequence[str] = ()
    """Titles filled into ``template`` (URL-quoted there, as is in folder names)."""
    episodes: Sequence[int] = ()
    """Episode numbers filled into ``template``: a range or a list of ints."""
    max_images: int = 200
    """Highest image index tried per episode in template mode; the first 404 ends it sooner."""
    rate_limit_s: float = 1.0
    """Minimum seconds between the starts of two requests (robots.txt, retries, redirects too)."""
    retries: int = 4
    """Extra tries after a 429, a 5xx, a timeout or a broken connection."""
    backoff_s: float = 1.0
    """Wait before the first retry, doubled for each further one."""
    max_backoff_s: float = 60.0
    """Cap on one backoff wait, including one asked for by a ``Retry-After`` header."""
    timeout_s: float = 30.0
    """Socket timeout of one request (connect, and each read)."""
    deadline_s: float | None = None
    """Most seconds one request may take in all: connect, TLS, headers, redirects and body,
    however slowly the server trickles bytes in under ``timeout_s``. None: twice
    ``timeout_s``, so a stalled read still ends first, as a timeout that is retried. A
    request cut at its deadline fails the URL with reason ``deadline`` and is not retried
    (the server would trickle again), so no URL takes more than (retries + 1) deadlines
    plus the backoff waits, and a trickling one no more than one deadline."""
    max_bytes: int = 20 * 1024 * 1024
    """Largest image accepted, checked from Content-Length and again while streaming."""
    allowed_types: Sequence[str] = DEFAULT_TYPES
    """Content types accepted; anything else is refused with reason ``content_type``."""
    user_agent: str = "toonmix-crawler/1.0"
    """User-Agent sent with every request and matched against robots.txt rules."""
    respect_robots: bool = True
    """Obey robots.txt (Disallow and a Crawl-delay longer than ``rate_limit_s``)."""
    progress: bool = True
    """Show a tqdm progress bar over URLs."""


@dataclass(frozen=True)
class Job:
    """One image to fetch."""

    title: str
    """Folder name of the title."""
    episode: str
    """Folder name of the episode."""
    index: int
    """Image index within the episode, from 1; the file stem, zero-padded."""
    url: str
    """Where the image is fetched from."""
    line: int = 0
    """Line of the URL list it came from (0: from a template); named in errors."""


class _Failed(Exception):
    """A URL given up (``reason`` goes to the log, ``code``: the HTTP status if any)."""

    def __init__(self, reason: str, code: int | None = None):
        super().__init__(reason)
        self.reason, self.code = reason, code


class _Transient(_Failed):
    """A failure worth another try; ``retry_after``: the server's wish, in seconds."""

    def __init__(self, reason: str, code: int | None = None, retry_after: float | None = None):
        super().__init__(reason, code)
        self.retry_after = retry_after


def origin(url: str) -> str:
    """``scheme://host[:port]`` of an http(s) URL, default port dropped; ValueError otherwise."""
    p = urllib.parse.urlsplit(url.strip())
    scheme = p.scheme.lower()
    if scheme not in ("http", "https") or not p.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    host = f"[{p.hostname}]" if ":" in p.hostname else p.hostname
    port = p.port  # raises ValueError on a bad port
    default = 80 if scheme == "http" else 443
    return f"{scheme}://{host}" + (f":{port}" if port and port != default else "")


def _safe_name(name: str, what: str, where: str) -> str:
    # Titles and episodes become folder names: refuse anything that could leave <out>.
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise DataError(f"{where}: unusable {what} {name!r} (it names a folder)")
    return name


def read_url_list(path: str | Path) -> list[Job]:
    """Jobs of a ``title,episode,url`` file (CSV or tab-separated; header, blanks, ``#`` allowed).

    A URL's index is its position within its (title, episode), from 1. Raises
    DataError naming the line of the first malformed entry.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read URL list {path}: {e}") from None
    jobs: list[Job] = []
    counts: dict[tuple[str, str], int] = {}
    seen_entry = False
    for no, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        where = f"{path}:{no}"
        parts = [p.strip() for p in (text.split("\t") if "\t" in text else next(csv.reader([text])))]
        header, seen_entry = not seen_entry and [p.lower() for p in parts] == ["title", "episode", "url"], True
        if header:
            continue
        if len(parts) != 3 or not all(parts):
            raise DataError(f"{where}: expected title,episode,url, got {text!r}")
        title = _safe_name(parts[0], "title", where)
        episode = _safe_name(parts[1], "episode", where)
        try:
            origin(parts[2])
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None
        key = (title, episode)
        counts[key] = counts.get(key, 0) + 1
        jobs.append(Job(title, episode, counts[key], parts[2], no))
    return jobs


def check_template(template: str) -> None:
    """Raises DataError unless ``template`` is an http(s) URL using exactly the known fields."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        sample = template.format(title="t", episode=1, index=1)
        origin(sample)
    except (ValueError, KeyError, IndexError, AttributeError) as e:
        raise DataError(f"bad URL template {template!r}: {e}") from None
    if names - TEMPLATE_FIELDS:
        raise DataError(f"bad URL template {template!r}: use only {{title}}, {{episode}}, {{index}}")
    if "index" not in names:
        raise DataError(f"bad URL template {template!r}: it needs an {{index}} field")


def template_url(template: str, title: str, episode: int, index: int) -> str:
    """The URL of one image; the title is URL-quoted, numbers keep any format spec."""
    return template.format(title=urllib.parse.quote(title, safe=""), episode=episode, index=index)


def _config_host(cfg: CrawlConfig, first_url: str) -> str:
    if cfg.host is None:
        return origin(first_url)
    p = urllib.parse.urlsplit(cfg.host)
    try:
        if p.path not in ("", "/") or p.query or p.fragment:
            raise ValueError("give scheme://host[:port] only")
        return origin(cfg.host)
    except ValueError as e:
        raise DataError(f"bad host {cfg.host!r}: {e}") from None


def plan(cfg: CrawlConfig) -> tuple[str | None, list[Job] | None]:
    """Checks the inputs (DataError if unusable); returns the origin and the URL-list jobs.

    The jobs are None for a template; the origin is None for an empty URL list.
    """
    if (cfg.url_list is None) == (cfg.template is None):
        raise DataError("give exactly one of url_list or template")
    if cfg.url_list is not None:
        jobs = read_url_list(cfg.url_list)
        if not jobs:
            return None, jobs
        host = _config_host(cfg, jobs[0].url)
        for job in jobs:
            if origin(job.url) != host:
                raise DataError(f"{cfg.url_list}:{job.line}: {job.url} is outside the host {host}")
        return host, jobs
    check_template(cfg.template)
    episodes = list(cfg.episodes)
    if not cfg.titles or not episodes or cfg.max_images < 1:
        raise DataError("a template needs titles, episodes and max_images >= 1")
    host = _config_host(cfg, template_url(cfg.template, cfg.titles[0], episodes[0], 1))
    for title in cfg.titles:
        _safe_name(title, "title", "titles")
        for episode in episodes:  # fields in the host part could point anywhere
            url = template_url(cfg.template, title, episode, 1)
            if origin(url) != host:
                raise DataError(f"template URL {url} is outside the host {host}")
    return host, None


class Throttle:
    """Keeps the starts of two requests at least ``interval`` seconds apart."""

    def __init__(self, interval: float, clock: Callable[[], float], sleep: Callable[[float], None]):
        self.interval, self.clock, self.sleep = interval, clock, sleep
        self._last: float | None = None

    def wait(self) -> None:
        now = self.clock()
        if self._last is not None and self._last + self.interval > now:
            self.sleep(self._last + self.interval - now)
            now = self.clock()
        self._last = now


class _RedirectGuard(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only if ``check(url)`` finds nothing wrong, after ``before()``."""

    def __init__(self, check: Callable[[str], str | None], before: Callable[[], None]):
        self.check, self.before = check, before

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        reason = self.check(newurl)
        if reason is not None:
            fp.close()
            raise _Failed(reason)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            self.before()  # the next hop is a request of its own and obeys the rate limit
        return new


def _retry_after(headers) -> float | None:
    value = (headers or {}).get("Retry-After", "")
    # The HTTP-date form is rare for images; the exponential backoff stands in for it.
    return float(value) if value.strip().isdigit() else None


def _ext(content_type: str, url: str) -> str:
    if content_type in EXT_BY_TYPE:
        return EXT_BY_TYPE[content_type]
    suffix = Path(urllib.parse.urlsplit(url).path).suffix.lower().lstrip(".")
    return URL_EXTS.get(suffix, "bin")


def _finished(folder: Path, stem: str) -> Path | None:
    # Temporary files are hidden (".001.tmp") so this pattern never takes one for a result.
    for path in sorted(folder.glob(f"{stem}.*")):
        if path.is_file() and not path.name.endswith(TMP_SUFFIX):
            return path
    return None


def _read(resp, size: int) -> bytes:
    try:
        return resp.read(size)
    except TimeoutError:
        raise _Transient("timeout") from None
    except (OSError, http.client.HTTPException):
        raise _Transient("incomplete") from None


class Crawler:
    """Runs one crawl of ``cfg``; ``sleep`` and ``clock`` are injectable for tests."""

    def __init__(self, cfg: CrawlConfig, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.cfg, self.out, self.sleep = cfg, Path(cfg.out), sleep
        self.host, self.jobs = plan(cfg)
        self.throttle = Throttle(cfg.rate_limit_s, clock, sleep)
        self.deadline_s = cfg.deadline_s if cfg.deadline_s is not None else 2 * cfg.timeout_s
        if not self.deadline_s > 0:
            raise DataError(f"the request deadline must be > 0 s, got {self.deadline_s}")
        self._deadlines = Deadlines()
        self.opener = urllib.request.build_opener(_RedirectGuard(self._refusal, self.throttle.wait),
                                                  *watched_handlers(self._deadlines.add))
        self.robots: urllib.robotparser.RobotFileParser | None = None
        self.summary: dict = {"fetched": 0, "skipped_existing": 0, "robots": 0, "failed": {},
                              "episodes_ended": 0, "bytes": 0, "robots_txt": None,
                              "log": str(self.out / LOG_NAME)}
        self._log = None

    def run(self) -> dict:
        """Fetches everything planned; returns the summary (also logged line by line)."""
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in self.out.glob(f"*/*/.*{TMP_SUFFIX}"):
            stale.unlink(missing_ok=True)
        total = len(self.jobs) if self.jobs is not None else None
        with open(self.out / LOG_NAME, "a", encoding="utf-8") as self._log, self._deadlines, \
                tqdm(total=total, desc="crawl", unit="url", disable=not self.cfg.progress) as bar:
            if self.jobs is not None:
                for job in self.jobs:
                    self._run_job(job, end_on_404=False)
                    bar.update()
            else:
                self._run_template(bar)
        return self.summary

    def _run_template(self, bar: tqdm) -> None:
        cfg = self.cfg
        for title in cfg.titles:
            for episode in cfg.episodes:
                for index in range(1, cfg.max_images + 1):
                    url = template_url(cfg.template, title, episode, index)
                    status = self._run_job(Job(title, str(episode), index, url), end_on_404=True)
                    bar.update()
                    if status == "end":
                        break

    def _refusal(self, url: str) -> str | None:
        """Why ``url`` must not be requested (None: it may)."""
        try:
            if origin(url) != self.host:
                return "off_host_redirect"
        except ValueError:  # not http(s) at all
            return "off_host_redirect"
        if self.robots is not None and not self.robots.can_fetch(self.cfg.user_agent, url):
            return "robots"
        return None

    def _run_job(self, job: Job, end_on_404: bool) -> str:
        """Fetches one image unless it is done or refused; returns the logged status."""
        folder = self.out / job.title / job.episode
        stem = f"{job.index:03d}"
        done = _finished(folder, stem)
        if done is not None:
            return self._record(job, done, "skipped", "exists")
        if self.cfg.respect_robots and self.robots is None:
            self._load_robots()  # lazily, so a run with nothing left to fetch makes no request
        if self.robots is not None and not self.robots.can_fetch(self.cfg.user_agent, job.url):
            return self._record(job, folder / stem, "skipped", "robots")
        try:
            path, size = self._retrying(lambda: self._download(job, folder / stem))
        except _Failed as e:
            status = "end" if end_on_404 and e.code == 404 else "skipped" if e.reason == "robots" else "failed"
            if e.reason == "deadline":
                tqdm.write(f"[crawl] {job.url}: the request passed its {self.deadline_s:g} s deadline "
                           "(the server sends too slowly); failed without a retry", file=sys.stderr)
            return self._record(job, folder / stem, status, e.reason)
        return self._record(job, path, "fetched", None, size)

    def _record(self, job: Job, path: Path, status: str, reason: str | None, size: int = 0) -> str:
        s = self.summary
        key = {"fetched": "fetched", "end": "episodes_ended"}.get(status) or \
            {"exists": "skipped_existing", "robots": "robots"}.get(reason)
        if key:
            s[key] += 1
        else:
            s["failed"][reason] = s["failed"].get(reason, 0) + 1
        s["bytes"] += size
        entry = {"url": job.url, "path": path.relative_to(self.out).as_posix(), "status": status,
                 "reason": reason, "bytes": size}
        self._log.write(json.dumps(entry) + "\n")
        self._log.flush()  # so people can follow a long run with tail -f
        return status

    def _retrying(self, once: Callable[[], T]) -> T:
        """Calls ``once`` after the rate limit, again after a backoff while it fails transiently."""
        cfg = self.cfg
        for attempt in range(cfg.retries + 1):
            self.throttle.wait()
            try:
                with self._deadlines.request(self.deadline_s):
                    try:
                        return once()
                    except _Failed:
                        # Whatever the cut connection looked like (a short body, a reset): the deadline.
                        if self._deadlines.expired:
                            raise _Failed("deadline") from None
                        raise
            except _Transient as e:
                if attempt >= cfg.retries:
                    raise _Failed(e.reason, e.code) from None
                wait = cfg.backoff_s * 2 ** attempt
                if e.retry_after is not None:
                    wait = max(wait, e.retry_after)
                self.sleep(min(wait, cfg.max_backoff_s))
        raise AssertionError("unreachable")

    def _expired(self) -> None:
        # A body without a length that was cut at the deadline reads as complete.
        if self._deadlines.expired:
            raise _Failed("deadline")

    def _open(self, url: str, accept: str):
        req = urllib.request.Request(url, headers={"User-Agent": self.cfg.user_agent, "Accept": accept})
        try:
            return self.opener.open(req, timeout=self.cfg.timeout_s)
        except _Failed:
            raise
        except urllib.error.HTTPError as e:
            e.close()
            if e.code == 429 or e.code >= 500:
                raise _Transient(f"http_{e.code}", e.code, _retry_after(e.headers)) from None
            raise _Failed(f"http_{e.code}", e.code) from None
        except urllib.error.URLError as e:
            raise _Transient("timeout" if isinstance(e.reason, TimeoutError) else "connection") from None
        except TimeoutError:
            raise _Transient("timeout") from None
        except (OSError, http.client.HTTPException):
            raise _Transient("connection") from None

    def _download(self, job: Job, stem_path: Path) -> tuple[Path, int]:
        """One try at ``job``: checks the headers, then streams into a temporary file."""
        with self._open(job.url, ", ".join(self.cfg.allowed_types)) as resp:
            ctype = resp.headers.get_content_type()
            if ctype not in self.cfg.allowed_types:
                raise _Failed("content_type")
            length = resp.headers.get("Content-Length", "").strip()
            expected = int(length) if length.isdigit() else None
            if expected is not None and expected > self.cfg.max_bytes:
                raise _Failed("too_large")
            final = stem_path.with_name(f"{stem_path.name}.{_ext(ctype, job.url)}")
            return final, self._stream(resp, final, expected)

    def _stream(self, resp, final: Path, expected: int | None) -> int:
        # Written under a hidden temporary name and renamed when complete, so a final
        # name always holds a whole image, whatever stops the run.
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.stem}{TMP_SUFFIX}")
        count = 0
        try:
            with open(tmp, "wb") as f:
                while chunk := _read(resp, CHUNK):
                    count += len(chunk)
                    if count > self.cfg.max_bytes:  # Content-Length may be absent or wrong
                        raise _Failed("too_large")
                    f.write(chunk)
            if expected is not None and count != expected:
                # http.client's read(n) returns short at a cut connection instead of raising
                raise _Transient("incomplete")
            if count == 0:
                raise _Failed("empty")
            self._expired()
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            for folder in (final.parent, final.parent.parent):
                try:
                    folder.rmdir()  # only succeeds while empty: leaves no trace of a refusal
                except OSError:
                    break
            raise
        return count

    def _load_robots(self) -> None:
        url = f"{self.host}/robots.txt"
        rp = urllib.robotparser.RobotFileParser(url)

        def fetch() -> str:
            with self._open(url, "text/plain") as resp:
                text = _read(resp, ROBOTS_MAX_BYTES).decode("utf-8", errors="replace")
            self._expired()  # half a robots.txt could allow what the rest forbids
            return text

        try:
            rp.parse(self._retrying(fetch).splitlines())
            status = "ok"
        except _Failed as e:
            # As urllib.robotparser.read() does: 401/403 forbid all, other 4xx allow all;
            # an unreachable robots.txt (5xx, network) forbids all, as RFC 9309 asks.
            status = "forbidden" if e.code in (401, 403) else "missing" if e.code and e.code < 500 else "unavailable"
            rp.allow_all = status == "missing"
            rp.disallow_all = not rp.allow_all
        self.summary["robots_txt"] = status
        delay = rp.crawl_delay(self.cfg.user_agent)
        if delay is not None and float(delay) > self.throttle.interval:
            self.throttle.interval = float(delay)
        self.robots = rp


def crawl(cfg: CrawlConfig, *, sleep: Callable[[float], None] = time.sleep,
          clock: Callable[[], float] = time.monotonic) -> dict:
    """Fetches the images of ``cfg``; returns counts: fetched, skipped_existing, robots,
    failed (by reason), episodes_ended, bytes, robots_txt and the log path.

    Raises DataError for unusable inputs (a malformed URL list, a URL outside the
    host, a bad template) before any request.
    """
    return Crawler(cfg, sleep=sleep, clock=clock).run()
