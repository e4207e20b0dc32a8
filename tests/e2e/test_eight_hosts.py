"""Eight hosts from scratch: a lab of its own, one site.yml run with the shipped `smoke` preset
(world size 8, its global batch of 12 split 2 or 1 per rank), then every check of a deployed
cluster and of its fetched artifacts, and the status of the finished run with a row for every host.
The network probe, which the two-host lab's first run and test_faults_probe.py test, is skipped
here (it cost about 48 s at eight hosts; the overlay check below tries every pair of hosts). The
hosts come with the engine's packages installed, as a provider's machine image may (the installs
themselves are the two-host lab's and the fault cases' added hosts'): site.yml must configure such
an engine without installing anything (about 50 s of package installs on two cores spared).
Only against the lab, never --inventory."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from harness.playbook import assert_succeeded

from .checks import ARTIFACT_CHECKS, CHECKS, check_id
from .cluster import Cluster
from .lab import KEEP_LAB, LAB_NAME, Lab, timed
from .status import FINISHED, LOGS_LINE, bin_command, status

HOSTS = 8
RUN_ID = "e2e-eight-hosts"
PLAYBOOK_VARS = ["-e", json.dumps({"trainer_preset": "smoke", "trainer_run_id": RUN_ID, "trainer_wait": True})]


@pytest.fixture(scope="module")
def eight_hosts_lab(pytestconfig, artifacts_dir):
    if pytestconfig.getoption("inventory", default=None):
        pytest.skip("--inventory names a cluster of your own: the eight-host lab is not brought up")
    lab = Lab(f"{LAB_NAME}{HOSTS}", playbook_vars=PLAYBOOK_VARS)
    try:
        timed(f"lab up ({HOSTS} hosts)", lab.command, "up", "--hosts", str(HOSTS), "--with-engine")
        shutil.rmtree(artifacts_dir / RUN_ID, ignore_errors=True)
        deployed = lab.playbook(log_name=f"site-{HOSTS}-hosts-from-scratch")
        assert_succeeded(deployed)
        installed = [task for task in deployed.ran_tasks() if task.startswith("docker : Install the engine")]
        assert not installed, f"site.yml installed packages on hosts that held the engine's already: {installed}"
        configured = [task for task in deployed.changed_tasks() if task.startswith("docker : Write the engine's daemon")]
        assert len(configured) == HOSTS, f"daemon.json written on {configured} (log {deployed.log})"
        # While it waited for the run, site.yml showed the run's progress (plugins/callback/chargpt.py),
        # not a retry line per poll.
        lines = deployed.output.splitlines()
        retries = [line for line in lines if "RETRYING" in line and "Wait until the master's supervisor" in line]
        assert not retries, f"site.yml printed retries while it waited for the run: {retries[:3]}"
        assert any(re.match(r"run \w+: step \d+/\d+ \| loss ", line) for line in lines), (
            f"site.yml showed no progress of the run while it waited (log {deployed.log})")
        yield lab
    finally:
        if not KEEP_LAB:
            timed(f"lab down ({HOSTS} hosts)", lab.command, "down")


@pytest.fixture(scope="module")
def eight_hosts(eight_hosts_lab):
    cluster = Cluster(eight_hosts_lab.inventory)
    assert len(cluster) == HOSTS and cluster.world_size == HOSTS, (
        f"{eight_hosts_lab.inventory}: {cluster.names}, world size {cluster.world_size}")
    return cluster


@pytest.mark.parametrize("check", CHECKS, ids=check_id)
def test_eight_hosts(eight_hosts, check):
    check(eight_hosts)


@pytest.mark.parametrize("check", ARTIFACT_CHECKS, ids=check_id)
def test_eight_hosts_artifacts(eight_hosts, artifacts_dir, check):
    check(eight_hosts, artifacts_dir)


def test_eight_hosts_status(eight_hosts_lab, eight_hosts):
    shown = status(eight_hosts_lab, eight_hosts.names, log_name=f"status-{HOSTS}-hosts")
    assert (shown.run_id, shown.state, shown.exit_code) == (RUN_ID, "finished", FINISHED), shown.run.tail(30)
    assert all(shown.step(host) == shown.step(eight_hosts.names[0]) > 0 for host in eight_hosts.names), shown.rows
    # Every host's log in one place (its time is in the e2e timings).
    logs = timed(f"logs-{HOSTS}-hosts", bin_command, "chargpt-logs", eight_hosts_lab, "--tail", "20")
    assert logs.returncode == 0, logs.stdout[-2000:] + logs.stderr
    lines = [LOGS_LINE.fullmatch(line) for line in logs.stdout.splitlines()]
    assert lines and all(lines), logs.stdout[:2000]
    assert {line["host"] for line in lines} == set(eight_hosts.names), logs.stdout[:2000]
