# Sourced by the launch/slurm/*.sbatch scripts (submitted from the repository root).
# Finds the head node, starts one `accelerate launch` per node with srun, and requeues
# the job when Slurm warns of the time limit (or a preemption): the requeued job runs
# the same command, whose `--resume auto` continues from the newest complete checkpoint.

set -euo pipefail
cd "${SLURM_SUBMIT_DIR:?submit with sbatch from the repository root}"
VENV=${TOONMIX_VENV-.venv}   # the environment `make test` built; TOONMIX_VENV="" keeps the caller's PATH
if [[ -n "$VENV" && -f "$VENV/bin/activate" ]]; then
    source "$VENV/bin/activate"
fi

# No `| head -n 1`: under pipefail, scontrol dying of SIGPIPE when head exits first would end the job.
HOSTS=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
HEAD_NODE=${HOSTS%%$'\n'*}
HEAD_PORT=${TOONMIX_PORT:-29500}
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-8}
ACCELERATE_CONFIG=${TOONMIX_ACCELERATE_CONFIG:-launch/accelerate/multinode_static.yaml}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
export NCCL_ASYNC_ERROR_HANDLING=1   # a dead peer ends the job instead of hanging it

requeue() {
    echo "[slurm] signal received: requeueing job $SLURM_JOB_ID to resume from the latest checkpoint"
    scontrol requeue "$SLURM_JOB_ID"
}
trap requeue USR1 TERM

# toonmix_launch MODULE ARGS...: the same command on every node, ranks from SLURM_NODEID.
toonmix_launch() {
    local module=$1
    shift
    echo "[slurm] $SLURM_NNODES node(s) x $GPUS_PER_NODE GPU(s), head $HEAD_NODE:$HEAD_PORT: launch.$module $*"
    # In the background, then wait: bash runs the trap only between commands.
    srun --kill-on-bad-exit=1 --ntasks-per-node=1 bash -c '
        accelerate launch --config_file "$0" --num_machines "$SLURM_NNODES" \
            --num_processes "$(( SLURM_NNODES * $1 ))" --machine_rank "$SLURM_NODEID" \
            --main_process_ip "$2" --main_process_port "$3" -m "launch.$4" "${@:5}"' \
        "$ACCELERATE_CONFIG" "$GPUS_PER_NODE" "$HEAD_NODE" "$HEAD_PORT" "$module" "$@" &
    wait $!
}
