"""Fixtures of the end-to-end tests: a lab of simulated hosts converged with site.yml once per
session, or, with `--inventory PATH`, a cluster of the user's that is already deployed; and the
fault-injection tests' session on that lab."""

from __future__ import annotations

import contextlib
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


# The order the e2e modules run in, by the labs they use: the tests without a lab, then the two-host
# lab's modules one after the other (its own scenarios, then the fault cases), the eight-host lab.
# Each lab goes down as soon as the last test that uses it has run (see pytest_runtest_teardown),
# so that no idle lab shares the machine's two cores with the next one.
MODULE_ORDER = ["test_checks", "test_fault_records", "test_lab_command", "test_cluster", "test_lab_scenarios",
                "test_faults_", "test_eight_hosts"]
# Session-wide lab fixtures, and how each is taken down early: {fixture name: ExitStack}.
_LAB_STACKS: dict[str, contextlib.ExitStack] = {}


def pytest_collection_modifyitems(items):
    def place(item) -> int:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        matches = [index for index, prefix in enumerate(MODULE_ORDER) if module.startswith(prefix)]
        return matches[0] if matches else len(MODULE_ORDER)
    e2e = [index for index, item in enumerate(items) if item.nodeid.startswith("tests/e2e/")]
    ordered = sorted((items[index] for index in e2e), key=place)  # stable: file order within a place
    for index, item in zip(e2e, ordered):
        items[index] = item


def pytest_runtest_teardown(item, nextitem):
    """Take a lab down after the last test that uses it (it would otherwise stay up to the session's
    end); what was set up last is closed first (the fault lab's session before the lab under it)."""
    for name, stack in reversed(list(_LAB_STACKS.items())):
        if name in item.fixturenames and (nextitem is None or name not in nextitem.fixturenames):
            stack.close()
            del _LAB_STACKS[name]


@contextlib.contextmanager
def lab_lifetime(name: str):
    """An ExitStack for a session-wide lab fixture that pytest_runtest_teardown may close early."""
    with contextlib.ExitStack() as stack:
        _LAB_STACKS[name] = stack
        try:
            yield stack
        finally:
            _LAB_STACKS.pop(name, None)


@pytest.fixture(scope="session")
def lab(pytestconfig, artifacts_dir):
    """A lab of two hosts on which site.yml ran once and trained (the first run's result in lab.first_run),
    with the trainers on the hosts' own network (cluster_network host): the checks, the second run and
    the lab's scenarios prove that mode; the fault cases and the eight hosts train over the overlay."""
    if pytestconfig.getoption("inventory", default=None):
        pytest.skip("--inventory names a cluster of your own: the lab-driving scenarios do not run against it")
    with lab_lifetime("lab") as lifetime:
        lab = Lab(LAB_NAME)
        if not KEEP_LAB:
            lifetime.callback(timed, "lab down", lab.command, "down")
        timed("lab up (2 hosts)", lab.command, "up", "--hosts", "2")
        lab.use_network("host")
        shutil.rmtree(artifacts_dir / RUN_ID, ignore_errors=True)
        lab.first_run = lab.playbook(log_name="site-first-run", network_probe=True)
        assert_succeeded(lab.first_run)
        assert "2 hosts, over the hosts' own network" in lab.first_run.output, (
            f"the network probe did not measure the host network (log {lab.first_run.log})")
        yield lab


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
def fault_lab(lab):
    """The fault lab of tests/e2e/test_faults_*.py (see fault_lab.py): the two-host lab, from the
    first fault case to the last."""
    with lab_lifetime("fault_lab") as lifetime:
        yield lifetime.enter_context(fault_lab_session(lab))


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.section("e2e timings")
        for label, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{label:<40} {seconds:7.1f} s")
