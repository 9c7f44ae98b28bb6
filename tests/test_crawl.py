"""The crawler against in-memory web sites on 127.0.0.1 that record every request."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from datasets.crawl import LOG_NAME, CrawlConfig, crawl
from datasets.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 3
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(200))
WEBP = b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x07" * 99


@dataclass
class R:
    """One canned response; ``mode`` says how the body goes out."""

    status: int = 200
    body: bytes = b""
    ctype: str | None = "image/jpeg"
    headers: dict = field(default_factory=dict)
    mode: str = "length"  # length | close (no length) | chunked | short (dies early) | hang


class Site:
    """Routes path -> responses (the last one repeats) and the log of (path, clock()) requests."""

    def __init__(self):
        self.routes: dict[str, list[R]] = {}
        self.requests: list[tuple[str, float]] = []
        self.sent: dict[str, int] = {}
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.clock = time.monotonic
        self.origin = ""

    def add(self, path: str, *responses: R) -> None:
        self.routes[path] = list(responses)

    def next(self, path: str) -> R:
        with self.lock:
            queue = self.routes.get(path)
            if not queue:
                return R(404, b"not found", "text/plain")
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def paths(self) -> list[str]:
        return [p for p, _ in self.requests]

    def url(self, path: str) -> str:
        return self.origin + path


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        site: Site = self.server.site
        with site.lock:
            site.requests.append((self.path, site.clock()))
        r = site.next(self.path)
        self.send_response(r.status)
        if r.ctype:
            self.send_header("Content-Type", r.ctype)
        for k, v in r.headers.items():
            self.send_header(k, v)
        if r.mode in ("length", "short", "hang"):
            self.send_header("Content-Length", str(len(r.body)))
        if r.mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        sent = 0
        try:
            body = memoryview(r.body)
            if r.mode in ("short", "hang"):
                body = body[: len(body) // 2]
            for i in range(0, len(body), 65536):
                piece = body[i:i + 65536]
                if r.mode == "chunked":
                    self.wfile.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
                else:
                    self.wfile.write(piece)
                sent += len(piece)
            if r.mode == "chunked":
                self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            if r.mode == "hang":
                site.release.wait(10)
        except OSError:
            pass
        finally:
            site.sent[self.path] = sent


@pytest.fixture
def make_site():
    servers = []

    def make() -> Site:
        site = Site()
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.site = site
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()  # quick shutdown
        site.origin = f"http://127.0.0.1:{server.server_port}"
        servers.append(server)
        return site

    yield make
    for server in servers:
        server.site.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def site(make_site) -> Site:
    return make_site()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


class FakeTime:
    """A clock that only moves when slept on, so request spacing can be checked exactly."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def write_list(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "urls.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def run(tmp_path: Path, site: Site | None = None, fake: FakeTime | None = None, **kw) -> dict:
    """Crawls with fake time (no real waiting); the site records requests on the same clock."""
    fake = fake or FakeTime()
    if site is not None:
        site.clock = fake.clock
    kw.setdefault("rate_limit_s", 1.0)
    kw.setdefault("timeout_s", 5.0)
    cfg = CrawlConfig(out=tmp_path / "out", progress=False, **kw)
    return crawl(cfg, sleep=fake.sleep, clock=fake.clock)


def files(tmp_path: Path) -> dict[str, bytes]:
    out = tmp_path / "out"
    return {p.relative_to(out).as_posix(): p.read_bytes()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != LOG_NAME}


def log(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "out" / LOG_NAME).read_text().splitlines()]


def diffs(site: Site) -> list[float]:
    times = [t for _, t in site.requests]
    return [b - a for a, b in zip(times, times[1:])]


def one_url(tmp_path: Path, site: Site, path: str) -> Path:
    return write_list(tmp_path, [f"tower,1,{site.url(path)}"])


# ---------------------------------------------------------------- inputs


def test_url_list_writes_the_served_bytes_in_the_layout_and_logs_each_url(tmp_path, site):
    site.add("/t/1/a.jpg", R(body=JPEG))
    site.add("/t/1/b", R(body=PNG, ctype="image/png"))
    site.add("/g/x.webp", R(body=WEBP, ctype="image/webp; charset=binary"))
    urls = write_list(tmp_path, [
        "title,episode,url", "# a comment", "",
        f"tower,1,{site.url('/t/1/a.jpg')}",
        f"garden\tep2\t{site.url('/g/x.webp')}",
        f"tower,1,{site.url('/t/1/b')}",
    ])
    summary = run(tmp_path, site, url_list=urls)
    assert files(tmp_path) == {"tower/1/001.jpg": JPEG, "tower/1/002.png": PNG, "garden/ep2/001.webp": WEBP}
    assert site.paths() == ["/robots.txt", "/t/1/a.jpg", "/g/x.webp", "/t/1/b"]
    assert summary["fetched"] == 3 and summary["failed"] == {} and summary["robots_txt"] == "missing"
    assert summary["bytes"] == len(JPEG) + len(PNG) + len(WEBP)
    assert [(e["path"], e["status"], e["reason"], e["bytes"]) for e in log(tmp_path)] == [
        ("tower/1/001.jpg", "fetched", None, len(JPEG)),
        ("garden/ep2/001.webp", "fetched", None, len(WEBP)),
        ("tower/1/002.png", "fetched", None, len(PNG)),
    ]


@pytest.mark.parametrize("bad", ["tower,1", "tower,,http://127.0.0.1:1/a.jpg", "tower,1,ftp://127.0.0.1/a.jpg",
                                 "..,1,http://127.0.0.1:1/a.jpg", "tower,1,http://127.0.0.1:1/a.jpg,extra"])
def test_a_malformed_url_list_line_raises_data_error_naming_its_line(tmp_path, bad):
    urls = write_list(tmp_path, ["title,episode,url", "# comment", "tower,1,http://127.0.0.1:1/a.jpg", bad])
    with pytest.raises(DataError, match=r"urls\.csv:4:"):
        run(tmp_path, url_list=urls)
    assert not (tmp_path / "out").exists()


def test_a_url_outside_the_host_raises_data_error_before_any_request(tmp_path, site, make_site):
    other = make_site()
    urls = write_list(tmp_path, [f"tower,1,{site.url('/a.jpg')}", f"tower,1,{other.url('/b.jpg')}"])
    with pytest.raises(DataError, match=r"urls\.csv:2:.*outside the host"):
        run(tmp_path, site, url_list=urls)
    with pytest.raises(DataError, match=r"urls\.csv:1:"):
        run(tmp_path, site, url_list=urls, host=other.origin)
    assert site.requests == [] and other.requests == []


@pytest.mark.parametrize("template", ["{title}/{episode}.jpg", "/{title}/{episode}/1.jpg", "/{chapter}/{index}.jpg",
                                      "/{title/{index}.jpg", "/{title.upper}/{index}.jpg", "/{}/{index}.jpg"])
def test_a_bad_template_raises_data_error(tmp_path, site, template):
    url = template if template.startswith("{") else site.origin + template
    with pytest.raises(DataError, match="template"):
        run(tmp_path, site, template=url, titles=["tower"], episodes=[1], max_images=3)
    assert site.requests == []


def test_a_template_outside_the_configured_host_raises(tmp_path, site, make_site):
    other = make_site()
    with pytest.raises(DataError, match="outside the host"):
        run(tmp_path, site, template=other.origin + "/{title}/{episode}/{index}.jpg", host=site.origin,
            titles=["tower"], episodes=[1], max_images=3)


# ---------------------------------------------------------------- robots.txt and rate limit


def test_a_robots_disallowed_path_is_skipped_and_never_requested(tmp_path, site):
    site.add("/robots.txt", R(body=b"User-agent: *\nDisallow: /private/\n", ctype="text/plain"))
    site.add("/pub/1.jpg", R(body=JPEG))
    site.add("/private/2.jpg", R(body=PNG))
    urls = write_list(tmp_path, [f"tower,1,{site.url('/pub/1.jpg')}", f"tower,1,{site.url('/private/2.jpg')}"])
    summary = run(tmp_path, site, url_list=urls)
    assert site.paths() == ["/robots.txt", "/pub/1.jpg"]
    assert files(tmp_path) == {"tower/1/001.jpg": JPEG}
    assert summary["robots"] == 1 and summary["robots_txt"] == "ok"
    assert log(tmp_path)[1]["status"] == "skipped" and log(tmp_path)[1]["reason"] == "robots"


def test_robots_rules_for_our_user_agent_apply(tmp_path, site):
    site.add("/robots.txt", R(body=b"User-agent: toonmix-crawler\nDisallow: /\n\nUser-agent: *\nDisallow:\n",
                              ctype="text/plain"))
    site.add("/a.jpg", R(body=JPEG))
    summary = run(tmp_path, site, url_list=one_url(tmp_path, site, "/a.jpg"))
    assert site.paths() == ["/robots.txt"] and summary["robots"] == 1


def test_an_unreachable_robots_txt_forbids_all_and_respect_robots_false_skips_it(tmp_path, site):
    site.add("/robots.txt", R(503, b"busy", "text/plain"))
    site.add("/a.jpg", R(body=JPEG))
    urls = one_url(tmp_path, site, "/a.jpg")
    summary = run(tmp_path, site, url_list=urls, retries=1)
    assert site.paths() == ["/robots.txt"] * 2
    assert summary["robots_txt"] == "unavailable" and summary["robots"] == 1 and files(tmp_path) == {}
    summary = run(tmp_path, site, url_list=urls, respect_robots=False)
    assert site.paths()[2:] == ["/a.jpg"] and summary["fetched"] == 1


def test_a_crawl_delay_longer_than_the_rate_limit_is_used(tmp_path, site):
    site.add("/robots.txt", R(body=b"User-agent: *\nCrawl-delay: 3\nDisallow: /private/\n", ctype="text/plain"))
    rows = []
    for i in range(3):
        site.add(f"/{i}.jpg", R(body=JPEG))
        rows.append(f"tower,1,{site.url(f'/{i}.jpg')}")
    run(tmp_path, site, url_list=write_list(tmp_path, rows), rate_limit_s=1.0)
    assert len(site.requests) == 4 and diffs(site) == [3.0, 3.0, 3.0]


def test_requests_are_spaced_by_the_rate_limit_including_robots_retries_and_redirects(tmp_path, site):
    site.add("/a.jpg", R(503, b"", "text/plain"), R(body=JPEG))
    site.add("/old.jpg", R(301, b"", "text/plain", {"Location": "/new.jpg"}))
    site.add("/new.jpg", R(body=PNG, ctype="image/png"))
    urls = write_list(tmp_path, [f"tower,1,{site.url('/a.jpg')}", f"tower,1,{site.url('/old.jpg')}"])
    fake = FakeTime()
    summary = run(tmp_path, site, fake, url_list=urls, rate_limit_s=2.0, backoff_s=0.5)
    assert site.paths() == ["/robots.txt", "/a.jpg", "/a.jpg", "/old.jpg", "/new.jpg"]
    assert diffs(site) == [2.0, 2.0, 2.0, 2.0]
    assert fake.sleeps == [2.0, 0.5, 1.5, 2.0, 2.0]  # throttle, backoff, rest of the throttle, ...
    assert summary["fetched"] == 2 and files(tmp_path) == {"tower/1/001.jpg": JPEG, "tower/1/002.png": PNG}


def test_rate_limit_holds_in_real_time_on_the_server_side(tmp_path, site):
    rows = []
    for i in range(5):
        site.add(f"/{i}.jpg", R(body=JPEG))
        rows.append(f"tower,1,{site.url(f'/{i}.jpg')}")
    cfg = CrawlConfig(out=tmp_path / "out", url_list=write_list(tmp_path, rows), rate_limit_s=0.05, progress=False)
    assert crawl(cfg)["fetched"] == 5
    assert len(site.requests) == 6 and min(diffs(site)) >= 0.045  # a little slack for delivery jitter


# ---------------------------------------------------------------- retries


def test_503_then_200_succeeds_after_exponential_backoff(tmp_path, site):
    site.add("/a.jpg", R(503, b"", "text/plain"), R(503, b"", "text/plain"), R(body=JPEG))
    fake = FakeTime()
    summary = run(tmp_path, site, fake, url_list=one_url(tmp_path, site, "/a.jpg"), rate_limit_s=0, backoff_s=1.0)
    assert site.paths().count("/a.jpg") == 3 and fake.sleeps == [1.0, 2.0]
    assert summary["fetched"] == 1 and files(tmp_path) == {"tower/1/001.jpg": JPEG}


def test_retry_after_is_honoured_and_capped(tmp_path, site):
    site.add("/a.jpg", R(429, b"", "text/plain", {"Retry-After": "7"}), R(body=JPEG))
    site.add("/b.jpg", R(503, b"", "text/plain", {"Retry-After": "1000"}), R(body=PNG, ctype="image/png"))
    urls = write_list(tmp_path, [f"tower,1,{site.url('/a.jpg')}", f"tower,1,{site.url('/b.jpg')}"])
    fake = FakeTime()
    summary = run(tmp_path, site, fake, url_list=urls, rate_limit_s=0, max_backoff_s=30.0)
    assert fake.sleeps == [7.0, 30.0] and summary["fetched"] == 2


def test_after_the_last_retry_the_url_fails_and_the_run_goes_on(tmp_path, site):
    site.add("/a.jpg", R(503, b"", "text/plain"))
    site.add("/b.jpg", R(body=JPEG))
    urls = write_list(tmp_path, [f"tower,1,{site.url('/a.jpg')}", f"tower,1,{site.url('/b.jpg')}"])
    fake = FakeTime()
    summary = run(tmp_path, site, fake, url_list=urls, rate_limit_s=0, retries=2)
    assert site.paths().count("/a.jpg") == 3 and fake.sleeps == [1.0, 2.0]
    assert summary["failed"] == {"http_503": 1} and summary["fetched"] == 1
    assert files(tmp_path) == {"tower/1/002.jpg": JPEG}
    assert [(e["status"], e["reason"]) for e in log(tmp_path)] == [("failed", "http_503"), ("fetched", None)]


@pytest.mark.parametrize("status", [404, 403, 410])
def test_other_4xx_are_requested_exactly_once(tmp_path, site, status):
    site.add("/a.jpg", R(status, b"no", "text/plain"))
    fake = FakeTime()
    summary = run(tmp_path, site, fake, url_list=one_url(tmp_path, site, "/a.jpg"), rate_limit_s=0)
    assert site.paths().count("/a.jpg") == 1 and fake.sleeps == []
    assert summary["failed"] == {f"http_{status}": 1} and files(tmp_path) == {}


def test_connection_errors_are_retried(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the crawl: connections are refused
    urls = write_list(tmp_path, [f"tower,1,http://127.0.0.1:{port}/a.jpg"])
    fake = FakeTime()
    summary = run(tmp_path, fake=fake, url_list=urls, rate_limit_s=0, retries=2, respect_robots=False)
    assert fake.sleeps == [1.0, 2.0] and summary["failed"] == {"connection": 1}


def test_a_stalled_or_cut_body_is_retried_then_fails_leaving_nothing(tmp_path, site):
    site.add("/slow.jpg", R(body=JPEG * 10, mode="hang"))
    site.add("/cut.jpg", R(body=JPEG * 10, mode="short"))
    urls = write_list(tmp_path, [f"tower,1,{site.url('/slow.jpg')}", f"tower,1,{site.url('/cut.jpg')}"])
    summary = run(tmp_path, site, url_list=urls, rate_limit_s=0, retries=1, timeout_s=0.2)
    assert site.paths().count("/slow.jpg") == 2 and site.paths().count("/cut.jpg") == 2
    assert summary["failed"] == {"timeout": 1, "incomplete": 1}
    assert [p.name for p in (tmp_path / "out").rglob("*")] == [LOG_NAME]


# ---------------------------------------------------------------- what is accepted


def test_an_off_host_redirect_is_refused_and_the_other_host_never_contacted(tmp_path, site, make_site):
    other = make_site()
    other.add("/a.jpg", R(body=JPEG))
    site.add("/a.jpg", R(302, b"", "text/plain", {"Location": other.url("/a.jpg")}))
    summary = run(tmp_path, site, url_list=one_url(tmp_path, site, "/a.jpg"))
    assert summary["failed"] == {"off_host_redirect": 1} and files(tmp_path) == {}
    assert other.requests == [] and site.paths() == ["/robots.txt", "/a.jpg"]


def test_a_same_host_redirect_into_a_disallowed_path_is_refused(tmp_path, site):
    site.add("/robots.txt", R(body=b"User-agent: *\nDisallow: /private/\n", ctype="text/plain"))
    site.add("/a.jpg", R(302, b"", "text/plain", {"Location": "/private/a.jpg"}))
    site.add("/private/a.jpg", R(body=JPEG))
    summary = run(tmp_path, site, url_list=one_url(tmp_path, site, "/a.jpg"))
    assert site.paths() == ["/robots.txt", "/a.jpg"] and summary["robots"] == 1 and files(tmp_path) == {}


def test_a_disallowed_content_type_is_refused(tmp_path, site):
    site.add("/a.jpg", R(body=b"<html>login</html>", ctype="text/html"))
    summary = run(tmp_path, site, url_list=one_url(tmp_path, site, "/a.jpg"))
    assert summary["failed"] == {"content_type": 1} and site.paths().count("/a.jpg") == 1
    assert [p.name for p in (tmp_path / "out").rglob("*")] == [LOG_NAME]


def test_a_content_length_over_the_limit_is_refused(tmp_path, site):
    site.add("/a.jpg", R(body=bytes(5000)))
    summary = run(tmp_path, site, url_list=one_url(tmp_path, site, "/a.jpg"), max_bytes=1000)
    assert summary["failed"] == {"too_large": 1} and site.paths().count("/a.jpg") == 1
    assert [p.name for p in (tmp_path / "out").rglob("*")] == [LOG_NAME]


@pytest.mark.parametrize("mode", ["close", "chunked"])
def test_a_body_without_length_is_cut_off_mid_stream_at_the_limit(tmp_path, site, mode):
    big = bytes(32 * 1024 * 1024)
    site.add("/a.jpg", R(body=big, mode=mode))
    summary = run(tmp_path, site, url_list=one_url(tmp_path, site, "/a.jpg"), max_bytes=100_000)
    assert summary["failed"] == {"too_large": 1} and site.paths().count("/a.jpg") == 1
    assert [p.name for p in (tmp_path / "out").rglob("*")] == [LOG_NAME]
    deadline = time.monotonic() + 5
    while "/a.jpg" not in site.sent and time.monotonic() < deadline:
        time.sleep(0.01)
    assert site.sent["/a.jpg"] < len(big)  # the client hung up early


# ---------------------------------------------------------------- template mode


def test_a_template_episode_ends_at_its_first_404(tmp_path, site):
    for ep, n in ((1, 3), (2, 1)):
        for i in range(1, n + 1):
            site.add(f"/tower%20of%20god/{ep}/{i}.jpg", R(body=JPEG[:-i]))
    summary = run(tmp_path, site, template=site.origin + "/{title}/{episode}/{index}.jpg",
                  titles=["tower of god"], episodes=range(1, 3), max_images=3)
    assert site.paths() == ["/robots.txt"] + [f"/tower%20of%20god/{p}.jpg" for p in ("1/1", "1/2", "1/3", "2/1", "2/2")]
    assert files(tmp_path) == {"tower of god/1/001.jpg": JPEG[:-1], "tower of god/1/002.jpg": JPEG[:-2],
                               "tower of god/1/003.jpg": JPEG[:-3], "tower of god/2/001.jpg": JPEG[:-1]}
    assert summary["fetched"] == 4 and summary["episodes_ended"] == 1 and summary["failed"] == {}
    assert log(tmp_path)[-1]["status"] == "end"


# ---------------------------------------------------------------- resume


def test_a_rerun_makes_no_request_for_finished_files_and_redoes_a_stale_tmp(tmp_path, site):
    rows = []
    for i, body in enumerate((JPEG, PNG, JPEG[::-1]), 1):
        site.add(f"/{i}", R(body=body, ctype="image/png" if body is PNG else "image/jpeg"))
        rows.append(f"tower,1,{site.url(f'/{i}')}")
    urls = write_list(tmp_path, rows)
    assert run(tmp_path, site, url_list=urls)["fetched"] == 3
    before = len(site.requests)
    summary = run(tmp_path, site, url_list=urls)
    assert len(site.requests) == before and summary["skipped_existing"] == 3 and summary["fetched"] == 0

    folder = tmp_path / "out" / "tower" / "1"
    (folder / "002.png").unlink()
    (folder / ".002.tmp").write_bytes(PNG[:10])  # what a killed run leaves
    (folder / ".009.tmp").write_bytes(b"junk")
    summary = run(tmp_path, site, url_list=urls)
    assert site.paths()[before:] == ["/robots.txt", "/2"]
    assert summary["fetched"] == 1 and summary["skipped_existing"] == 2
    assert files(tmp_path) == {"tower/1/001.jpg": JPEG, "tower/1/002.png": PNG, "tower/1/003.jpg": JPEG[::-1]}


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer")
def test_an_interrupt_mid_download_leaves_no_partial_file(tmp_path, site):
    site.add("/1.jpg", R(body=JPEG))
    site.add("/2.jpg", R(body=JPEG * 200, mode="hang"))  # half the body, then silence
    urls = write_list(tmp_path, [f"tower,1,{site.url(f'/{i}.jpg')}" for i in (1, 2)])
    folder = tmp_path / "out" / "tower" / "1"
    seen = []

    def interrupt(signum, frame):
        seen.extend(sorted(p.name for p in folder.iterdir()))
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path, site, url_list=urls, rate_limit_s=0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert seen == [".002.tmp", "001.jpg"]  # the interrupt came while streaming
    assert files(tmp_path) == {"tower/1/001.jpg": JPEG}
    site.add("/2.jpg", R(body=JPEG * 200))
    before = len(site.requests)
    summary = run(tmp_path, site, url_list=urls, rate_limit_s=0)
    assert site.paths()[before:] == ["/robots.txt", "/2.jpg"] and summary["skipped_existing"] == 1
    assert files(tmp_path) == {"tower/1/001.jpg": JPEG, "tower/1/002.jpg": JPEG * 200}


# ---------------------------------------------------------------- command line


def test_cli_help_exits_zero():
    out = subprocess.run([sys.executable, "-m", "launch.crawl", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "--url-list" in out.stdout and "--rate-limit" in out.stdout


def test_cli_crawls_and_prints_a_json_summary(tmp_path, site):
    site.add("/a.jpg", R(body=JPEG))
    urls = one_url(tmp_path, site, "/a.jpg")
    cmd = [sys.executable, "-m", "launch.crawl", "--out", str(tmp_path / "out"), "--url-list", str(urls),
           "--rate-limit", "0", "--no-progress"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["fetched"] == 1 and files(tmp_path) == {"tower/1/001.jpg": JPEG}
    urls.write_text("tower,1\n")
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "urls.csv:1:" in out.stderr
