# Sourced by the launch/slurm/*.sbatch scripts (submitted from the repository root).
# Finds the head node and starts one `accelerate launch` per node with srun (toonmix_launch).
#
# Stopping (docs/cluster.md, "Stopping and requeueing"):
# - USR1, Slurm's time-limit warning (--signal=B:USR1@N, sent to this shell only): creates the
#   stop file $TOONMIX_STOP_FILE, which the trainers poll; they finish the step in flight,
#   write a checkpoint and exit 75. This shell waits for the step to end, then requeues the
#   job, whose `--resume auto` continues from that checkpoint. A stop file created by hand
#   does the same. Signals are not forwarded: torchrun's agent does not pass USR1 on, and
#   the ranks on other nodes are out of this shell's reach, while the file is on the
#   shared submit directory.
# - TERM: Slurm is ending the job (scancel, the time limit, a preemption), or someone sent it
#   to this shell (scancel --batch --signal=TERM). Creates the stop file too, passes TERM on
#   to the step, waits for it, and exits with its status. No requeue: a cancelled job must
#   stay cancelled, a job past its time limit can no longer be requeued from inside, and a
#   preemption that requeues does so itself.
# Exit status: 0 when the command finished; 75 after a requested stop (the job was requeued,
# or the requeue failed and says so in the log); otherwise the step's status.

set -euo pipefail
cd "${SLURM_SUBMIT_DIR:?submit with sbatch from the repository root}"
VENV=${TOONMIX_VENV-.venv}   # the environment `make test` built; TOONMIX_VENV="" keeps the caller's PATH
if [[ -n "$VENV" && -f "$VENV/bin/activate" ]]; then
    source "$VENV/bin/activate"
fi

# No `| head -n 1`: under pipefail, scontrol dying of SIGPIPE when head exits first would end the job.
HOSTS=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
HEAD_NODE=${HOSTS%%$'\n'*}   # node 0 of the allocation, so machine rank 0 under the static rendezvous
# Per job, so that two jobs sharing a head node do not both listen on one port; kept below 32768,
# where Linux starts handing out ephemeral ports to outgoing connections.
HEAD_PORT=${TOONMIX_PORT:-$(( 10000 + SLURM_JOB_ID % 20000 ))}
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-8}
ACCELERATE_CONFIG=${TOONMIX_ACCELERATE_CONFIG:-launch/accelerate/multinode_static.yaml}
# accelerate (1.15) takes rdzv_backend from its command line only: the flag defaults to "static",
# and a config value fills only flags left unset. So the template's choice is passed on.
RDZV_BACKEND=$(sed -n "s/^rdzv_backend:[[:space:]]*['\"]\{0,1\}\([A-Za-z0-9_-]*\).*/\1/p" "$ACCELERATE_CONFIG")
RDZV_BACKEND=${RDZV_BACKEND:-static}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1   # a dead peer ends the job instead of hanging it

# srun does not inherit sbatch's --cpus-per-task (Slurm >= 22.05) and would follow a
# --ntasks-per-node given to sbatch: one launcher per node instead, with every CPU the node was given.
SRUN_ARGS=(--nodes="$SLURM_NNODES" --ntasks="$SLURM_NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1)
if [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then
    SRUN_ARGS+=(--cpus-per-task="$(( SLURM_CPUS_PER_TASK * ${SLURM_NTASKS_PER_NODE:-1} ))")
fi

# On the submit directory, which every node shares (it holds the code they run), so the stop
# reaches rank 0 wherever the rendezvous put it. A requeued job keeps its id: the file its
# previous slice stopped on must not stop this one.
export TOONMIX_STOP_FILE=${TOONMIX_STOP_DIR:-$SLURM_SUBMIT_DIR}/slurm-$SLURM_JOB_ID.stop
rm -f "$TOONMIX_STOP_FILE"
trap 'rm -f "$TOONMIX_STOP_FILE"' EXIT

# What the time-limit warning does: "stop" (the trainers save on the stop file, then the job is
# requeued) or "requeue" (at once, for commands with nothing to save, which start over).
WARNING_ACTION=stop

PHASE=setup      # setup, running (the srun step, STEP_PID), done
STEP_PID=""
SIGNALS=0        # traps taken; a trap cuts `wait` short
STOP_ASKED=0     # the warning asked the step to stop
TERMINATED=0     # TERM: Slurm is ending the job
REQUEUED=0

# Bash runs a trap only between commands, and with errexit still on: nothing in a handler may fail.
on_usr1() {
    SIGNALS=$(( SIGNALS + 1 ))
    if [[ $WARNING_ACTION == requeue ]]; then
        echo "[slurm] USR1 (time-limit warning): nothing to save, requeueing now"
        requeue
        return 0   # a bare return in a trap gives the interrupted wait's 138, which errexit acts on
    fi
    STOP_ASKED=1
    echo "[slurm] USR1 (time-limit warning): asking the step to save and stop ($TOONMIX_STOP_FILE)"
    touch "$TOONMIX_STOP_FILE" || echo "[slurm] cannot create $TOONMIX_STOP_FILE" >&2
}

on_term() {
    SIGNALS=$(( SIGNALS + 1 ))
    TERMINATED=1
    case $PHASE in
        setup) echo "[slurm] TERM before the step started: exiting"; exit 143 ;;
        done) return 0 ;;   # e.g. the requeue ending this job: the exit status is already decided
    esac
    echo "[slurm] TERM: passing it on to the step and waiting for it to save and exit (no requeue)"
    touch "$TOONMIX_STOP_FILE" 2>/dev/null || true   # for ranks that the signal does not reach
    kill -TERM "$STEP_PID" 2>/dev/null || true
}

requeue() {
    (( REQUEUED )) && return 0
    REQUEUED=1
    echo "[slurm] requeueing job $SLURM_JOB_ID to resume from the latest checkpoint"
    scontrol requeue "$SLURM_JOB_ID" || echo "[slurm] scontrol requeue $SLURM_JOB_ID failed: resubmit the same command" >&2
}

trap on_usr1 USR1
trap on_term TERM

# toonmix_launch MODULE ARGS...: the same command on every node, ranks from SLURM_NODEID. Ends the
# batch script with the exit status described at the top.
toonmix_launch() {
    local module=$1 rc seen
    shift
    echo "[slurm] $SLURM_NNODES node(s) x $GPUS_PER_NODE GPU(s) = $(( SLURM_NNODES * GPUS_PER_NODE )) processes," \
        "head $HEAD_NODE:$HEAD_PORT ($RDZV_BACKEND rendezvous): launch.$module $*"
    if [[ $WARNING_ACTION == stop ]]; then
        echo "[slurm] to save and requeue now: touch $TOONMIX_STOP_FILE"
    fi
    PHASE=running
    # In the background, then wait: bash runs a trap only between commands. exec, so that a
    # signal for the task reaches accelerate itself.
    srun "${SRUN_ARGS[@]}" bash -c '
        exec accelerate launch --config_file "$0" --rdzv_backend "$1" --num_machines "$SLURM_NNODES" \
            --num_processes "$(( SLURM_NNODES * $2 ))" --machine_rank "$SLURM_NODEID" \
            --main_process_ip "$3" --main_process_port "$4" -m "launch.$5" "${@:6}"' \
        "$ACCELERATE_CONFIG" "$RDZV_BACKEND" "$GPUS_PER_NODE" "$HEAD_NODE" "$HEAD_PORT" "$module" "$@" &
    STEP_PID=$!
    if (( TERMINATED )); then   # TERM came before STEP_PID was known
        kill -TERM "$STEP_PID" 2>/dev/null || true
    fi
    # A trap ends `wait` early (128 + signal) while the step runs on; wait again until a wait
    # returns with no trap in between, which is then the step's own status.
    while :; do
        seen=$SIGNALS
        wait "$STEP_PID" && rc=0 || rc=$?
        (( SIGNALS == seen )) && break
    done
    PHASE=done

    if (( TERMINATED )); then
        echo "[slurm] step ended with status $rc after TERM"
        exit "$rc"
    fi
    if (( rc == 0 )); then
        echo "[slurm] step finished"
        exit 0
    fi
    # accelerate and torchrun report a worker's 75 as 1, so the request counts, not only the status.
    if (( rc == 75 || STOP_ASKED )) || [[ -e $TOONMIX_STOP_FILE ]]; then
        echo "[slurm] step stopped on request (status $rc)"
        requeue
        exit 75
    fi
    echo "[slurm] step failed with status $rc"
    exit "$rc"
}
