"""Fixtures of the end-to-end tests: a lab of simulated hosts converged with site.yml once per
session, or, with `--inventory PATH`, a cluster of the user's that is already deployed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .cluster import Cluster

REPO = Path(__file__).resolve().parents[2]
LAB_NAME = os.environ.get("E2E_LAB_NAME", "e2e")
# Keep the lab after the session (to look around): E2E_KEEP_LAB=1.
KEEP_LAB = os.environ.get("E2E_KEEP_LAB") == "1"
RUN_ID = "e2e-smoke"
# The same variables on every run, so that a second run has nothing to change.
# (JSON, so that trainer_wait is a boolean: the roles refuse strings posing as booleans.)
PLAYBOOK_VARS = ["-e", json.dumps({"trainer_preset": "smoke", "trainer_run_id": RUN_ID, "trainer_wait": True})]
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
    """Drives lab/lab for one lab name."""

    def __init__(self, name: str):
        self.name = name
        self.inventory = REPO / "inventory" / name

    def command(self, *args: str) -> str:
        result = subprocess.run([str(REPO / "lab" / "lab"), *args], cwd=REPO, env=dict(os.environ, LAB_NAME=self.name),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=900)
        assert result.returncode == 0, f"lab/lab {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
        return result.stdout

    def playbook(self, playbook: str = "site.yml", *args: str, log_name: str) -> PlaybookRun:
        return timed(log_name, run_playbook, self.inventory, playbook, *PLAYBOOK_VARS, *args, log_name=log_name)


@pytest.fixture(scope="session")
def artifacts_dir(pytestconfig) -> Path:
    return Path(pytestconfig.getoption("artifacts_dir")).resolve()


@pytest.fixture(scope="session")
def lab(pytestconfig, artifacts_dir):
    """A lab of two hosts on which site.yml ran once and trained (the first run's result in lab.first_run)."""
    if pytestconfig.getoption("inventory"):
        pytest.skip("--inventory names a cluster of your own: the lab-driving scenarios do not run against it")
    lab = Lab(LAB_NAME)
    try:
        timed("lab up (2 hosts)", lab.command, "up", "--hosts", "2")
        shutil.rmtree(artifacts_dir / RUN_ID, ignore_errors=True)
        lab.first_run = lab.playbook(log_name="site-first-run")
        assert_succeeded(lab.first_run)
        yield lab
    finally:
        if not KEEP_LAB:
            timed("lab down", lab.command, "down")


@pytest.fixture(scope="session")
def inventory_path(pytestconfig, request) -> Path:
    given = pytestconfig.getoption("inventory")
    if given:
        return Path(given).resolve()
    return request.getfixturevalue("lab").inventory


@pytest.fixture(scope="module")
def cluster(inventory_path) -> Cluster:
    return Cluster(inventory_path)


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.section("e2e timings")
        for label, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{label:<40} {seconds:7.1f} s")
