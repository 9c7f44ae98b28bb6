"""Launch templates: accelerate configs validate; the Slurm scripts launch the right command, stop and requeue.

Slurm itself is not here: the tests put stand-ins for scontrol, srun and accelerate
on PATH that record how they were called, and run the real sbatch scripts with
the environment Slurm gives a batch job. The srun stand-in starts one task per
node and passes TERM on to them, as srun does; with FAKE_TRAINER set, the
accelerate stand-in behaves as the trainers promise to: on the stop file (or on
TERM) it "saves" (a marker file and a log line) and exits 75.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = sorted((ROOT / "launch" / "accelerate").glob("*.yaml")) + [ROOT / "accelerate_config.yaml"]
SCRIPTS = sorted((ROOT / "launch" / "slurm").glob("*.sbatch"))
COMMON = ROOT / "launch" / "slurm" / "common.sh"
JOB = "4242"


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_accelerate_templates_load(path):
    cfg = ClusterConfig.from_yaml_file(str(path))
    assert cfg.num_processes >= 1 and cfg.mixed_precision == "no"
    if "multinode" in path.name:
        assert cfg.num_machines > 1 and cfg.rdzv_backend in ("static", "c10d")


STUBS = {
    "scontrol": 'if [ "$1 $2" = "show hostnames" ]; then printf "node7\\nnode8\\n"; else echo "scontrol $*" >> "$LOG"; fi',
    "srun": r'''
opts=()
while [[ $1 == --* ]]; do opts+=("$1"); shift; done
echo "srun ${opts[*]}" >> "$LOG"
pids=()
trap 'echo "srun got TERM" >> "$LOG"; kill -TERM "${pids[@]}" 2>/dev/null' TERM
# One task per node, as Slurm would start it on each node.
for id in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$id "$@" & pids+=($!); done
rc=0
for p in "${pids[@]}"; do
    while kill -0 "$p" 2>/dev/null; do wait "$p"; done
    wait "$p"; s=$?
    (( s > rc )) && rc=$s
done
exit $rc
''',
    "accelerate": r'''
echo "accelerate node=$SLURM_NODEID $*" >> "$LOG"
echo "env node=$SLURM_NODEID TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING-unset}" \
     "NCCL_ASYNC_ERROR_HANDLING=${NCCL_ASYNC_ERROR_HANDLING-unset} TOONMIX_STOP_FILE=${TOONMIX_STOP_FILE-unset}" >> "$LOG"
if [[ -z ${FAKE_TRAINER:-} ]]; then
    sleep "${FAKE_SLEEP:-0}"
    echo "accelerate done node=$SLURM_NODEID" >> "$LOG"
    exit "${FAKE_EXIT:-0}"
fi
echo $$ >> "$FAKE_DIR/trainer.pids"
save() {
    trap '' TERM   # a second request while saving changes nothing
    sleep 0.3
    echo "saved node=$SLURM_NODEID on $1" >> "$LOG"
    touch "$FAKE_DIR/saved-$SLURM_NODEID"
    exit "${FAKE_STOP_STATUS:-75}"
}
trap 'save TERM' TERM
for _ in $(seq 200); do   # 10 s at most: a test that forgot to stop it fails instead of hanging
    if [[ $FAKE_TRAINER == poll && -e $TOONMIX_STOP_FILE ]]; then
        echo "stop file seen node=$SLURM_NODEID" >> "$LOG"
        save file
    fi
    sleep 0.05
done
echo "trainer done node=$SLURM_NODEID" >> "$LOG"
''',
}


def fake_slurm(tmp: Path, **extra: str) -> dict:
    """scontrol/srun/accelerate stand-ins; each call is appended to calls.log."""
    bin_ = tmp / "bin"
    bin_.mkdir()
    for name, body in STUBS.items():
        (bin_ / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_ / name).chmod(0o755)
    # What the caller's shell or a surrounding job may have set would make the results depend on it.
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("SLURM_", "TOONMIX_", "SRUN_")) and "NCCL" not in k}
    return {**base, "PATH": f"{bin_}:{os.environ['PATH']}", "LOG": str(tmp / "calls.log"), "FAKE_DIR": str(tmp),
            "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_JOB_NODELIST": "node[7-8]", "SLURM_NNODES": "2",
            "SLURM_GPUS_ON_NODE": "4", "SLURM_JOB_ID": JOB, "TOONMIX_VENV": "", "TOONMIX_STOP_DIR": str(tmp), **extra}


def calls(tmp: Path, prefix: str = "") -> list[str]:
    log = tmp / "calls.log"
    lines = log.read_text().splitlines() if log.is_file() else []
    return [line for line in lines if line.startswith(prefix)]


def run_script(tmp: Path, script: str, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "launch/slurm" / script), *args], env=fake_slurm(tmp, **extra),
                          capture_output=True, text=True, timeout=30)


def start_script(tmp: Path, script: str, *args: str, **extra: str) -> subprocess.Popen:
    """Starts a batch script and returns once every node's launcher runs (the step is in flight)."""
    p = subprocess.Popen(["bash", str(ROOT / "launch/slurm" / script), *args], env=fake_slurm(tmp, **extra),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while len(calls(tmp, "accelerate node=")) < 2:
        assert time.monotonic() < deadline and p.poll() is None, "the step did not start"
        time.sleep(0.05)
    return p


def no_trainer_left(tmp: Path) -> None:
    for pid in map(int, (tmp / "trainer.pids").read_text().split()):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def index_of(lines: list[str], text: str) -> int:
    return next(i for i, line in enumerate(lines) if text in line)


@pytest.mark.parametrize("path", SCRIPTS + [COMMON], ids=lambda p: p.name)
def test_scripts_are_valid_bash_and_name_real_commands(path):
    subprocess.run(["bash", "-n", str(path)], check=True)
    if path == COMMON:
        return
    text = path.read_text()
    assert "#SBATCH --requeue" in text and "#SBATCH --open-mode=append" in text and "--signal=B:USR1@" in text
    module = text.split("toonmix_launch ")[-1].split()[0]
    assert (ROOT / "launch" / f"{module}.py").is_file()


def test_every_node_launches_the_same_command_with_its_rank(tmp_path):
    env_dir = {"TOONMIX_STOP_DIR": ""}  # the default place: the submit directory
    r = run_script(tmp_path, "train_gan.sbatch", "launch/configs/webtoon1024.yaml", "optim.batch=64",
                   "run.desc=my run", **env_dir)
    assert r.returncode == 0, r.stderr
    port = 10000 + int(JOB) % 20000
    launches = sorted(calls(tmp_path, "accelerate node="))
    assert len(launches) == 2
    for node, line in enumerate(launches):
        assert line.startswith(f"accelerate node={node} launch ")
        assert (f"--config_file launch/accelerate/multinode_static.yaml --rdzv_backend static --num_machines 2 "
                f"--num_processes 8 --machine_rank {node} --main_process_ip node7 --main_process_port {port} "
                "-m launch.train_gan --config launch/configs/webtoon1024.yaml --resume auto optim.batch=64 "
                "run.desc=my run") in line
    assert f"[slurm] 2 node(s) x 4 GPU(s) = 8 processes, head node7:{port} (static rendezvous)" in r.stdout
    stop_file = ROOT / f"slurm-{JOB}.stop"
    assert f"touch {stop_file}" in r.stdout and not stop_file.exists()
    for line in calls(tmp_path, "env "):
        assert (f"TORCH_NCCL_ASYNC_ERROR_HANDLING=1 NCCL_ASYNC_ERROR_HANDLING=unset "
                f"TOONMIX_STOP_FILE={stop_file}") in line
    # No --cpus-per-task without one from sbatch; the launcher count never follows sbatch's tasks.
    assert calls(tmp_path, "srun") == ["srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --kill-on-bad-exit=1"]
    assert not calls(tmp_path, "scontrol")


def test_srun_gives_the_one_launcher_per_node_every_cpu_of_the_node(tmp_path):
    # A user's --ntasks-per-node=8 --cpus-per-task=8: still one launcher per node, with 64 CPUs.
    r = run_script(tmp_path, "train_encoder.sbatch", "launch/configs/restyle_source.yaml",
                   SLURM_CPUS_PER_TASK="8", SLURM_NTASKS_PER_NODE="8")
    assert r.returncode == 0, r.stderr
    assert calls(tmp_path, "srun") == [
        "srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --kill-on-bad-exit=1 --cpus-per-task=64"]
    assert len(calls(tmp_path, "accelerate node=")) == 2


@pytest.mark.parametrize("job, override, port", [("123456", None, 13456), ("123457", None, 13457),
                                                 ("123456", "31000", 31000)])
def test_rendezvous_port_follows_the_job_id(tmp_path, job, override, port):
    extra = {"SLURM_JOB_ID": job, **({"TOONMIX_PORT": override} if override else {})}
    r = run_script(tmp_path, "fid.sbatch", "--kid", **extra)
    assert r.returncode == 0, r.stderr
    for line in calls(tmp_path, "accelerate node="):
        assert f"--main_process_port {port} -m launch.fid --kid" in line


@pytest.mark.parametrize("template, backend", [("multinode_static.yaml", "static"), ("multinode_c10d.yaml", "c10d")])
def test_accelerate_runs_the_template_rendezvous_on_every_gpu(tmp_path, template, backend):
    """The recorded command line, read by accelerate's own launcher code: the template's
    rendezvous backend (which accelerate takes only from its command line), and 2 nodes x 8 GPUs
    as nnodes=2, nproc_per_node=8: a world of 16."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    r = run_script(tmp_path, "train_gan.sbatch", "launch/configs/webtoon1024.yaml", SLURM_GPUS_ON_NODE="8",
                   TOONMIX_ACCELERATE_CONFIG=f"launch/accelerate/{template}")
    assert r.returncode == 0, r.stderr
    assert f"2 node(s) x 8 GPU(s) = 16 processes, head node7:14242 ({backend} rendezvous)" in r.stdout
    line = next(line for line in calls(tmp_path, "accelerate node=1 "))
    assert f"--rdzv_backend {backend} " in line
    args = launch_command_parser().parse_args(shlex.split(line.split(" launch ", 1)[1]))
    args, _, _ = _validate_launch_command(args)
    prepare_multi_gpu_env(args)
    assert args.rdzv_backend == backend
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "8", 1)
    assert args.rdzv_endpoint == "node7:14242"


def test_time_limit_warning_saves_then_requeues(tmp_path):
    p = start_script(tmp_path, "train_encoder.sbatch", "launch/configs/restyle_source.yaml", FAKE_TRAINER="poll")
    p.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@600 sends the batch shell
    out, err = p.communicate(timeout=20)
    assert p.returncode == 75, err
    stop_file = tmp_path / f"slurm-{JOB}.stop"
    assert f"asking the step to save and stop ({stop_file})" in out
    log = calls(tmp_path)
    requeue = index_of(log, f"scontrol requeue {JOB}")
    for node in (0, 1):  # every trainer saw the stop file and saved before the job was requeued
        assert index_of(log, f"stop file seen node={node}") < index_of(log, f"saved node={node} on file") < requeue
        assert (tmp_path / f"saved-{node}").is_file()
    assert len(calls(tmp_path, "scontrol")) == 1 and "srun got TERM" not in log
    assert f"requeueing job {JOB}" in out
    assert not stop_file.exists()  # a requeued slice must not stop at once
    no_trainer_left(tmp_path)


def test_stop_file_by_hand_saves_then_requeues_and_a_stale_one_is_ignored(tmp_path):
    stop_file = tmp_path / f"slurm-{JOB}.stop"
    stop_file.touch()  # left by the slice before a requeue
    # Status 1: accelerate's report of workers that exited 75.
    p = start_script(tmp_path, "train_gan.sbatch", "launch/configs/webtoon1024.yaml", FAKE_TRAINER="poll",
                     FAKE_STOP_STATUS="1")
    time.sleep(0.3)
    assert not calls(tmp_path, "stop file seen"), "a stale stop file stopped the new slice"
    stop_file.touch()
    out, err = p.communicate(timeout=20)
    assert p.returncode == 75, err
    log = calls(tmp_path)
    assert index_of(log, "saved node=0 on file") < index_of(log, f"scontrol requeue {JOB}")
    assert index_of(log, "saved node=1 on file") < index_of(log, f"scontrol requeue {JOB}")
    assert "step stopped on request (status 1)" in out
    no_trainer_left(tmp_path)


def test_term_is_passed_on_to_the_step_which_is_waited_for_and_not_requeued(tmp_path):
    # Trainers that ignore the stop file: only the forwarded TERM stops them. Status 1 as above.
    p = start_script(tmp_path, "train_gan.sbatch", "launch/configs/webtoon1024.yaml", FAKE_TRAINER="signal",
                     FAKE_STOP_STATUS="1")
    p.send_signal(signal.SIGTERM)  # Slurm ending the job, or scancel --batch --signal=TERM
    out, err = p.communicate(timeout=20)
    assert p.returncode == 1, err  # the step's status
    log = calls(tmp_path)
    for node in (0, 1):
        assert index_of(log, "srun got TERM") < index_of(log, f"saved node={node} on TERM")
        assert (tmp_path / f"saved-{node}").is_file()
    assert not calls(tmp_path, "scontrol")
    assert "step ended with status 1 after TERM" in out
    no_trainer_left(tmp_path)


def test_term_during_the_save_after_the_warning_still_waits_and_does_not_requeue(tmp_path):
    # The time limit reached while the trainers save: Slurm is ending the job, a requeue would fail.
    p = start_script(tmp_path, "train_encoder.sbatch", "launch/configs/restyle_source.yaml", FAKE_TRAINER="poll")
    p.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not calls(tmp_path, "stop file seen"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 75, err  # the step's status: the trainers finished their save
    assert len(calls(tmp_path, "saved node=")) == 2 and "srun got TERM" in calls(tmp_path)
    assert not calls(tmp_path, "scontrol")
    no_trainer_left(tmp_path)


def test_failed_step_passes_its_status_through_without_requeue(tmp_path):
    r = run_script(tmp_path, "train_gan.sbatch", "launch/configs/webtoon1024.yaml", FAKE_EXIT="3")
    assert r.returncode == 3 and "step failed with status 3" in r.stdout
    assert not calls(tmp_path, "scontrol")


def test_fid_requeues_at_once_on_the_warning(tmp_path):
    # Nothing to save: the requeue comes before the step ends (Slurm then ends the job itself).
    p = start_script(tmp_path, "fid.sbatch", "--kid", FAKE_SLEEP="1")
    p.send_signal(signal.SIGUSR1)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    log = calls(tmp_path)
    assert index_of(log, f"scontrol requeue {JOB}") < index_of(log, "accelerate done")
    assert "nothing to save, requeueing now" in out and "asking the step" not in out
