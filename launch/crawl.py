"""Fetches webtoon episode images from one host, politely, into <out>/<title>/<episode>/<NNN>.<ext>.

    python -m launch.crawl --out data/raw --url-list urls.tsv
    python -m launch.crawl --out data/raw --template 'https://host/{title}/{episode}/{index}.jpg' \\
        --titles tower,garden --episodes 1-20 --max-images 80

A URL list holds ``title,episode,url`` lines (CSV or tab-separated; a header,
blank lines and ``#`` comments allowed). A template ends an episode at the first
404. robots.txt is obeyed, requests are at least --rate-limit seconds apart,
429/5xx/network errors are retried with exponential backoff, a request ends at
--deadline however slowly the server sends, and a rerun skips
finished files without a request. Every URL is logged to <out>/crawl_log.jsonl;
the last line printed is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from datasets.crawl import DEFAULT_TYPES, CrawlConfig, crawl
from datasets.errors import DataError
from launch._args import int_list
from launch._args import fail
from trainer.run.lock import LockedError, local_folder_lock


def parse_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    d = CrawlConfig(out=".")
    p = argparse.ArgumentParser(prog="python -m launch.crawl", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="root folder of the images and the log")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--url-list", type=Path, help="file of title,episode,url lines")
    src.add_argument("--template", help="URL with {title}, {episode} and {index} fields")
    p.add_argument("--titles", type=parse_list, default=[], help="comma-separated titles (template)")
    p.add_argument("--episodes", type=int_list, default=[], help="episodes, e.g. 1-20 or 1,3 (template)")
    p.add_argument("--max-images", type=int, default=d.max_images, help="highest image index per episode")
    p.add_argument("--host", help="the only scheme://host[:port] contacted (default: the first URL's)")
    p.add_argument("--rate-limit", type=float, default=d.rate_limit_s, help="min seconds between requests")
    p.add_argument("--retries", type=int, default=d.retries, help="tries after a 429/5xx/network error")
    p.add_argument("--backoff", type=float, default=d.backoff_s, help="first backoff in seconds (doubles)")
    p.add_argument("--max-backoff", type=float, default=d.max_backoff_s, help="cap on one backoff wait")
    p.add_argument("--timeout", type=float, default=d.timeout_s,
                   help="socket timeout in seconds (connect, and each read)")
    p.add_argument("--deadline", type=float, default=None,
                   help="most seconds one request may take in all, from connect to its last byte, however "
                        "slowly the server sends (default: 2 x --timeout); a request cut there fails its URL "
                        "with reason 'deadline', without a retry")
    p.add_argument("--max-bytes", type=int, default=d.max_bytes, help="largest image accepted")
    p.add_argument("--allowed-types", type=parse_list, default=list(DEFAULT_TYPES),
                   help="comma-separated content types accepted")
    p.add_argument("--user-agent", default=d.user_agent)
    p.add_argument("--ignore-robots", action="store_true", help="do not fetch or obey robots.txt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = CrawlConfig(
        out=args.out, host=args.host, url_list=args.url_list, template=args.template,
        titles=args.titles, episodes=args.episodes, max_images=args.max_images,
        rate_limit_s=args.rate_limit, retries=args.retries, backoff_s=args.backoff,
        max_backoff_s=args.max_backoff, timeout_s=args.timeout, deadline_s=args.deadline, max_bytes=args.max_bytes,
        allowed_types=tuple(args.allowed_types), user_agent=args.user_agent,
        respect_robots=not args.ignore_robots, progress=not args.no_progress)
    lock = local_folder_lock(str(args.out), "python -m launch.crawl")
    try:
        if lock is not None:
            lock.acquire()  # two crawlers would write the same files and manifest
        summary = crawl(cfg)
    except (DataError, LockedError) as e:
        fail(f"error: {e}")
    finally:
        if lock is not None:
            lock.release()
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
