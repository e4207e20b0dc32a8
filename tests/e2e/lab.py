"""Drives the lab and ansible-playbook for tests: bring a lab up, run a playbook against it, read
the recap. Reusable by other suites (e.g. fault injection): `from e2e.lab import Lab`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAB_NAME = os.environ.get("E2E_LAB_NAME", "e2e")
# Keep the lab after the session (to look around): E2E_KEEP_LAB=1.
KEEP_LAB = os.environ.get("E2E_KEEP_LAB") == "1"
RUN_ID = "e2e-smoke"
# The smoke preset, long enough (4 evaluations) for the loss to fall clearly.
TRAIN_OVERRIDES = {"max_steps": 80, "eval_interval": 20, "checkpoint_interval": 20}
# The same variables on every run, so that a second run has nothing to change.
# (JSON, so that trainer_wait is a boolean: the roles refuse strings posing as booleans.)
PLAYBOOK_VARS = ["-e", json.dumps({"trainer_preset": "smoke", "trainer_run_id": RUN_ID, "trainer_wait": True,
                                   "trainer_overrides": TRAIN_OVERRIDES})]
LOG_DIR = REPO / "artifacts" / "e2e-logs"
RECAP_LINE = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
TIMINGS: dict[str, float] = {}


@dataclass
class PlaybookRun:
    command: list[str]
    returncode: int
    output: str
    log: Path
    recap: dict[str, dict[str, int]] = field(default_factory=dict)

    def changed_tasks(self) -> list[str]:
        """'task name: host' for each task that reported a change."""
        changed, task = [], "?"
        for line in self.output.splitlines():
            if line.startswith("TASK ["):
                task = line[6:line.rfind("]")]
            elif line.startswith("changed: ["):
                changed.append(f"{task}: {line[10:line.index(']')]}")
        return changed

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


def timed(label: str, function, *args, **kwargs):
    start = time.monotonic()
    try:
        return function(*args, **kwargs)
    finally:
        TIMINGS[label] = time.monotonic() - start


def run_playbook(inventory: Path, playbook: str, *args: str, log_name: str) -> PlaybookRun:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    command = ["ansible-playbook", playbook, "-i", str(inventory), *args]
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    result = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=1800)
    log = LOG_DIR / f"{log_name}.log"
    log.write_text(result.stdout)
    recap = {m[1]: {"ok": int(m[2]), "changed": int(m[3]), "unreachable": int(m[4]), "failed": int(m[5])}
             for m in RECAP_LINE.finditer(result.stdout)}
    return PlaybookRun(command, result.returncode, result.stdout, log, recap)


def assert_succeeded(run: PlaybookRun) -> None:
    assert run.returncode == 0, (
        f"`{' '.join(run.command)}` exited {run.returncode} (full log {run.log}); it ends:\n{run.tail()}")


class Lab:
    """Drives lab/lab for one lab name, and ansible-playbook against its inventory."""

    def __init__(self, name: str, playbook_vars: list[str] | None = None):
        self.name = name
        self.inventory = REPO / "inventory" / name
        self.playbook_vars = PLAYBOOK_VARS if playbook_vars is None else playbook_vars
        self.first_run: PlaybookRun | None = None

    def command(self, *args: str) -> str:
        result = subprocess.run([str(REPO / "lab" / "lab"), *args], cwd=REPO, env=dict(os.environ, LAB_NAME=self.name),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=900)
        assert result.returncode == 0, f"lab/lab {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
        return result.stdout

    def playbook(self, playbook: str = "site.yml", *args: str, log_name: str) -> PlaybookRun:
        return timed(log_name, run_playbook, self.inventory, playbook, *self.playbook_vars, *args, log_name=log_name)
