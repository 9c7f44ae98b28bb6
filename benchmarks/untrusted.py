"""Feeds every crafted-file case to the command that reads it and counts clean refusals.

    python benchmarks/untrusted.py --quick

The cases (tests/untrusted_checkpoints.py, untrusted_pickles.py, untrusted_ingest.py) are the
ones the tests assert one by one: code in a checkpoint folder's metadata, memory bombs in
pickles and ``.pt`` archives, nested and cyclic pickle records, an output folder holding the
user's files, zip and pixel bombs in ingest, a slow crawl server, manifests that point
outside their folder. Each runs as ``python -m <command>`` in its own process (address space
capped at tests.untrusted_harness.MEMORY_LIMIT); the last line printed is one JSON object:
cases, refused_cleanly, code_executed, max_peak_mb, user_files_lost, and per case its exit
code, peak resident memory and seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.untrusted_checkpoints import CASES as CHECKPOINTS  # noqa: E402
from tests.untrusted_harness import run_attack  # noqa: E402
from tests.untrusted_ingest import CASES as INGEST  # noqa: E402
from tests.untrusted_pickles import CASES as PICKLES  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="accepted for symmetry with the other benchmarks: every case is small already")
    p.add_argument("--only", nargs="+", default=None, help="run only these case names")
    args = p.parse_args(argv)
    cases = [c for c in (*CHECKPOINTS, *PICKLES, *INGEST) if not args.only or c.name in args.only]
    rows = []
    for i, case in enumerate(cases, 1):
        with tempfile.TemporaryDirectory(prefix=f"untrusted-{case.name}-") as tmp, contextlib.ExitStack() as stack:
            attack = case.build(Path(tmp), stack)
            r = run_attack(case.name, attack)
            clean = r.refused_cleanly(attack)
        rows.append({"case": case.name, "exit_code": r.exit_code, "refused_cleanly": clean,
                     "code_executed": r.code_executed, "peak_mb": round(r.peak_mb, 1),
                     "seconds": round(r.seconds, 2), "user_files_lost": len(r.user_files_lost)})
        last = r.stderr.strip().splitlines()[-1:] or [""]
        print(f"[{i}/{len(cases)}] {case.name}: exit {r.exit_code}, {r.peak_mb:.0f} MB, {r.seconds:.1f} s, "
              f"{'refused cleanly' if clean else 'NOT refused cleanly'}: {last[0][:160]}", flush=True)
    summary = {"cases": len(rows), "refused_cleanly": sum(r["refused_cleanly"] for r in rows),
               "code_executed": sum(r["code_executed"] for r in rows),
               "max_peak_mb": max((r["peak_mb"] for r in rows), default=0.0),
               "user_files_lost": sum(r["user_files_lost"] for r in rows), "per_case": rows}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
