"""playbooks/status.yml against a lab: its state word and its table, as a person reads them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.playbook import PlaybookRun

from .lab import Lab

STATE_LINE = re.compile(r'"run (\S+): (starting|training|recovering|finished|failed)"')


@dataclass
class Status:
    run: PlaybookRun
    run_id: str
    state: str
    rows: dict[str, list[str]]  # host: its cells, the header's columns in order

    def step(self, host: str) -> int:
        return int(self.rows[host][4].split("/")[0])


def status(lab: Lab, hosts: list[str], *args: str, log_name: str) -> Status:
    """Run the status playbook in check mode (it must change nothing) and read what it printed."""
    run = lab.playbook("playbooks/status.yml", "--check", *args, log_name=log_name)
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
    return Status(run, match[1], match[2], rows)
