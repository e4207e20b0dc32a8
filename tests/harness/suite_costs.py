"""The suite's parts, what each proves and costs, and docs/TESTING.md made from them.

As a pytest plugin (tests/run.sh loads it with `-p harness.suite_costs`) it adds up, per test file,
how many tests ran and how long they took (setup, call and teardown), and writes
artifacts/suite-costs.json at the end of the run. When the run was the whole suite, it also copies
that file to docs/suite-costs.json and renders docs/TESTING.md from it. tests/deploy/test_testing_doc.py
checks that every test file belongs to exactly one part and that the committed document is the
rendering of the committed costs, so neither can drift.

    python -m harness.suite_costs [COSTS_JSON]     # re-render docs/TESTING.md (run from tests/)
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import REPO

ARTIFACT = REPO / "artifacts" / "suite-costs.json"
COSTS = REPO / "docs" / "suite-costs.json"
DOC = REPO / "docs" / "TESTING.md"
# .ci/run times lab/bootstrap.sh (a fresh machine's set-up) and passes the seconds on.
BOOTSTRAP_SECONDS = "SUITE_BOOTSTRAP_S"


@dataclass(frozen=True)
class Part:
    name: str
    files: tuple[str, ...]  # test files, or folders ending in "/", relative to the repository
    proves: str

    def holds(self, path: str) -> bool:
        return any(path == item or (item.endswith("/") and path.startswith(item)) for item in self.files)

    @property
    def command(self) -> str:
        return "tests/run.sh " + " ".join(item.rstrip("/") for item in self.files)


# In the order the suite runs them (tests/e2e/conftest.py orders the e2e files).
PARTS = (
    Part("Ansible, without hosts", ("tests/deploy/",),
         "yamllint, ansible-lint, syntax and argument specs; the preflight's refusals (every bad inventory, "
         "setting and corpus, with its message); the compose (overlay and host network), firewall (checked by nft) "
         "and supervisor templates rendered; "
         "the cluster role's layout against the inventory; the network probe's table and limits; the image tag; "
         "the shared run rules (error line, finished) and the script that reads a host's trainer; the status "
         "table and bin/chargpt-status; bin/chargpt-logs (merge, filters, unread hosts) and bin/chargpt-stop; the "
         "harness's recap parser"),
    Part("End to end, without a lab", ("tests/e2e/test_checks.py", "tests/e2e/test_fault_records.py",
                                       "tests/e2e/test_lab_command.py"),
         "the cluster checks judged on inspect results (confinement, limits, the trainers' network); the fault records and docs/RELIABILITY.md's rendering; "
         "lab/lab's refusals"),
    Part("Two-host lab", ("tests/e2e/test_cluster.py", "tests/e2e/test_lab_scenarios.py"),
         "a fresh site.yml trains across two simulated hosts on their own network (cluster_network host, the "
         "network probe measuring it); every cluster and artifact check (testinfra); a second run changes nothing; --check reports nothing; an image from an external "
         "registry takes a finished run on (an allowed change of max_steps); teardown leaves nothing"),
    Part("Fault cases, on the two-host lab", ("tests/e2e/test_faults_bad_input.py", "tests/e2e/test_faults_identity.py",
                                               "tests/e2e/test_faults_integrity.py", "tests/e2e/test_faults_probe.py", "tests/e2e/test_faults_processes.py",
                                               "tests/e2e/test_faults_provisioning.py",
                                               "tests/e2e/test_faults_replicas.py"),
         "every fault case of docs/RELIABILITY.md (which it writes), over the overlay: bad inputs (oversized runs among them) stop "
         "in preflight; refused settings, corpora and run ids; a damaged model refused by the fetch; a diverging "
         "run stopped for good; the probe's limits; seven faults on one run (five process faults, one with a "
         "damaged checkpoint, the master's host rebooted, the worker's host cut from its power); deployments beside a training run, "
         "its status and its merged logs; a host with no engine that joins a training run (the host checks on "
         "it) and leaves it, trainers stopped by bin/chargpt-stop (kept stopped across a reboot; --cancel; "
         "another run id refused), the master's host lost for "
         "good (the hosts left notice it within dead_peer_timeout_s, the dead node pruned, the join tokens "
         "rotated)"),
    Part("Eight-host lab", ("tests/e2e/test_eight_hosts.py",),
         "site.yml from scratch on eight hosts with the shipped smoke preset over the overlay (world size 8, "
         "uneven batch split), every cluster and artifact check, the status of the finished run"),
    Part("Trainer", ("tests/trainer/",),
         "the model, config, corpus, checkpoints, resume and replicas, the probe and the CLI, with real "
         "2- and 3-rank Gloo groups over loopback (process faults, a frozen or slow peer, uneven batches, SIGTERM, "
         "a node lost for good while the others train on at a smaller world size through the image's entrypoint)"),
)


def part_of(path: str) -> Part | None:
    holding = [part for part in PARTS if part.holds(path)]
    return holding[0] if len(holding) == 1 else None


# --- The plugin ------------------------------------------------------------------------------------

class _Costs:
    def __init__(self):
        self.started = time.time()
        self.files: dict[str, dict] = {}
        self.collected: set[str] = set()

    def add(self, path: str, seconds: float, outcome: str | None) -> None:
        entry = self.files.setdefault(path, {"tests": 0, "seconds": 0.0, "failed": 0})
        entry["seconds"] += seconds
        if outcome is not None:
            entry["tests"] += 1
            entry["failed"] += outcome == "failed"


_costs = _Costs()


def pytest_collection_finish(session):
    _costs.collected = {item.nodeid.split("::")[0] for item in session.items}


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    # One outcome per test: the call's, or setup's when the test never got to its call.
    counts = report.when == "call" or (report.when == "setup" and not report.passed)
    _costs.add(path, report.duration, report.outcome if counts else None)


def pytest_sessionfinish(session, exitstatus):
    if not _costs.files:
        return
    every_file = sorted(str(path.relative_to(REPO)) for path in (REPO / "tests").rglob("test_*.py"))
    record = {
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "pytest_seconds": round(time.time() - _costs.started, 1),
        "bootstrap_seconds": float(os.environ[BOOTSTRAP_SECONDS]) if os.environ.get(BOOTSTRAP_SECONDS) else None,
        "exit_status": int(exitstatus),
        "files": {path: dict(entry, seconds=round(entry["seconds"], 1))
                  for path, entry in sorted(_costs.files.items())},
    }
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(json.dumps(record, indent=2) + "\n")
    if sorted(_costs.collected) == every_file and not session.config.option.keyword \
            and not session.config.option.markexpr:
        COSTS.write_text(ARTIFACT.read_text())
        DOC.write_text(render(record))


# --- The document ----------------------------------------------------------------------------------

def minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def render(record: dict) -> str:
    files = record["files"]
    lines = [
        "# Testing: the suite's parts, what each proves and what it costs",
        "",
        "<!-- Generated by tests/harness/suite_costs.py from docs/suite-costs.json, which a full run of",
        "     tests/run.sh writes. Do not edit: change the parts in suite_costs.py and run the suite. -->",
        "",
        "`tests/run.sh` runs every part in this order, one test at a time (the fault figures depend on the "
        "step rates of a machine's cores); `.ci/run` sets the machine up first and removes the labs that "
        "earlier runs left behind. Each part also runs alone with the command beside it (the labs it needs "
        "come up and go down with it).",
        "",
        f"Costs measured in the full run that finished {record['finished']} (exit status "
        f"{record['exit_status']}): set-up (`lab/bootstrap.sh` on a fresh clone) "
        f"{minutes(record['bootstrap_seconds'])}, pytest {minutes(record['pytest_seconds'])}.",
        "",
        "| part | what it proves | tests | cost | run it alone |",
        "| --- | --- | --- | --- | --- |",
    ]
    for part in PARTS:
        held = [entry for path, entry in files.items() if part.holds(path)]
        tests = sum(entry["tests"] for entry in held)
        seconds = sum(entry["seconds"] for entry in held)
        lines.append(f"| {part.name} | {part.proves} | {tests} | {minutes(seconds)} | `{part.command}` |")
    lines += ["", "Per file:", "", "| file | tests | seconds |", "| --- | --- | --- |"]
    for path, entry in files.items():
        lines.append(f"| `{path}` | {entry['tests']} | {entry['seconds']:.0f} |")
    lines += ["", "The e2e labs print what their deployments cost under `e2e timings` at the end of a run "
              "(artifacts/e2e-logs/ holds each playbook's full log); docs/RELIABILITY.md holds the fault "
              "figures of the same run.", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    source = Path(argv[0]) if argv else COSTS
    DOC.write_text(render(json.loads(source.read_text())))
    print(f"suite_costs: wrote {DOC} from {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
