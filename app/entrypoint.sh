#!/bin/sh
# Entry point of the trainer image: `train` (default) runs `chargpt check`, then launches chargpt
# through torchrun with the torchrun settings from the environment; `sample ...` runs
# `chargpt sample ...`; anything else runs as a command. Trainer settings reach chargpt as
# CHARGPT_<KEY> variables, which it reads itself, so that no value passes through the shell's word
# splitting.
set -eu

fail() {
    echo "entrypoint: $*" >&2
    exit 2
}

is_count() {
    case "$1" in
        '' | *[!0-9]*) return 1 ;;
        *) return 0 ;;
    esac
}

train() {
    # Without them, the group needs every node, as before elastic membership.
    MIN_NODES=${MIN_NODES:-${NNODES:-}}
    TORCHRUN_REJOIN_WAIT_S=${TORCHRUN_REJOIN_WAIT_S:-120}
    for name in NNODES MIN_NODES NPROC_PER_NODE NODE_RANK MASTER_PORT TORCHRUN_MAX_RESTARTS TORCHRUN_JOIN_TIMEOUT_S \
        TORCHRUN_REJOIN_WAIT_S; do
        eval "value=\${$name:-}"
        is_count "$value" || fail "$name='$value' must be a non-negative integer"
    done
    [ "$NNODES" -ge 1 ] || fail "NNODES must be at least 1"
    [ "$NPROC_PER_NODE" -ge 1 ] || fail "NPROC_PER_NODE must be at least 1"
    [ "$NODE_RANK" -lt "$NNODES" ] || fail "NODE_RANK=$NODE_RANK must be below NNODES=$NNODES"
    [ "$MIN_NODES" -ge 1 ] && [ "$MIN_NODES" -le "$NNODES" ] || fail "MIN_NODES=$MIN_NODES must be from 1 to NNODES=$NNODES"
    [ "$TORCHRUN_JOIN_TIMEOUT_S" -ge 1 ] || fail "TORCHRUN_JOIN_TIMEOUT_S must be at least 1 (seconds)"
    [ -n "$MASTER_ADDR" ] || fail "MASTER_ADDR is empty; set it to the master's address or name"
    [ -n "${NODE_ADDR:-}" ] || fail "NODE_ADDR is empty; set it to this node's address or name, one that sorts in node-rank order (the rendezvous numbers the nodes by it)"
    case "$NODE_ADDR" in
        *[!A-Za-z0-9.:_-]*) fail "NODE_ADDR='$NODE_ADDR' is not a host name or address" ;;
    esac
    [ -n "$RUN_ID" ] || fail "RUN_ID is empty; set it to the name of this run"

    # The c10d rendezvous lives in a store on the master's agent, so an agent that restarts (a
    # killed container) can rejoin a running group. It numbers the nodes by sorting their
    # addresses: NODE_ADDR sorts in node-rank order, which keeps global rank 0 on the master.
    if [ "$NODE_RANK" -eq 0 ]; then is_host=true; else is_host=false; fi
    # The agents' shared TCP store breaks re-rendezvous with an agent that restarted: the fresh
    # agent waits for a master address that rank 0's agent only publishes in its first round
    # (pytorch/pytorch#135712). Without sharing, rank 0 publishes one every round.
    export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1

    # The rendezvous id names the world's shape: a node that left the inventory but still runs
    # (its trainer restarting with the old world size) can never join the group of the new one.
    rendezvous_id="$RUN_ID-${NNODES}x$NPROC_PER_NODE"

    # The trainer's own checks (config, batch against the world size, corpus, what resuming the run
    # directory would find) before torchrun: bad input stops here, once, with chargpt's one line on
    # stderr and its exit status (2), instead of in every worker of every restart. It gets the
    # same arguments as train (extra ones, such as --set, first).
    check_status=0
    check_run "$@" || check_status=$?
    [ "$check_status" -eq 0 ] || exit "$check_status"

    [ "$NODE_RANK" -eq 0 ] || wait_for_master

    # Elastic membership: with MIN_NODES below NNODES, the nodes left after a loss form the group
    # again once the lost one has not come back within TORCHRUN_REJOIN_WAIT_S (the rendezvous's last
    # call), and a node that comes back joins at the next re-formation.
    nnodes=$NNODES
    rendezvous_conf="is_host=$is_host,join_timeout=$TORCHRUN_JOIN_TIMEOUT_S"
    if [ "$MIN_NODES" -lt "$NNODES" ]; then
        nnodes="$MIN_NODES:$NNODES"
        rendezvous_conf="$rendezvous_conf,last_call_timeout=$TORCHRUN_REJOIN_WAIT_S"
    fi

    set -- "$@" --data "$TRAIN_DATA" --run-dir "$RUN_ROOT/$RUN_ID" --preset "$TRAIN_PRESET"
    echo "entrypoint: node $NODE_RANK ($NODE_ADDR) of $nnodes, $NPROC_PER_NODE process(es) per node, rendezvous $rendezvous_id at $MASTER_ADDR:$MASTER_PORT, world size $((NNODES * NPROC_PER_NODE)), up to $TORCHRUN_MAX_RESTARTS restart(s)"
    torchrun \
        --nnodes="$nnodes" \
        --nproc-per-node="$NPROC_PER_NODE" \
        --rdzv-backend=c10d \
        --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" \
        --rdzv-id="$rendezvous_id" \
        --rdzv-conf="$rendezvous_conf" \
        --local-addr="$NODE_ADDR" \
        --max-restarts="$TORCHRUN_MAX_RESTARTS" \
        -m chargpt train "$@" &
    run_torchrun_until_done "$!"
    if [ "$status" -ne 0 ]; then
        # A run that stopped for good (diverged, exit 4) fails in every restart of torchrun, which then
        # exits 1. The check refuses it with the trainer's own status, which the supervisor leaves stopped.
        check_status=0
        check_run "$@" >/dev/null || check_status=$?
        case "$check_status" in
            2 | 4) exit "$check_status" ;;
        esac
    fi
    exit "$status"
}

check_run() {
    chargpt check "$@" --data "$TRAIN_DATA" --preset "$TRAIN_PRESET" --world-size "$((NNODES * NPROC_PER_NODE))" \
        --min-world-size "$((MIN_NODES * NPROC_PER_NODE))" --run-dir "$RUN_ROOT/$RUN_ID"
}

# A worker finds the master's rendezvous itself, trying every second, before torchrun does: torchrun's
# store client backs off up to a minute between tries, so a master that comes back (its host rebooted)
# would be joined up to that much later. It waits as long as torchrun would (TORCHRUN_JOIN_TIMEOUT_S).
wait_for_master() {
    chargpt wait-for "$MASTER_ADDR:$MASTER_PORT" --timeout "$TORCHRUN_JOIN_TIMEOUT_S" &
    waiter_pid=$!
    trap 'kill -TERM "$waiter_pid" 2>/dev/null || true
          echo "entrypoint: stopped on request while waiting for the master; exiting $STOPPED_EXIT" >&2
          exit "$STOPPED_EXIT"' TERM INT
    wait_status=0
    wait "$waiter_pid" || wait_status=$?
    trap - TERM INT
    [ "$wait_status" -eq 0 ] || exit "$wait_status"
}

# torchrun passes SIGTERM (docker stop, compose replacing the container) on to the trainers, which
# checkpoint the step they are at and exit 0; torchrun itself then exits 1. A stop that was asked
# for ends with STOPPED_EXIT instead, which the host's supervisor unit leaves stopped, while a
# trainer that failed or was killed still ends with torchrun's status and is started again.
STOPPED_EXIT=143
run_torchrun_until_done() {
    torchrun_pid=$1
    stop_requested=false
    trap 'stop_requested=true; interrupted=true; kill -TERM "$torchrun_pid" 2>/dev/null || true
          stop_idle_agent "$torchrun_pid" &' TERM INT
    # A trapped signal ends `wait` early with 128+signal. The shell keeps torchrun's own status once
    # it has exited (even if it was reaped while the trap ran), so waiting again returns that status.
    interrupted=true
    while $interrupted; do
        interrupted=false
        status=0
        wait "$torchrun_pid" || status=$?
    done
    if $stop_requested; then
        echo "entrypoint: stopped on request (torchrun exited $status); exiting $STOPPED_EXIT" >&2
        exit "$STOPPED_EXIT"
    fi
}

# torchrun with no trainer process (between two attempts, waiting in the rendezvous for a host that
# is gone, its last trainer not even reaped) has no step to checkpoint, yet its wait on the
# rendezvous store ignores SIGTERM for as long as the stop's whole grace period. It is killed when
# it runs no trainer IDLE_AGENT_STOP_S after SIGTERM.
IDLE_AGENT_STOP_S=2
stop_idle_agent() {
    sleep "$IDLE_AGENT_STOP_S"
    if kill -0 "$1" 2>/dev/null && ! runs_a_child "$1"; then
        echo "entrypoint: torchrun runs no trainer ${IDLE_AGENT_STOP_S} s after SIGTERM (it waits for its group): killing it" >&2
        kill -KILL "$1" 2>/dev/null || true
    fi
}

# Whether process $1 has a child that is alive (a zombie, exited but not reaped, does not count).
runs_a_child() {
    for status_file in /proc/[0-9]*/status; do
        if grep -qs "^PPid:[[:space:]]*$1\$" "$status_file" && ! grep -qs "^State:[[:space:]]*Z" "$status_file"; then
            return 0
        fi
    done
    return 1
}

command="${1:-train}"
[ "$#" -gt 0 ] && shift
case "$command" in
    train) train "$@" ;;
    sample) exec chargpt sample "$@" ;;
    *) exec "$command" "$@" ;;
esac
