"""Elastic membership (issue 24), with the image's own entrypoint: three nodes on 127.0.0.1-3, each
with its own run directory (its own disk) and MIN_NODES=2. The third node is killed for good mid-run,
its training process with it, as a host that dies; the two left form the group again at world size 2
by themselves, resume from the newest checkpoint they hold with the same global batch, and finish."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import APP_DIR, child_env, free_port, parent_pids
from test_replicas import wait_for_step

ENTRYPOINT = APP_DIR / "entrypoint.sh"
NODES = 3
SETTINGS = {"CHARGPT_MAX_STEPS": "150", "CHARGPT_CHECKPOINT_INTERVAL": "20", "CHARGPT_EVAL_INTERVAL": "50",
            "CHARGPT_LOG_INTERVAL": "10", "CHARGPT_DEAD_PEER_TIMEOUT_S": "5"}


def start_node(rank: int, corpus: Path, run_root: Path, port: int) -> subprocess.Popen:
    env = child_env(NNODES=str(NODES), MIN_NODES="2", NPROC_PER_NODE="1", NODE_RANK=str(rank),
                    NODE_ADDR=f"127.0.0.{rank + 1}", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                    RUN_ID="elastic", TRAIN_PRESET="smoke", TRAIN_DATA=str(corpus), RUN_ROOT=str(run_root),
                    TORCHRUN_MAX_RESTARTS="3", TORCHRUN_JOIN_TIMEOUT_S="60", TORCHRUN_REJOIN_WAIT_S="3",
                    GLOO_SOCKET_IFNAME="lo", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                    **SETTINGS)
    return subprocess.Popen(["sh", str(ENTRYPOINT), "train"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def descendants(pid: int) -> list[int]:
    """pid and every process below it (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for child, parent in parent_pids().items():
        children.setdefault(parent, []).append(child)
    found, queue = [], [pid]
    while queue:
        found.append(queue.pop())
        queue.extend(children.get(found[-1], []))
    return found


def test_the_nodes_left_after_a_lost_node_train_on_at_the_smaller_world_size(corpus_path, tmp_path):
    port = free_port()
    roots = [tmp_path / f"node{rank}" for rank in range(NODES)]
    nodes = [start_node(rank, corpus_path, root, port) for rank, root in enumerate(roots)]
    try:
        wait_for_step(roots[2] / "elastic", 30, nodes)
        for pid in descendants(nodes[2].pid):
            os.kill(pid, signal.SIGKILL)
        held = [sorted(int(path.name[5:13]) for path in (root / "elastic" / "checkpoints").glob("ckpt-*.pt"))
                for root in roots[:2]]
        logs = [node.communicate(timeout=180)[0] for node in nodes[:2]]
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
    for rank, (node, log) in enumerate(zip(nodes[:2], logs)):
        assert node.returncode == 0, f"node {rank} exited {node.returncode}:\n{log[-3000:]}"
    newest = max(step for steps in held for step in steps)
    after_loss = logs[0].split("process group: backend=gloo world_size=3")[-1]
    assert "process group: backend=gloo world_size=2" in after_loss, logs[0][-3000:]
    assert "global batch=12 (6 per rank x 2 ranks" in after_loss, logs[0][-3000:]
    resumed = int(after_loss.split("resumed from step ")[1].split()[0])
    assert resumed >= newest, f"resumed from step {resumed}, but the nodes left held checkpoint {newest}"
    summary = json.loads((roots[0] / "elastic" / "summary.json").read_text())
    assert (summary["status"], summary["final_step"], summary["world_size"]) == ("complete", 150, 2), summary
