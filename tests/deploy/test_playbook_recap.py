"""The harness reads every PLAY RECAP with one parser: counts as whole numbers, every host's line,
and a line it cannot read is an error rather than a host that changed nothing."""

from __future__ import annotations

import pytest

from harness.playbook import PlaybookRun, parse_recap

RECAP = """\
TASK [Show the run] ***************************************************
ok: [node1]

PLAY RECAP ************************************************************
node1                      : ok=31   changed=20   unreachable=0    failed=0    skipped=4    rescued=0    ignored=0
node2                      : ok=30   changed=0    unreachable=0    failed=0    skipped=4    rescued=0    ignored=0

Saturday 06 December 2026  14:00:00 +0000 (0:00:00.020)       0:00:12.345 ******
===============================================================================
"""


def test_counts_are_read_whole():
    recap = parse_recap(RECAP)
    assert recap == {"node1": {"ok": 31, "changed": 20, "unreachable": 0, "failed": 0},
                     "node2": {"ok": 30, "changed": 0, "unreachable": 0, "failed": 0}}
    run = PlaybookRun(["ansible-playbook"], 0, RECAP)
    assert run.changed_hosts() == {"node1": 20}
    assert run.changed_hosts() != {"node1": 2}


def test_only_the_last_recap_counts():
    earlier = RECAP.replace("changed=20", "changed=0")
    assert parse_recap(earlier + RECAP)["node1"]["changed"] == 20
    assert parse_recap(RECAP + earlier)["node1"]["changed"] == 0


def test_no_recap_is_empty_and_a_line_that_does_not_parse_is_an_error():
    assert parse_recap("ERROR! the playbook could not be found\n") == {}
    with pytest.raises(ValueError, match="does not parse"):
        parse_recap(RECAP.replace("changed=20", "changed=lots"))


TASKS = """\
TASK [trainer : Install the registry] *********************************
skipping: [node1]
skipping: [node2]

TASK [trainer : Look for the image on this host] **********************
ok: [node1]
changed: [node2 -> localhost]

TASK [trainer : Copy the corpus] **************************************
skipping: [node1]
changed: [node2] => (item=input.txt)
"""


def test_tasks_are_read_with_their_hosts_and_results():
    run = PlaybookRun(["ansible-playbook"], 0, TASKS)
    assert run.changed_tasks() == ["trainer : Look for the image on this host: node2 -> localhost",
                                   "trainer : Copy the corpus: node2"]
    assert run.ran_tasks() == {"trainer : Look for the image on this host", "trainer : Copy the corpus"}
    assert ("trainer : Install the registry", "node1") in run.task_results("skipping")
