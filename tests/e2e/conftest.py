"""Fixtures of the end-to-end tests: a lab of simulated hosts converged with site.yml once per
session, or, with `--inventory PATH`, a cluster of the user's that is already deployed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .cluster import Cluster
from .lab import KEEP_LAB, LAB_NAME, RUN_ID, TIMINGS, Lab, assert_succeeded, timed


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
