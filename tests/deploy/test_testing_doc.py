"""docs/TESTING.md cannot drift: every test file belongs to exactly one of its parts, and the
committed document is what tests/harness/suite_costs.py renders from the committed costs of a full
run, which covered every test file that still exists."""

from __future__ import annotations

import json

import pytest

from harness import REPO
from harness.suite_costs import COSTS, DOC, PARTS, part_of, render


def current_test_files() -> list[str]:
    return sorted(str(path.relative_to(REPO)) for path in (REPO / "tests").rglob("test_*.py"))


def test_every_test_file_belongs_to_exactly_one_part():
    assert [path for path in current_test_files() if part_of(path) is None] == []
    for part in PARTS:
        for item in part.files:
            assert (REPO / item).exists(), f"{part.name} names {item}, which does not exist"


def test_the_document_is_the_rendering_of_the_measured_costs():
    if not COSTS.exists():
        pytest.skip(f"{COSTS.relative_to(REPO)} is written by the first full run of tests/run.sh")
    record = json.loads(COSTS.read_text())
    assert DOC.read_text() == render(record), "run the full suite, or: cd tests && python -m harness.suite_costs"
    assert set(record["files"]) <= set(current_test_files()), "the costs name test files that no longer exist"
