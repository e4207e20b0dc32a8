"""What the fault suite records and publishes, without a lab: docs/RELIABILITY.md is rendered only
when every case ran, the list of cases is the one the test files record, and the document's
figures and times come from the results file as they are."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

from .fault_lab import EXPECTED_CASES
from .reliability import render_text
from .test_faults_bad_input import BAD_INPUTS

E2E = Path(__file__).resolve().parent


def recorded_cases() -> set[str]:
    """The case ids of every CaseResult("...") in the fault test files, and of the bad-input table."""
    cases = {case for case, *_ in BAD_INPUTS}
    for path in E2E.glob("test_faults_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "CaseResult" and node.args \
                    and isinstance(node.args[0], ast.Constant):
                cases.add(node.args[0].value)
    return cases


def test_the_expected_cases_are_the_cases_the_tests_record():
    assert sorted(EXPECTED_CASES) == sorted(recorded_cases())
    assert len(set(EXPECTED_CASES)) == len(EXPECTED_CASES)


RESULTS = {
    "session": {
        "started": "2026-12-06T10:00:00+00:00", "finished": "2026-12-06T10:18:30+00:00", "commit": "abc1234",
        "lab": {"name": "e2e", "hosts": 2},
        "machine": {"os": "Debian", "kernel": "6", "cpus": 2, "cpu_model": "x", "memory_gib": 23.5,
                    "docker_engine": "20.10", "python": "3.11"},
        "settings": {"trainer_preset": "smoke", "fault_overrides": {"max_steps": 600}, "long_overrides": {},
                     "inject_after_step": 75, "dist_timeout_s": 20, "timeout_margin_s": 15,
                     "checkpoint_pause_s": 45, "trainer_torchrun_max_restarts": 3,
                     "trainer_supervisor_restart_sec": 5, "trainer_stop_grace_period": "60s",
                     "process_chain": {"cases": ["3", "1"], "overrides": {"max_steps": 500},
                                       "trainer_torchrun_max_restarts": 8}},
    },
    "cases": {
        "1": {"case": "1", "fault": "kill -9", "outcome": "resumed", "passed": True, "progress_lost_steps": 27,
              "recovery_s": 3.5, "details": {"last_step_before_restart": 177}},
        "10c": {"case": "10c", "fault": "master lost", "outcome": "FAILED: no resume", "passed": False,
                "progress_lost_steps": None, "recovery_s": None, "details": {}},
    },
}


def test_the_document_shows_the_fault_suites_own_time_and_each_figure():
    text = render_text(copy.deepcopy(RESULTS))
    assert "ran from 2026-12-06T10:00:00+00:00 to 2026-12-06T10:18:30+00:00 (18.5 min)" in text
    assert "1 of 2 cases passed" in text
    assert "| 1 | kill -9 | pass | 27 | 3.5 | resumed |" in text
    assert ("`trainer_torchrun_max_restarts` 3, `trainer_supervisor_restart_sec` 5, `trainer_stop_grace_period` 60s"
            in text)
    assert "| 10c | master lost | FAIL | - | - | FAILED: no resume |" in text
    assert "Cases 3, 1 hit one run in that order" in text and "`trainer_torchrun_max_restarts` 8" in text
    assert "read after the fault" in text
