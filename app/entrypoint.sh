#!/bin/sh
# Entry point of the trainer image: `train` (default) launches chargpt through torchrun with the
# torchrun settings from the environment; `sample ...` runs `chargpt sample ...`; anything else
# runs as a command.
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
    for name in NNODES NPROC_PER_NODE NODE_RANK MASTER_PORT TORCHRUN_MAX_RESTARTS; do
        eval "value=\${$name}"
        is_count "$value" || fail "$name='$value' must be a non-negative integer"
    done
    [ "$NNODES" -ge 1 ] || fail "NNODES must be at least 1"
    [ "$NPROC_PER_NODE" -ge 1 ] || fail "NPROC_PER_NODE must be at least 1"
    [ "$NODE_RANK" -lt "$NNODES" ] || fail "NODE_RANK=$NODE_RANK must be below NNODES=$NNODES"
    expected_world_size=$((NNODES * NPROC_PER_NODE))
    if [ -n "${WORLD_SIZE:-}" ] && [ "$WORLD_SIZE" != "$expected_world_size" ]; then
        fail "WORLD_SIZE=$WORLD_SIZE disagrees with NNODES*NPROC_PER_NODE=$NNODES*$NPROC_PER_NODE=$expected_world_size; fix one of them"
    fi
    [ -n "$MASTER_ADDR" ] || fail "MASTER_ADDR is empty; set it to the master's address or name"
    [ -n "$RUN_ID" ] || fail "RUN_ID is empty; set it to the name of this run"
    # torchrun sets WORLD_SIZE itself for every worker.
    unset WORLD_SIZE

    set -- "$@" --data "$TRAIN_DATA" --run-dir "$RUN_ROOT/$RUN_ID" --preset "$TRAIN_PRESET"
    set -f
    for override in $TRAIN_OVERRIDES; do
        set -- "$@" --set "$override"
    done
    echo "entrypoint: node $NODE_RANK of $NNODES, $NPROC_PER_NODE process(es) per node, master $MASTER_ADDR:$MASTER_PORT, world size $expected_world_size"
    exec torchrun \
        --nnodes="$NNODES" \
        --nproc-per-node="$NPROC_PER_NODE" \
        --node-rank="$NODE_RANK" \
        --master-addr="$MASTER_ADDR" \
        --master-port="$MASTER_PORT" \
        --max-restarts="$TORCHRUN_MAX_RESTARTS" \
        -m chargpt train "$@"
}

command="${1:-train}"
[ "$#" -gt 0 ] && shift
case "$command" in
    train) train "$@" ;;
    sample) exec chargpt sample "$@" ;;
    *) exec "$command" "$@" ;;
esac
