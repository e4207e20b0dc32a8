#!/usr/bin/env python3
"""Start one trainer container unless it runs, wait for it, and end with its exit code.

    supervise_trainer.py DOCKER_CLI CONTAINER

Run by the trainer's systemd unit (Restart=on-failure): the container has no restart policy of its
own, so this is the one place that decides whether it starts again. A container that exited 2
refused its settings: it is left stopped and this ends with 2 too, which the unit never restarts.
The docker CLI is called with an argument list: no shell sees the container's name."""

from __future__ import annotations

import subprocess
import sys

REFUSED_SETTINGS = 2
# The unit restarts on any other code; 1 stands for "the supervisor itself could not do its job".
SUPERVISOR_FAILED = 1


def docker(cli: str, *args: str) -> str:
    return subprocess.run([cli, *args], check=True, stdout=subprocess.PIPE, text=True).stdout.strip()


def supervise(cli: str, container: str) -> int:
    state = docker(cli, "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", container)
    if state == f"exited {REFUSED_SETTINGS}":
        print(f"{container} refused its settings (exit {REFUSED_SETTINGS}): not starting it again", file=sys.stderr)
        return REFUSED_SETTINGS
    docker(cli, "start", container)  # a no-op on a running container
    return int(docker(cli, "wait", container))


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(f"usage: {argv[0]} DOCKER_CLI CONTAINER", file=sys.stderr)
        return SUPERVISOR_FAILED
    try:
        return supervise(argv[1], argv[2])
    except (OSError, subprocess.CalledProcessError, ValueError) as error:
        print(f"supervise_trainer: {error}", file=sys.stderr)
        return SUPERVISOR_FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv))
