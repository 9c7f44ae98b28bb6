"""Launch templates: accelerate configs validate; the Slurm scripts launch the right command and requeue.

Slurm itself is not here: the tests put stand-ins for scontrol, srun and accelerate
on PATH that record how they were called, and run the real sbatch scripts with
the environment Slurm gives a batch job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = sorted((ROOT / "launch" / "accelerate").glob("*.yaml")) + [ROOT / "accelerate_config.yaml"]
SCRIPTS = sorted((ROOT / "launch" / "slurm").glob("*.sbatch"))


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_accelerate_templates_load(path):
    cfg = ClusterConfig.from_yaml_file(str(path))
    assert cfg.num_processes >= 1 and cfg.mixed_precision == "no"
    if "multinode" in path.name:
        assert cfg.num_machines > 1 and cfg.rdzv_backend in ("static", "c10d")


def fake_slurm(tmp: Path) -> dict:
    """scontrol/srun/accelerate stand-ins; each call is appended to calls.log."""
    bin_ = tmp / "bin"
    bin_.mkdir()
    log = tmp / "calls.log"
    stubs = {
        "scontrol": 'if [ "$1 $2" = "show hostnames" ]; then printf "node7\\nnode8\\n"; else echo "scontrol $*" >> "$LOG"; fi',
        # One task per node: run the command once per node id, as Slurm would on each node.
        "srun": 'while [[ $1 == --* ]]; do shift; done\n'
                'for id in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$id "$@" & done; wait',
        "accelerate": 'echo "accelerate node=$SLURM_NODEID $*" >> "$LOG"; sleep "${FAKE_SLEEP:-0}"',
    }
    for name, body in stubs.items():
        (bin_ / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_ / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "LOG": str(log), "SLURM_SUBMIT_DIR": str(ROOT),
            "SLURM_JOB_NODELIST": "node[7-8]", "SLURM_NNODES": "2", "SLURM_GPUS_ON_NODE": "4", "SLURM_JOB_ID": "4242",
            "TOONMIX_VENV": ""}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_valid_bash_and_name_real_commands(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "#SBATCH --requeue" in text and "--signal=B:USR1@" in text
    module = text.split("toonmix_launch ")[-1].split()[0]
    assert (ROOT / "launch" / f"{module}.py").is_file()


def test_every_node_launches_the_same_command_with_its_rank(tmp_path):
    env = fake_slurm(tmp_path)
    r = subprocess.run(["bash", str(ROOT / "launch/slurm/train_gan.sbatch"), "launch/configs/webtoon1024.yaml",
                        "optim.batch=64", "run.desc=my run"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    calls = sorted((tmp_path / "calls.log").read_text().splitlines())
    assert len(calls) == 2
    for node, line in enumerate(calls):
        assert line.startswith(f"accelerate node={node} launch ")
        assert (f"--config_file launch/accelerate/multinode_static.yaml --num_machines 2 --num_processes 8 "
                f"--machine_rank {node} --main_process_ip node7 --main_process_port 29500 -m launch.train_gan "
                "--config launch/configs/webtoon1024.yaml --resume auto optim.batch=64 run.desc=my run") in line


def test_time_limit_warning_requeues_the_job(tmp_path):
    env = {**fake_slurm(tmp_path), "FAKE_SLEEP": "4"}  # still running when the signal comes
    p = subprocess.Popen(["bash", str(ROOT / "launch/slurm/train_encoder.sbatch"), "launch/configs/restyle_source.yaml"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "calls.log"
    deadline = time.time() + 20
    while not (log.is_file() and "accelerate" in log.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    p.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@600 sends the batch shell
    out, _ = p.communicate(timeout=40)
    assert "scontrol requeue 4242" in log.read_text()
    assert "requeueing job 4242" in out
