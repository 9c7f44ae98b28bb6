"""Injects the faults clusters cause into short GAN runs and measures what survives them.

    python benchmarks/faults.py --quick      # 32 px on the CPU, under 4 minutes on 2 cores

Faults (each in its own run folder, tiny 32 px GAN, gloo on the CPU):
  sigterm         SIGTERM to every process of a 2-rank torchrun run at a step the benchmark does not choose
  stop_file       the stop file appearing in a 1-process run
  launcher_killed kill -9 of the launcher of a 1-process run (the trainer must stop by itself)
  rank_killed     kill -9 of rank 1 of a 2-rank run (rank 0 must exit within run.collective_timeout_s)
  rank_stalled    SIGSTOP of rank 1 of a 2-rank run (the same, through the process-group timeout)
  ckpt_*          a checkpoint write cut short before any shard, before the rank file, before the
                  marker, by a full disk (ENOSPC) and while pruning
  lock_*          a second writer on a locked run folder; a stale lock of a dead process

Each interrupted run is then resumed with --resume auto. A graceful stop (sigterm, stop_file,
launcher_killed) must end bitwise where an uninterrupted run of the same length ends; its
steps lost are (the last step the interrupted run logged) - (the step its resume started
from): 0 when the stop saved the step in flight, -1 when the log lacks either line.
A crash (rank_killed, rank_stalled) resumes, in one process, from the last complete checkpoint. The last line
printed is one JSON object: faults_injected, runs_recovered, steps_lost (target 0),
orphans_left (target 0), max_seconds_to_exit_after_rank_death, and per fault its outcome.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.data_fixtures import face_shards  # noqa: E402
from tests.run_fixtures import flat_checkpoint, latest_ckpt  # noqa: E402

STEP_KIMG = 0.008  # tiny.yaml's global batch of 8
TIMEOUT_S = 6


def gan_argv(shards: str, run: Path, steps: int, *extra: str) -> list[str]:
    return ["-m", "launch.train_gan", "--config", "launch/configs/tiny.yaml", f"loader.data={shards}",
            f"run.dir={run}", f"run.total_kimg={steps * STEP_KIMG}", f"run.tick_kimg={2 * STEP_KIMG}",
            "run.ckpt_ticks=100", "loss.r1_interval=2", "loss.pl_interval=2", "loader.workers=0", "ada.p=0.2",
            f"run.collective_timeout_s={TIMEOUT_S}", *extra]


def env(**extra: str) -> dict:
    return {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def torchrun(n: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)]


def start(cmd: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, **kw)


def wait_for_tick(run_dir: Path, proc: subprocess.Popen, deadline_s: float = 120) -> None:
    stats = run_dir / "stats.jsonl"
    end = time.time() + deadline_s
    while time.time() < end and proc.poll() is None and not (stats.is_file() and stats.read_text().strip()):
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children(pid: int) -> list[int]:
    return sorted(int(p) for p in run(["pgrep", "-P", str(pid)]).stdout.split())


def same_final_state(a: Path, b: Path, tmp: Path) -> bool:
    fa, fb = flat_checkpoint(latest_ckpt(a), tmp / "fa.pt"), flat_checkpoint(latest_ckpt(b), tmp / "fb.pt")
    import torch

    return set(fa) == set(fb) and all(torch.equal(fa[k], fb[k]) if torch.is_tensor(fa[k]) else fa[k] == fb[k]
                                      for k in fa)


def steps_lost(run_dir: Path) -> int:
    """Steps the interrupted run had reached (its tick lines and the checkpoint its stop wrote)
    minus the step the resumed run started from (its "resumed from .../ckpt-N" line); -1 when
    either is missing from the log."""
    log = (run_dir / "log.txt").read_text()
    first, _, after = log.partition("resumed from ")
    reached = [int(s) for s in re.findall(r"tick \d+ kimg [\d.]+ step (\d+)", first)]
    reached += [int(s) for s in re.findall(r"checkpoint \S*ckpt-(\d+)", first)]
    resumed = re.match(r"\S*ckpt-(\d+)", after)
    return max(reached) - int(resumed[1]) if reached and resumed else -1


def graceful(name: str, tmp: Path, shards: str, ref: Path, world: int, steps: int, interrupt) -> dict:
    """Starts a run, interrupts it with ``interrupt(proc, run_dir) -> orphans``, resumes, compares."""
    run_dir = tmp / name
    cmd = (torchrun(world) if world > 1 else [sys.executable]) + gan_argv(shards, run_dir, steps)
    proc = start(cmd, env=env(), start_new_session=True)
    wait_for_tick(run_dir, proc)
    orphans = interrupt(proc, run_dir)
    proc.wait(timeout=180)
    r = run((torchrun(world) if world > 1 else [sys.executable]) + gan_argv(shards, run_dir, steps, "--resume", "auto"),
            env=env())
    same = r.returncode == 0 and same_final_state(ref, run_dir, tmp)
    return {"fault": name, "recovered": bool(same), "steps_lost": steps_lost(run_dir), "orphans": orphans,
            "first_exit": proc.returncode}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the sizes above (the only ones: faults do not scale)")
    p.parse_args(argv)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="faults-") as t:
        tmp = Path(t)
        shards = face_shards(tmp / "data", 32, 32)
        steps = 12
        print("[faults] uninterrupted references (1 and 2 processes, side by side)", flush=True)
        ref1, ref2 = tmp / "ref1", tmp / "ref2"
        # One thread per process: running both at once changes no result, only the wall time.
        refs = [start((torchrun(world) if world > 1 else [sys.executable]) + gan_argv(shards, ref, steps), env=env())
                for world, ref in ((1, ref1), (2, ref2))]
        for proc in refs:
            out = proc.communicate(timeout=600)[0]
            assert proc.returncode == 0, out[-3000:]

        def sigterm(proc, run_dir):
            os.killpg(proc.pid, signal.SIGTERM)
            return 0

        def stop_file(proc, run_dir):
            (tmp / "STOP").touch()
            proc.wait(timeout=180)
            (tmp / "STOP").unlink()  # as the Slurm scripts do when the next slice starts
            return 0

        def launcher_killed(proc, run_dir):
            trainer = children(proc.pid)[0]
            proc.kill()
            end = time.time() + 30
            while time.time() < end and alive(trainer):
                time.sleep(0.1)
            return int(alive(trainer))

        rows.append(graceful("sigterm", tmp, shards, ref2, 2, steps, sigterm))
        print(f"[faults] {rows[-1]}", flush=True)
        os.environ["TOONMIX_STOP_FILE"] = str(tmp / "STOP")
        rows.append(graceful("stop_file", tmp, shards, ref1, 1, steps, stop_file))
        del os.environ["TOONMIX_STOP_FILE"]
        print(f"[faults] {rows[-1]}", flush=True)
        launcher = [sys.executable, "-c", "import os,subprocess,sys,time;"
                    "subprocess.Popen(sys.argv[1:], env={**os.environ, 'TOONMIX_WATCH_PARENT': '1'});time.sleep(600)",
                    sys.executable]
        run_dir = tmp / "launcher_killed"
        proc = start(launcher + gan_argv(shards, run_dir, steps), env=env(), start_new_session=True)
        wait_for_tick(run_dir, proc)
        orphans = launcher_killed(proc, run_dir)
        proc.wait()
        r = run([sys.executable] + gan_argv(shards, run_dir, steps, "--resume", "auto"), env=env())
        same = r.returncode == 0 and same_final_state(ref1, run_dir, tmp)
        rows.append({"fault": "launcher_killed", "recovered": same, "steps_lost": steps_lost(run_dir),
                     "orphans": orphans})
        print(f"[faults] {rows[-1]}", flush=True)

        for how in ("SIGKILL", "SIGSTOP"):
            name = "rank_killed" if how == "SIGKILL" else "rank_stalled"
            run_dir = tmp / name
            proc = start(torchrun(2) + gan_argv(shards, run_dir, 100000, "run.ckpt_ticks=1"), env=env(),
                         start_new_session=True)
            end = time.time() + 120  # after a complete checkpoint, so that the resume has one to start from
            while time.time() < end and proc.poll() is None and not list(run_dir.glob("checkpoints/*/COMPLETE")):
                time.sleep(0.1)
            workers = children(proc.pid)
            os.kill(workers[1], getattr(signal, how))
            hit = time.time()
            while time.time() - hit < 60 and alive(workers[0]):
                time.sleep(0.05)
            seconds = time.time() - hit
            if how == "SIGSTOP":
                os.kill(workers[1], signal.SIGKILL)
            out = proc.communicate(timeout=120)[0]
            # One process resumes the 2-rank checkpoint (a crash's resume need not be bitwise, and one
            # process starts faster than torchrun's two).
            r = run([sys.executable] + gan_argv(shards, run_dir, 6, "--resume", "auto"), env=env())
            ok = r.returncode == 0 and "resumed from" in r.stdout + r.stderr
            if not ok:
                print(f"[faults] {name}: the resume failed (exit {r.returncode}):\n{(r.stdout + r.stderr)[-1500:]}")
            named = re.search(r"rank\(s\) (behind|gone): 1 \([^)]*\)", out)
            rows.append({"fault": name, "recovered": ok,
                         "seconds_to_exit": round(seconds, 1), "orphans": int(alive(workers[0])),
                         "message": "a collective failed" in out, "names_rank_1": named[0] if named else None})
            print(f"[faults] {rows[-1]}", flush=True)

        r = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_checkpoint.py", "tests/test_stop.py",
                 "-k", "cut_short or locked_folder"], env=env())
        passed = int((re.search(r"(\d+) passed", r.stdout) or [0, 0])[1])
        failed = int((re.search(r"(\d+) failed", r.stdout) or [0, 0])[1])
        rows.append({"fault": "ckpt_cut_short x5 + lock x3 (tests/test_checkpoint.py, tests/test_stop.py)",
                     "injected": passed + failed + 2, "recovered": failed == 0 and passed == 6})
        print(f"[faults] {rows[-1]}", flush=True)

    deaths = [r["seconds_to_exit"] for r in rows if "seconds_to_exit" in r]
    summary = {"faults_injected": sum(r.get("injected", 1) for r in rows),
               "runs_recovered": sum(r.get("injected", 1) if r["recovered"] else 0 for r in rows),
               "steps_lost": sum(r["steps_lost"] for r in rows if "steps_lost" in r),
               "orphans_left": sum(r.get("orphans", 0) for r in rows),
               "max_seconds_to_exit_after_rank_death": max(deaths, default=None),
               "collective_timeout_s": TIMEOUT_S, "per_fault": rows}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
