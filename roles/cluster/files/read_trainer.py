#!/usr/bin/env python3
"""What a host's trainer container is doing, as one JSON object on stdout (run on the host by
Ansible's script module: the start wait, the status and the artifacts' wait read a trainer alike).

    read_trainer.py CONTAINER [--unit UNIT] [--tail N] [--wait-s S --node-rank R]

{"exists", "status", "exit_code", "started_at", "supervisor", "joined", "steps", "log_tail"}: the
container's state, the supervisor unit's ActiveState (with --unit), how often the log of its
current start says the process group formed and a step was taken, and that log's last N lines.
With --wait-s it reads again every second, for up to S seconds, until the trainer exited or trains
(it joined the group and, on node rank 0, took a step)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

JOINED = "process group: backend="
STEP = "[chargpt] step "


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def read(container: str, unit: str, tail: int) -> dict:
    inspected = run("docker", "inspect", "--format", "{{json .State}}", container)
    state = json.loads(inspected.stdout) if inspected.returncode == 0 else None
    found = {"exists": state is not None, "status": None, "exit_code": None, "started_at": None,
             "supervisor": None, "joined": 0, "steps": 0, "log_tail": []}
    if unit:
        found["supervisor"] = run("systemctl", "show", "--property=ActiveState", "--value", unit).stdout.strip()
    if state is None:
        return found
    found.update(status=state["Status"], exit_code=state["ExitCode"], started_at=state["StartedAt"])
    # The log of this start only: the container's earlier starts said their own things.
    logs = run("docker", "logs", "--since", state["StartedAt"], container)
    lines = (logs.stdout + logs.stderr).splitlines()
    found["joined"] = sum(JOINED in line for line in lines)
    found["steps"] = sum(line.startswith(STEP) for line in lines)
    found["log_tail"] = lines[-tail:] if tail else []
    return found


def trains_or_exited(found: dict, node_rank: int) -> bool:
    if found["status"] == "exited":
        return True
    return found["joined"] > 0 and (node_rank != 0 or found["steps"] > 0)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("container")
    parser.add_argument("--unit", default="")
    parser.add_argument("--tail", type=int, default=40)
    parser.add_argument("--wait-s", type=int, default=0)
    parser.add_argument("--node-rank", type=int, default=0)
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.wait_s
    found = read(args.container, args.unit, args.tail)
    while time.monotonic() < deadline and not (found["exists"] and trains_or_exited(found, args.node_rank)):
        time.sleep(1)
        found = read(args.container, args.unit, args.tail)
    print(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
