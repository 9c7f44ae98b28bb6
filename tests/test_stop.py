"""Stopping on request (signals, stop file, launcher death), resuming without lost steps, run-folder locks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from data_fixtures import face_shards
from run_fixtures import assert_same_final_state, sigterm_during, stats, torchrun

from launch import train_gan as cli
from trainer.run.lock import LOCK_NAME, FolderLock, LockedError
from trainer.run.stop import EXIT_REQUEUE, STOP_FILE_ENV, StopRequest

ROOT = Path(__file__).resolve().parents[1]
STEP_KIMG = 0.008  # one step of tiny.yaml's global batch of 8


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return face_shards(tmp_path_factory.mktemp("stop_data"), 32, 32)


def gan_args(shards: str, run_dir: Path, steps: int, *extra: str) -> list[str]:
    return ["--config", str(ROOT / "launch/configs/tiny.yaml"), f"loader.data={shards}", f"run.dir={run_dir}",
            f"run.total_kimg={steps * STEP_KIMG}", f"run.tick_kimg={2 * STEP_KIMG}", "run.ckpt_ticks=100",
            "loss.r1_interval=2", "loss.pl_interval=2", "loader.workers=0", "ada.p=0.2", *extra]


# ----------------------------------------------------------------------------
# The request itself.

def test_a_signal_or_the_stop_file_sets_the_request_and_a_second_signal_is_ignored(tmp_path, capsys):
    before = signal.getsignal(signal.SIGTERM)
    stop = StopRequest(["SIGUSR1", "term"], stop_file=None).install()
    try:
        assert not stop.local()
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)  # the handler runs at the next bytecode boundary of the main thread
        assert stop.local() and stop.reason == "SIGUSR1"
        stop.saving = True
        os.kill(os.getpid(), signal.SIGTERM)  # must not end the process while it saves
        time.sleep(0.01)
        assert stop.reason == "SIGUSR1" and "SIGTERM ignored: writing the checkpoint" in capsys.readouterr().err
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGTERM) == before  # handed back

    flag = tmp_path / "STOP"
    by_file = StopRequest([], stop_file=str(flag), poll_s=0.0)
    assert not by_file.local()
    flag.touch()
    assert by_file.local() and by_file.reason == f"stop file {flag}"
    with pytest.raises(ValueError, match="SIGNOPE"):
        StopRequest(["SIGNOPE"])


# ----------------------------------------------------------------------------
# Stopped runs resume without losing a step.

def test_a_run_stopped_by_its_stop_file_saves_exits_75_and_resumes_bitwise(shards, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert cli.main(gan_args(shards, full, 4)) == 0
    flag = tmp_path / "STOP"
    flag.touch()  # present from the start: the run stops after its first step
    monkeypatch.setenv(STOP_FILE_ENV, str(flag))
    assert cli.main(gan_args(shards, cut, 4)) == EXIT_REQUEUE
    log = (cut / "log.txt").read_text()
    assert f"stopped on request (stop file {flag})" in log and not (cut / LOCK_NAME).exists()
    monkeypatch.delenv(STOP_FILE_ENV)
    assert cli.main(gan_args(shards, cut, 4, "--resume", "auto")) == 0
    assert "resumed from" in (cut / "log.txt").read_text()
    assert_same_final_state(full, cut, tmp_path, 1)


@pytest.mark.slow
def test_sigterm_to_a_two_process_run_at_a_random_step_then_resume_is_bitwise(shards, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    steps = 40
    torchrun("launch.train_gan", 2, gan_args(shards, full, steps))
    out = sigterm_during("launch.train_gan", 2, gan_args(shards, cut, steps), cut)
    assert "stopped on request (SIGTERM)" in (cut / "log.txt").read_text(), out[-3000:]
    stopped_at = stats(cut)[-1]["Progress/kimg"]
    assert stopped_at < steps * STEP_KIMG
    torchrun("launch.train_gan", 2, gan_args(shards, cut, steps, "--resume", "auto"))
    assert_same_final_state(full, cut, tmp_path, 2)


# ----------------------------------------------------------------------------
# No orphans.

LAUNCHER = """
import os, subprocess, sys, time
child = subprocess.Popen(sys.argv[1:], env={**os.environ, "TOONMIX_WATCH_PARENT": "1"})
print(child.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.slow  # 9 s; the fast suite is at its budget (benchmarks/faults.py measures the same)
def test_a_trainer_whose_launcher_is_killed_saves_and_exits(shards, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, sys.executable, "-m", "launch.train_gan",
                                 *gan_args(shards, run, 100000)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    trainer = int(launcher.stdout.readline())
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "stats.jsonl").is_file() and stats(run)):
        time.sleep(0.2)
    launcher.kill()  # kill -9: the launcher cannot pass anything on
    launcher.wait()
    killed = time.time()
    while time.time() - killed < 30 and Path(f"/proc/{trainer}").exists() and _state(trainer) != "Z":
        time.sleep(0.1)
    assert not Path(f"/proc/{trainer}").exists() or _state(trainer) == "Z", "the trainer outlived its launcher"
    assert time.time() - killed < 30
    log = (run / "log.txt").read_text()
    assert "stopped on request (SIGTERM)" in log or "stopped on request (launcher exited)" in log
    assert (run / "checkpoints").is_dir() and not (run / LOCK_NAME).exists()


@pytest.mark.slow  # about 15 s each: real launchers start slowly
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_kill_9_of_a_real_launcher_leaves_no_trainer(launcher, shards, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("TOONMIX_WATCH_PARENT", None)  # each launcher must be recognised by what it sets
    start = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
             if launcher == "torchrun" else
             [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(ROOT / "launch/accelerate/cpu_test.yaml")])
    proc = subprocess.Popen([*start, "-m", "launch.train_gan", *gan_args(shards, run, 100000)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "stats.jsonl").is_file() and stats(run)):
        time.sleep(0.2)
    trainers = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                               text=True).stdout.split()]
    assert len(trainers) == (2 if launcher == "torchrun" else 1)
    proc.kill()
    proc.wait()
    killed = time.time()
    while time.time() - killed < 30 and any(_state(t) not in ("gone", "Z") for t in trainers):
        time.sleep(0.1)
    assert all(_state(t) in ("gone", "Z") for t in trainers), "a trainer outlived its launcher"
    log = (run / "log.txt").read_text()
    assert "stopped on request (SIGTERM)" in log or "stopped on request (launcher exited)" in log
    assert (run / "checkpoints").is_dir() and not (run / LOCK_NAME).exists()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


# ----------------------------------------------------------------------------
# One writer per run folder.

def test_a_second_run_on_a_locked_folder_is_refused_and_a_dead_holders_lock_is_taken_over(shards, tmp_path,
                                                                                          monkeypatch, capsys):
    # The trainer refuses before it builds anything; the lock's own cases are checked directly.
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    run = tmp_path / "run"
    with FolderLock(run, "another trainer"):  # a live holder: this very process
        assert cli.main(gan_args(shards, run, 1)) == 2
        err = capsys.readouterr().err
        assert f"is in use by pid {os.getpid()} on {socket.gethostname()}" in err and "another trainer" in err
    assert not (run / LOCK_NAME).exists()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "since": "x",
                                             "proc_start": "1", "what": "a killed trainer"}))
    said = []
    with FolderLock(run, "test", log=said.append):
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert said == [f"took over the stale lock {run / LOCK_NAME} of pid {int(dead.stdout)} on "
                    f"{socket.gethostname()} since x (a killed trainer) (no such process)"]
    assert not (run / LOCK_NAME).exists()

    (run / LOCK_NAME).write_text(json.dumps({"host": "node-that-is-not-this-one", "pid": 1, "since": "x"}))
    with pytest.raises(LockedError, match=f"delete {run / LOCK_NAME}"):
        FolderLock(run, "test").acquire()


# ----------------------------------------------------------------------------
# A dead or stalled rank.

@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_the_survivor_of_a_dead_or_stalled_rank_exits_within_the_timeout(shards, tmp_path, how):
    run = tmp_path / "run"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "launch.train_gan", *gan_args(shards, run, 100000, "run.collective_timeout_s=6")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "stats.jsonl").is_file() and stats(run)):
        time.sleep(0.2)
    workers = sorted(int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                    text=True).stdout.split())
    os.kill(workers[1], getattr(signal, how))
    hit = time.time()
    while time.time() - hit < 30 and _state(workers[0]) not in ("gone", "Z"):
        time.sleep(0.1)
    survivor_exit = time.time() - hit
    out = proc.communicate(timeout=120)[0]
    assert survivor_exit < 6 + 10, out[-3000:]  # the timeout, plus a step in flight
    assert "a collective failed: another process of this run died or stalled" in out and "exit 75" in out
    # kill -9 leaves no process: named; a stopped one still exists: the message says none is gone.
    assert (f"rank(s) gone: 1 (pid {workers[1]})" if how == "SIGKILL" else "no rank of this host is gone") in out


def test_the_missing_ranks_are_named_from_what_each_left_in_the_store():
    import torch.distributed as tdist

    from trainer.run.distributed import missing_ranks

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    store = tdist.HashStore()
    here = socket.gethostname()
    ranks = [(here, os.getpid()), (here, int(dead.stdout)), ("node-7", 4242), (here, os.getpid())]
    for r, (host, pid) in enumerate(ranks):
        store.set(f"toonmix/rank{r}", json.dumps({"host": host, "pid": pid}))
    for r, n in enumerate([12, 11, 10, 12]):  # rank 0 waits in its 12th collective
        store.set(f"toonmix/reached{r}", str(n))
    assert missing_ranks(store, 0, 4) == (
        "rank(s) behind: 1 (never reached collective 12; its last was 11), 2 (never reached collective 12; its "
        f"last was 10); rank(s) gone: 1 (pid {int(dead.stdout)}); processes on other hosts, not checkable here: "
        "2 (node-7)")
    for r in (1, 2):
        store.set(f"toonmix/reached{r}", "12")  # a rank stalled inside the same collective
    assert missing_ranks(store, 3, 4).startswith("every rank reached collective 12 (one may have stalled inside it); "
                                                 f"rank(s) gone: 1 (pid {int(dead.stdout)})")


def test_make_shards_and_crawl_refuse_an_output_folder_in_use(tmp_path, capsys):
    from launch import crawl, make_shards

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    with FolderLock(out, "a make_shards already running"):
        assert make_shards.main(["--kind", "folder", "--input", str(src), "--out", str(out), "--quiet"]) == 2
        assert "is in use by" in capsys.readouterr().err
        with pytest.raises(SystemExit):
            crawl.main(["--out", str(out), "--url-list", str(tmp_path / "urls.txt"), "--no-progress"])
        assert "a make_shards already running" in capsys.readouterr().err
    assert list(out.iterdir()) == []  # nothing written, and the lock went with its holder


def test_the_fault_benchmark_counts_steps_between_the_last_logged_step_and_the_resume(tmp_path):
    from benchmarks.faults import steps_lost

    run = tmp_path / "run"
    run.mkdir()
    log = ("t tick 1 kimg 0.016 step 2 sec/kimg 1\nt checkpoint /r/checkpoints/ckpt-000000002\n"
           "t tick 2 kimg 0.032 step 4 sec/kimg 1\n")
    (run / "log.txt").write_text(log + "t stopped on request (SIGTERM) after the checkpoint /r/checkpoints/ckpt-000000005\n"
                                 "t resumed from /r/checkpoints/ckpt-000000005 at kimg 0.040\n")
    assert steps_lost(run) == 0
    (run / "log.txt").write_text(log + "t resumed from /r/checkpoints/ckpt-000000002 at kimg 0.016\n")
    assert steps_lost(run) == 2  # a crash after step 4: steps 3 and 4 are trained again
    (run / "log.txt").write_text(log)
    assert steps_lost(run) == -1


def _worker_then_sleep(ready) -> None:
    from datasets.loader import _leave_stops_to_main

    _leave_stops_to_main(0)
    ready.set()
    time.sleep(60)


def test_loader_workers_leave_sigterm_and_sigint_to_the_trainer():
    # A signal to the whole process group must not kill a loader worker under a trainer that is saving.
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    ready = ctx.Event()
    worker = ctx.Process(target=_worker_then_sleep, args=(ready,))
    worker.start()
    try:
        assert ready.wait(10)
        os.kill(worker.pid, signal.SIGTERM)
        os.kill(worker.pid, signal.SIGINT)
        worker.join(0.5)
        assert worker.is_alive()
    finally:
        worker.kill()
        worker.join()
