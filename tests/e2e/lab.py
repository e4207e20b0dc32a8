"""Drives the lab for tests: bring a lab up, run a playbook against it (through the harness's
runner, see tests/harness/playbook.py). Reusable by other suites (e.g. fault injection):
`from e2e.lab import Lab`."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from harness import REPO
from harness.playbook import PlaybookRun, run_playbook

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
TIMINGS: dict[str, float] = {}
# The network probe has tests of its own (the two-host lab's first deployment, the probe-limits
# fault case); every other deployment skips it, as a user may (README), to spend the suite's
# minutes on what it tests.
SKIP_PROBE = ["--skip-tags", "network_probe"]


def timed(label: str, function, *args, **kwargs):
    start = time.monotonic()
    try:
        return function(*args, **kwargs)
    finally:
        TIMINGS[label] = time.monotonic() - start


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

    def use_network(self, network: str) -> None:
        """Set cluster_network in the lab's inventory (its group_vars/all.yml), as a user sets it in
        theirs: the deployments and the checks read it there. lab/lab up and add write that file
        anew, without it (the overlay, the default)."""
        path = self.inventory / "group_vars" / "all.yml"
        kept = [line for line in path.read_text().splitlines() if not line.startswith("cluster_network:")]
        path.write_text("\n".join(kept + [f"cluster_network: {network}"]) + "\n")

    def reboot(self, host: str, power_loss: bool = False) -> None:
        """Restart one of the lab's hosts with its disk (lab/lab reboot); returns once SSH answers."""
        number = host.removeprefix(f"{self.name}-host-")
        assert number.isdigit(), f"{host} is not a host of lab {self.name}"
        self.command("reboot", number, *(["--power-loss"] if power_loss else []))

    def playbook(self, playbook: str = "site.yml", *args: str, log_name: str, inventory: Path | None = None,
                 on_line: Callable[[str], None] | None = None, network_probe: bool = False) -> PlaybookRun:
        """Run a playbook with the lab's variables against the lab's inventory (or another one, e.g.
        the lab's changed), timed under log_name; on_line sees each output line as it arrives. The
        network probe runs only when network_probe is true."""
        probe = [] if network_probe else SKIP_PROBE
        return timed(log_name, run_playbook, playbook, inventory or self.inventory, *self.playbook_vars, *probe, *args,
                     log_name=log_name, on_line=on_line)
