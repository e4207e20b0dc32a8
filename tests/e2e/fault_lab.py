"""The lab of the fault-injection tests (issue 5) and what their cases share: the settings of the
runs, the session that prepares the lab, records every case in artifacts/reliability/faults.json
and renders docs/RELIABILITY.md from it when every case ran, and the assertions on a finished run.

The cases (tests/e2e/test_faults_*.py) run on the two-host lab of the e2e tests, after its own
scenarios (test_lab_scenarios.py, which end with a teardown): the session takes it back to its first
two hosts and converges it with a run of its own, so that no second lab installs engines and ships
the image again. Each run case starts a run of its own (its own run id). pytest runs the files in
name order, which is the order the cases need: the bad inputs on the settled lab first, the refused
runs, the probe's limits, the process faults, the deployments beside a long run (case 7 adds a
third host), then the cases that add, remove and lose hosts, last."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar

import pytest

from harness import CORPUS, REPO
from harness.inventory import Inventory
from harness.playbook import PlaybookRun, assert_succeeded
from harness.roles import role_default

from .cluster import RUN_ID_LABEL, Cluster
from .faults import RESULTS_FILE, CaseResult, FaultRun, Results, on_host, start_run
from .lab import LAB_NAME, Lab, timed
from .reliability import DOC_FILE, RECOVERY_SETTINGS, render

PRESET = "smoke"
# The smoke model with a bigger batch and context: about 60 ms a step on 2 cores, so that a fault
# lands mid-run at a step the test chose (site.yml returns once the run trains, some steps in).
# Every step is logged, for the progress-lost figure.
FAULT_OVERRIDES = {"max_steps": 600, "log_interval": 1, "checkpoint_interval": 50, "eval_interval": 100,
                   "batch_size": 48, "block_size": 64}
CHECKPOINT_INTERVAL = FAULT_OVERRIDES["checkpoint_interval"]
# Where the faults land: halfway between two checkpoints, the first such step from this one on
# that the run has not reached when site.yml returns.
INJECT_AFTER_STEP = 75
# Runs that must outlast a playbook run (the re-run case, the unreachable host case).
LONG_OVERRIDES = dict(FAULT_OVERRIDES, max_steps=2000, log_interval=10, checkpoint_interval=500,
                      eval_interval=500)
# How long a trainer that must stay stopped is watched for its supervisor starting it again: the
# unit restarts it trainer_supervisor_restart_sec after it exits; two of those and a margin.
SUPERVISOR_WATCH_S = 2 * int(role_default("trainer", "trainer_supervisor_restart_sec")) + 2
BASE_RUN = {"run_id": "faults-base", "overrides": {"max_steps": 20, "eval_interval": 10, "checkpoint_interval": 10}}
DIST_TIMEOUT_S = 20
# How much later than dist_timeout_s after the pause rank 0 may report the timeout.
TIMEOUT_MARGIN_S = 15
CHECKPOINT_PAUSE_S = 45
# Every case the fault tests record (tests/e2e/test_checks.py checks this list against the
# CaseResult(...) of the test files): docs/RELIABILITY.md is rendered only when all of them ran.
EXPECTED_CASES = ["1", "2", "3", "4", "5", "6a", "6b", "6c", "6d", "6e", "6f", "6g", "6h", "6i", "6j", "6k", "6l", "7",
                  "8a", "8b", "8c", "8d", "8e", "10a", "10b", "10c", "10d", "11a", "11b", "11c", "12a", "12b",
                  "12c"]


def run_vars(run_id: str, overrides: dict, wait: bool = False, environment: dict | None = None,
             settings: dict | None = None) -> dict:
    """Extra vars of a run; environment is added to the lab inventory's trainer_environment,
    settings (other role variables) are passed as they are."""
    run = {"trainer_preset": PRESET, "trainer_run_id": run_id, "trainer_wait": wait, "trainer_overrides": overrides,
           **(settings or {})}
    if environment:
        run["trainer_environment"] = {**Inventory.read(REPO / "inventory" / LAB_NAME).all_vars.get(
            "trainer_environment", {}), **environment}
    return run


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    memory_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemTotal:"))
    docker = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True)
    os_name = next((line.split("=", 1)[1].strip('"') for line in Path("/etc/os-release").read_text().splitlines()
                    if line.startswith("PRETTY_NAME=")), platform.system())
    return {"os": os_name, "kernel": platform.release(), "cpus": os.cpu_count(), "cpu_model": cpu,
            "memory_gib": round(memory_kb / 2**20, 1), "docker_engine": docker.stdout.strip() or "unknown",
            "python": platform.python_version()}


def source_commit() -> str:
    """The commit the suite ran on, marked when the working tree differed from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True)
    return (head.stdout.strip() or "unknown") + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


class FaultLab:
    def __init__(self, lab: Lab, results: Results, session_tag: str):
        self.lab, self.results, self.session_tag = lab, results, session_tag

    def cluster(self) -> Cluster:
        return Cluster(self.lab.inventory)

    def start(self, name: str, overrides: dict, environment: dict | None = None, inventory: Path | None = None,
              settings: dict | None = None, every_stage: bool = False) -> FaultRun:
        """Start a fresh run (on the lab's inventory, or another one of its hosts): its id carries the
        session's tag, so that a kept lab never holds it finished. every_stage: site.yml provisions
        the hosts too, in the same run. A run that a failed case before left training is replaced:
        one failure must not fail every case after it."""
        run_id = f"{name}-{self.session_tag}"
        settings = {"trainer_replace_running": True, **(settings or {})}
        start_run(self.lab, run_vars(run_id, overrides, environment=environment, settings=settings),
                  log_name=f"faults-{'provision-and-start' if every_stage else 'start'}-{name}", inventory=inventory,
                  every_stage=every_stage)
        run = FaultRun(self.lab, Cluster(inventory) if inventory else self.cluster(), run_id, overrides["max_steps"])
        container = run.container(run.master)
        running = on_host(run.master, "docker", "inspect", "--format",
                          f'{{{{index .Config.Labels "{RUN_ID_LABEL}"}}}} {{{{.State.Status}}}}',
                          container).stdout.split()
        assert running == [run_id, "running"], f"{container} is {running} after site.yml started {run_id!r}"
        return run


@contextlib.contextmanager
def fault_lab_session(shared: Lab) -> Iterator[FaultLab]:
    """The fault lab: the e2e tests' lab, back to its first two hosts (a host its scenarios added is
    deleted) and converged by site.yml with a short finished run. At the end the results are
    completed and docs/RELIABILITY.md rendered when every case ran; the lab goes down with the e2e
    tests' lab fixture."""
    lab = Lab(shared.name, playbook_vars=[])
    started = datetime.now(timezone.utc)
    inventory = Inventory.read(lab.inventory)
    for host in (inventory.master + inventory.workers)[2:]:
        timed(f"faults: remove {host}", lab.command, "remove", host.rsplit("-", 1)[1])
    timed("faults: lab back to 2 hosts", lab.command, "up", "--hosts", "2")
    lab.use_network("overlay")
    first = lab.playbook("site.yml", "-e", json.dumps(run_vars(BASE_RUN["run_id"], BASE_RUN["overrides"], wait=True)),
                         log_name="faults-site-first-run")
    assert_succeeded(first)
    results = Results(RESULTS_FILE, {
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "lab": {"name": lab.name, "hosts": 2},
        "commit": source_commit(),
        "settings": {
            "trainer_preset": PRESET, "fault_overrides": FAULT_OVERRIDES, "long_overrides": LONG_OVERRIDES,
            "inject_after_step": INJECT_AFTER_STEP, "dist_timeout_s": DIST_TIMEOUT_S,
            "timeout_margin_s": TIMEOUT_MARGIN_S, "checkpoint_pause_s": CHECKPOINT_PAUSE_S,
            # What decides how a run recovers: the lab inventory's value, else the role's default.
            **{name: inventory.all_vars.get(name, role_default("trainer", name)) for name in RECOVERY_SETTINGS},
        }})
    yield FaultLab(lab, results, session_tag=started.strftime("%m%d%H%M%S"))
    results.data["session"]["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results.write()
    missing = [case for case in EXPECTED_CASES if case not in results.data["cases"]]
    if missing:
        print(f"\n{DOC_FILE.relative_to(REPO)} not rendered: cases {missing} did not run in this session")
    else:
        render(RESULTS_FILE, DOC_FILE)


class InOrder:
    """For the state of one run that several test functions hit in a fixed order (ORDER): each
    step fails at once unless the steps before it passed on that run."""

    ORDER: ClassVar[list[str]]
    passed: list[str]

    def require(self, step: str) -> None:
        expected = self.ORDER[:self.ORDER.index(step)]
        if self.passed != expected:
            pytest.fail(f"{step} needs {expected} to have passed on this run; passed: {self.passed}")


class recording:
    """Record a case's result when its block ends, also when an assertion in it fails."""

    def __init__(self, fault_lab: FaultLab, result: CaseResult):
        self.fault_lab, self.result = fault_lab, result

    def __enter__(self) -> CaseResult:
        return self.result

    def __exit__(self, kind, error, traceback):
        if error is None:
            self.result.passed = True
        else:
            self.result.outcome = f"FAILED: {str(error).splitlines()[0] if str(error) else kind.__name__}"
        self.fault_lab.results.record(self.result.case, self.result)
        return False


def assert_completed(run: FaultRun, summary: dict, world_size: int = 2) -> None:
    assert summary.get("status") == "complete", f"{run.run_id}: summary {summary}"
    assert summary["final_step"] == run.max_steps, f"{run.run_id}: final_step {summary['final_step']}, " \
                                                   f"expected {run.max_steps}"
    assert summary["world_size"] == world_size, f"{run.run_id}: summary {summary}"


# --- Deployments that must be refused (cases 8a-8e) ------------------------------------------------

# The corpus the fault lab's runs train on (the trainer role's default trainer_corpus_path).
DEPLOYED_CORPUS = REPO / "data" / "input.txt"


def deploy(fault_lab: FaultLab, vars_: dict, log_name: str, inventory: Path | None = None) -> tuple[PlaybookRun, float]:
    """site.yml's trainer stage with these variables: the run and how long it took."""
    started = time.monotonic()
    run = fault_lab.lab.playbook("site.yml", "--tags", "trainer", "-e", json.dumps(vars_), log_name=log_name,
                                 inventory=inventory)
    return run, round(time.monotonic() - started, 1)


def stop_trainers(fault_lab: FaultLab, inventory: Path | None = None) -> None:
    """Stop what a refused deployment left (a worker waits in the rendezvous for its master)."""
    run = fault_lab.lab.playbook("playbooks/teardown.yml", "--tags", "trainer", log_name="faults-identity-cleanup",
                                 inventory=inventory)
    assert run.returncode == 0, f"teardown --tags trainer exited {run.returncode} (log {run.log})"


def changed_corpus(folder: Path) -> str:
    """The corpus without its last 10,000 characters: the same vocabulary, another sha256."""
    path = folder / "shorter.txt"
    path.write_bytes(CORPUS.read_bytes()[:-10_000])
    return str(path)


def assert_refused_another_corpus(playbook: PlaybookRun, run_id: str, changed: str) -> None:
    """The trainer's own refusal reached site.yml's output: the run's directory and both digests,
    as the trainer abbreviates them (the corpus the run was trained on, the one deployed now)."""
    trained, offered = (hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12] for path in (DEPLOYED_CORPUS, changed))
    refusal = re.search(rf"run directory \S*/{re.escape(run_id)} was trained on another corpus "
                        rf"\(sha256 {trained}, this one is {offered}\)", playbook.text)
    assert refusal, (f"site.yml's output lacks the trainer's refusal of {run_id} naming sha256 {trained} and {offered} "
                     f"(log {playbook.log}):\n{playbook.tail(30)}")
