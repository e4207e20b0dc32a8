"""Fixtures of the end-to-end tests: a lab of simulated hosts converged with site.yml once per
session, or, with `--inventory PATH`, a cluster of the user's that is already deployed; and the
fault-injection tests' lab of their own."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.playbook import assert_succeeded

from .cluster import Cluster
from .fault_lab import fault_lab_session
from .lab import KEEP_LAB, LAB_NAME, RUN_ID, TIMINGS, Lab, timed


# Registered here, not in tests/conftest.py: a top-level conftest.py would shadow the `conftest`
# module that other suites' worker processes import. pytest reads these options when the command
# line names tests/e2e or a file in it (`pytest tests/e2e/test_cluster.py --inventory ...`).
def pytest_addoption(parser):
    group = parser.getgroup("chargpt cluster checks (tests/e2e)")
    group.addoption(
        "--inventory", default=None, metavar="PATH",
        help="check this already deployed cluster (an Ansible inventory file or folder) with the "
             "read-only checks of tests/e2e/test_cluster.py instead of bringing up a lab; the "
             "lab-driving scenarios are then skipped")
    group.addoption(
        "--artifacts-dir", default="artifacts", metavar="PATH",
        help="where site.yml fetched the run's artifacts on this machine (default: artifacts)")


@pytest.fixture(scope="session")
def artifacts_dir(pytestconfig) -> Path:
    return Path(pytestconfig.getoption("artifacts_dir", default="artifacts")).resolve()


@pytest.fixture(scope="session")
def lab(pytestconfig, artifacts_dir):
    """A lab of two hosts on which site.yml ran once and trained (the first run's result in lab.first_run)."""
    if pytestconfig.getoption("inventory", default=None):
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
    given = pytestconfig.getoption("inventory", default=None)
    if given:
        return Path(given).resolve()
    return request.getfixturevalue("lab").inventory


@pytest.fixture(scope="module")
def cluster(inventory_path) -> Cluster:
    return Cluster(inventory_path)


@pytest.fixture(scope="session")
def fault_lab(pytestconfig):
    """The fault lab of tests/e2e/test_faults_*.py (see fault_lab.py), up from the first fault case
    to the end of the session."""
    if pytestconfig.getoption("inventory", default=None):
        pytest.skip("--inventory names a cluster of your own: the fault-injection tests need a lab")
    with fault_lab_session() as fault_lab:
        yield fault_lab


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.section("e2e timings")
        for label, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{label:<40} {seconds:7.1f} s")
