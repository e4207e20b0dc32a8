"""bin/chargpt-status without a lab: a stand-in ansible-playbook first on PATH keeps the record the
status playbook would keep (or none, as a playbook that cannot reach the hosts), and the tests read
the command's exit status, output and the arguments it passed on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .helpers import REPO, bin_command_module, stand_in_playbook

COMMAND = REPO / "bin" / "chargpt-status"
FINISHED, FAILED, USAGE, RUNNING, UNKNOWN, STOPPED = 0, 1, 2, 3, 4, 5

chargpt_status = bin_command_module("chargpt-status")

# Each call takes the next round: {"state", "rc", "unread_hosts"} keeps a record; without "state", none.
FAKE_PLAYBOOK = f"""#!{sys.executable}
import json, os, sys
from pathlib import Path

folder = Path(os.environ["FAKE_STATUS_DIR"])
calls = folder / "calls.jsonl"
with calls.open("a") as sink:
    sink.write(json.dumps(sys.argv[1:]) + "\\n")
rounds = json.loads((folder / "rounds.json").read_text())
round_ = rounds[min(len(calls.read_text().splitlines()), len(rounds)) - 1]
print("PLAY [Show the run across the cluster] ...")
if "state" in round_:
    extra = [json.loads(value) for flag, value in zip(sys.argv, sys.argv[1:]) if flag == "-e" and value[0] == "{{"]
    record = {{"run_id": "st-1", "state": round_["state"], "read_at": "2026-11-29T00:00:00+00:00",
              "unread_hosts": round_.get("unread_hosts", []),
              "lines": [f"run st-1: {{round_['state']}}", "host    rank  container", "node-1  0     running"],
              "rows": []}}
    Path(extra[-1]["run_status_file"]).write_text(json.dumps(record))
else:
    print("fatal: [node-1]: UNREACHABLE! => ssh: connect to host node-1 port 22: Connection refused")
sys.exit(round_["rc"])
"""


@pytest.fixture
def fake_playbook(tmp_path):
    """A function that sets the rounds the stand-in ansible-playbook plays and runs the command."""
    return stand_in_playbook(tmp_path, FAKE_PLAYBOOK, COMMAND, "FAKE_STATUS_DIR")


@pytest.mark.parametrize("state, playbook_rc, code", [
    ("finished", 0, FINISHED),
    ("failed", 2, FAILED),  # the playbook fails a failed run
    ("starting", 0, RUNNING),
    ("training", 0, RUNNING),
    ("recovering", 0, RUNNING),
    ("stopped", 0, STOPPED),
])
def test_the_exit_status_tells_the_runs_state(fake_playbook, state, playbook_rc, code):
    result = fake_playbook([{"state": state, "rc": playbook_rc}], "-i", "inventory/mine")
    assert result.returncode == code, result.stdout + result.stderr
    assert result.stdout.splitlines() == [f"run st-1: {state}", "host    rank  container", "node-1  0     running"]
    assert result.stderr == ""


def test_a_playbook_that_read_no_run_is_unknown_and_shows_why(fake_playbook):
    result = fake_playbook([{"rc": 4}], "-i", "inventory/mine")
    assert result.returncode == UNKNOWN
    assert result.stdout == ""
    assert "UNREACHABLE! => ssh: connect to host node-1" in result.stderr
    assert result.stderr.splitlines()[-1] == "chargpt-status: ansible-playbook exited 4 without reading the run"


@pytest.mark.parametrize("state, code", [("training", UNKNOWN), ("failed", FAILED), ("finished", FINISHED)])
def test_a_host_not_read_leaves_a_running_state_unsure(fake_playbook, state, code):
    result = fake_playbook([{"state": state, "rc": 4, "unread_hosts": ["node-2"]}], "-i", "inventory/mine")
    assert result.returncode == code
    assert result.stdout.splitlines()[-1] == "not read: node-2 (ansible-playbook exited 4)"


def test_every_other_argument_reaches_the_status_playbook_in_order(fake_playbook):
    fake_playbook([{"state": "training", "rc": 0}], "-i", "inventory/mine", "-e", "run_status_run_id=st-1",
                  "--limit", "node-1", "--check")
    [argv] = fake_playbook.calls()
    assert argv[:8] == [str(REPO / "playbooks" / "status.yml"), "-i", "inventory/mine", "-e",
                        "run_status_run_id=st-1", "--limit", "node-1", "--check"]
    assert argv[8] == "-e" and list(json.loads(argv[9])) == ["run_status_file"] and len(argv) == 10


def test_follow_repeats_until_the_run_finished(fake_playbook):
    rounds = [{"state": "starting", "rc": 0}, {"state": "training", "rc": 0}, {"state": "recovering", "rc": 0},
              {"state": "finished", "rc": 0}]
    result = fake_playbook(rounds, "--follow", "0.01", "-i", "inventory/mine")
    assert result.returncode == FINISHED, result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("run ")] == [
        "run st-1: starting", "run st-1: training", "run st-1: recovering", "run st-1: finished"]
    assert len(fake_playbook.calls()) == 4
    assert all(argv[1:3] == ["-i", "inventory/mine"] for argv in fake_playbook.calls())


@pytest.mark.parametrize("last, code", [({"state": "failed", "rc": 2}, FAILED), ({"rc": 4}, UNKNOWN)])
def test_follow_stops_at_a_failed_run_or_when_the_run_cannot_be_read(fake_playbook, last, code):
    result = fake_playbook([{"state": "training", "rc": 0}, last], "--follow=0.01", "-i", "inventory/mine")
    assert result.returncode == code
    assert len(fake_playbook.calls()) == 2


@pytest.mark.parametrize("args, follow_s, passed", [
    (["-i", "inv"], None, ["-i", "inv"]),
    (["--follow", "-i", "inv"], 10.0, ["-i", "inv"]),
    (["-i", "inv", "--follow"], 10.0, ["-i", "inv"]),
    (["--follow", "30", "-i", "inv"], 30.0, ["-i", "inv"]),
    (["--follow=2.5", "-i", "inv", "-e", "x=1"], 2.5, ["-i", "inv", "-e", "x=1"]),
    # ansible-playbook's own -f (forks) is passed on, not taken for --follow
    (["-f", "5", "-i", "inv"], None, ["-f", "5", "-i", "inv"]),
])
def test_arguments(args, follow_s, passed):
    assert chargpt_status.parse_args(args) == (False, follow_s, passed)


@pytest.mark.parametrize("args", [["--follow=x"], ["--follow", "0"], ["--follow=-5", "-i", "inv"]])
def test_a_wrong_follow_is_a_usage_error(fake_playbook, args):
    result = fake_playbook([{"state": "training", "rc": 0}], *args)
    assert result.returncode == USAGE
    assert "--follow takes a number of seconds above 0" in result.stderr


def test_help_names_every_exit_status(fake_playbook):
    result = fake_playbook([], "-i", "inv", "--help")
    assert result.returncode == 0
    assert all(f"  {code}  {word}" in result.stdout for code, word in
               [(0, "finished"), (1, "failed"), (2, "wrong usage"), (3, "still running"), (4, "unknown")])


def test_without_ansible_playbook_the_state_is_unknown(tmp_path):
    result = subprocess.run([sys.executable, str(COMMAND), "-i", "inv"], env=dict(os.environ, PATH=str(tmp_path)),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == UNKNOWN
    assert "ansible-playbook is not on PATH" in result.stderr
