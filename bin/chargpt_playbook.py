"""What the commands in bin/ share: running one of the project's playbooks with ansible-playbook
from PATH and the repository's ansible.cfg, wherever they are called from; the end of its output
when it failed; their usage errors and --follow [SECONDS]."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Lines of the playbook's own output a command shows when the playbook did not do its job.
OUTPUT_TAIL_LINES = 30


class UsageError(Exception):
    pass


def run_playbook(playbook: str, args: list[str], extra_vars: dict) -> subprocess.CompletedProcess:
    """ansible-playbook PLAYBOOK ARGS -e EXTRA_VARS (JSON, so that a path with spaces stays one value;
    last, so that it wins over the user's -e), its output and errors together in stdout."""
    command = ["ansible-playbook", str(REPO / playbook), *args, "-e", json.dumps(extra_vars)]
    env = dict(os.environ)
    env.setdefault("ANSIBLE_CONFIG", str(REPO / "ansible.cfg"))
    try:
        return subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except FileNotFoundError:
        return subprocess.CompletedProcess(command, 127, "ansible-playbook is not on PATH "
                                                         "(source .venv/bin/activate first)\n")


def failed_playbook(playbook: subprocess.CompletedProcess, command: str, what: str) -> str:
    """The end of a playbook's output, then one line: COMMAND: ansible-playbook exited N, then WHAT
    (" without reading the run", ": the run is not ...")."""
    tail = playbook.stdout.rstrip().splitlines()[-OUTPUT_TAIL_LINES:]
    return "\n".join([*tail, f"{command}: ansible-playbook exited {playbook.returncode}{what}"])


def follow_seconds(arg: str, remaining: list[str], default: float) -> float:
    """The seconds of --follow (arg) or --follow=S: from the next argument only when that is a
    number (taken off remaining), else the default."""
    value = arg.partition("=")[2] or (remaining.pop(0) if remaining and is_number(remaining[0]) else "")
    if value and (not is_number(value) or float(value) <= 0):
        raise UsageError(f"--follow takes a number of seconds above 0, not {value!r}")
    return float(value) if value else default


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
