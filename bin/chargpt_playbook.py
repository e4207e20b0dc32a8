"""What the commands in bin/ share: running one of the project's playbooks with ansible-playbook
from PATH and the repository's ansible.cfg, wherever they are called from."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
