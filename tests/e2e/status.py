"""playbooks/status.yml against a lab: its state word and its table, as a person reads them; and
bin/chargpt-status right after it, whose exit status a script reads; the other commands of bin/."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness import REPO
from harness.playbook import PlaybookRun, ansible_env, tool

from .lab import Lab

STATE_LINE = re.compile(r'"run (\S+): (starting|training|recovering|finished|failed|stopped)"')
# A line of bin/chargpt-logs: time (UTC, milliseconds), host, node rank, the trainer's line.
LOGS_LINE = re.compile(r"(?P<at>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (?P<host>\S+) rank (?P<rank>\d+) \| "
                       r"(?P<text>.*)")
# bin/chargpt-status's exit status by state, as its usage and the README give it.
FINISHED, FAILED, RUNNING, STOPPED = 0, 1, 3, 5


@dataclass
class Status:
    run: PlaybookRun
    run_id: str
    state: str
    rows: dict[str, list[str]]  # host: its cells, the header's columns in order
    command: subprocess.CompletedProcess  # bin/chargpt-status, run just after the playbook

    @property
    def exit_code(self) -> int:
        return self.command.returncode

    def step(self, host: str) -> int:
        return int(self.rows[host][4].split("/")[0])


def status(lab: Lab, hosts: list[str], *args: str, log_name: str, inventory: Path | None = None) -> Status:
    """Run the status playbook in check mode (it must change nothing) against the lab's inventory (or
    another one of its hosts) and read what it printed, then bin/chargpt-status with the same arguments."""
    run = lab.playbook("playbooks/status.yml", "--check", *args, log_name=log_name, inventory=inventory)
    assert not run.changed_hosts(), f"status.yml changed {run.changed_hosts()} (log {run.log})"
    match = STATE_LINE.search(run.text)
    assert match, f"status.yml printed no state line (exit {run.returncode}, log {run.log}):\n{run.tail(30)}"
    rows = {}
    for line in run.output.splitlines():
        if not line.strip().startswith('"'):  # the table is a list of strings in the debug output
            continue
        cells = line.strip().strip('",').split()
        if cells and cells[0] in hosts:
            rows[cells[0]] = cells
    assert sorted(rows) == sorted(hosts), f"status.yml's table has rows for {sorted(rows)} (log {run.log})"
    return Status(run, match[1], match[2], rows, status_command(lab, "--check", *args, inventory=inventory))


def status_command(lab: Lab, *args: str, inventory: Path | None = None) -> subprocess.CompletedProcess:
    return bin_command("chargpt-status", lab, *args, inventory=inventory)


def bin_command(name: str, lab: Lab, *args: str, inventory: Path | None = None) -> subprocess.CompletedProcess:
    """A command of bin/ against the lab (or another inventory of its hosts), with the lab's
    variables, from outside the repository."""
    ansible_bin = Path(tool("ansible-playbook")).parent
    env = ansible_env(PATH=f"{ansible_bin}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run([str(REPO / "bin" / name), "-i", str(inventory or lab.inventory), *lab.playbook_vars, *args],
                          cwd=REPO.parent, env=env, capture_output=True, text=True, timeout=300)
