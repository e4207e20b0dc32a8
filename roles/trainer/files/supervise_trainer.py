#!/usr/bin/env python3
"""Start one trainer container unless it runs, wait for it, and end with its exit code.

    supervise_trainer.py DOCKER_CLI CONTAINER STOP_RECORD

Run by the trainer's systemd unit (Restart=on-failure), which starts with the engine, at boot too:
the container has no restart policy of its own, so this is the one place that decides whether it
starts again. It leaves alone a container that refused its settings (exit 2), one whose run
diverged and stopped for good (exit 4), one that finished (exit 0) and one that a person stopped: a `docker stop` seen while this script watched the container
(exit 143) is written to STOP_RECORD, which keeps it stopped across reboots until a deployment
removes the record. The engine's own stop at shutdown is never seen here: the unit is part of the
engine's unit and stops before it, so a host that reboots starts its trainer again. The docker CLI
is called with an argument list: no shell sees the container's name."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

FINISHED = 0
REFUSED_SETTINGS = 2
DIVERGED = 4
STOPPED_ON_REQUEST = 143
# The unit restarts on any other code; 1 stands for "the supervisor itself could not do its job".
SUPERVISOR_FAILED = 1


def docker(cli: str, *args: str) -> str:
    return subprocess.run([cli, *args], check=True, stdout=subprocess.PIPE, text=True).stdout.strip()


def supervise(cli: str, container: str, stop_record: Path) -> int:
    status, exit_code = docker(cli, "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", container).split()
    if status == "running":
        stop_record.unlink(missing_ok=True)  # started again since that stop, by hand
    else:
        if exit_code == str(REFUSED_SETTINGS):
            print(f"{container} refused its settings (exit {REFUSED_SETTINGS}): not starting it again", file=sys.stderr)
            return REFUSED_SETTINGS
        if exit_code == str(DIVERGED):
            print(f"{container}'s run diverged and stopped for good (exit {DIVERGED}): not starting it again",
                  file=sys.stderr)
            return DIVERGED
        if exit_code == str(FINISHED):
            print(f"{container} finished its run (exit {FINISHED}): not starting it again", file=sys.stderr)
            return FINISHED
        if stop_record.exists():
            print(f"{container} was stopped on request ({stop_record}): not starting it again; a deployment "
                  f"that starts the trainer removes the record", file=sys.stderr)
            return STOPPED_ON_REQUEST
    docker(cli, "start", container)  # a no-op on a running container
    exit_code = int(docker(cli, "wait", container))
    if exit_code == STOPPED_ON_REQUEST:
        stop_record.write_text(f"{container} stopped on request (exit {exit_code}) at "
                               f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
    return exit_code


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(f"usage: {argv[0]} DOCKER_CLI CONTAINER STOP_RECORD", file=sys.stderr)
        return SUPERVISOR_FAILED
    try:
        return supervise(argv[1], argv[2], Path(argv[3]))
    except (OSError, subprocess.CalledProcessError, ValueError) as error:
        print(f"supervise_trainer: {error}", file=sys.stderr)
        return SUPERVISOR_FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv))
