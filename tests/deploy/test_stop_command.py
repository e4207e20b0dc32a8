"""bin/chargpt-stop without a lab: a stand-in ansible-playbook first on PATH keeps the record the stop
playbook would keep (or none, as a playbook that refused the run), and the tests read the command's
exit status, output and the settings it passed on. The real playbook stops a lab's run in fault case
10a (tests/e2e/test_faults_replicas.py)."""

from __future__ import annotations


import pytest

from .helpers import REPO, stand_in_playbook, stand_in_script

COMMAND = REPO / "bin" / "chargpt-stop"
STOPPED, FAILED, USAGE = 0, 1, 2

# Each call plays the next round of rounds.json: {"lines": [...]} keeps a record; without, none.
FAKE_PLAYBOOK = stand_in_script("FAKE_STOP_DIR", """\
print("PLAY [Stop the run on every host] ...")
if "lines" in round_:
    Path(extra["trainer_stop_file"]).write_text(json.dumps({"run_id": "st-1", "lines": round_["lines"]}))
else:
    print("[ERROR]: Task failed: Run st-2 is not running on any host (node-1: exited (0), run st-1): nothing to stop.")
sys.exit(round_.get("rc", 0))
""")
LINES = ["node-1: stopped at step 120 (exit 143); newest checkpoint on this host: ckpt-00000120.pt",
         "node-2: stopped at step 120 (exit 143); newest checkpoint on this host: ckpt-00000120.pt"]


@pytest.fixture
def fake_playbook(tmp_path):
    """A function that sets the rounds the stand-in ansible-playbook plays and runs the command."""
    return stand_in_playbook(tmp_path, FAKE_PLAYBOOK, COMMAND, "FAKE_STOP_DIR")


def test_a_stop_prints_one_line_per_host(fake_playbook):
    result = fake_playbook([{"lines": LINES}], "-i", "inventory/mine")
    assert (result.returncode, result.stdout.splitlines()) == (STOPPED, ["run st-1:", *LINES]), result.stderr
    [call] = fake_playbook.calls()
    assert call["args"][:3] == [str(REPO / "playbooks" / "stop.yml"), "-i", "inventory/mine"]
    assert (call["extra"]["trainer_stop_run_id"], call["extra"]["trainer_stop_cancel"]) == ("", False)


def test_cancel_and_run_id_reach_the_playbook(fake_playbook):
    result = fake_playbook([{"lines": LINES}], "--cancel", "--run-id=st-1", "-e", "x=1")
    assert result.returncode == STOPPED, result.stderr
    [call] = fake_playbook.calls()
    assert (call["extra"]["trainer_stop_run_id"], call["extra"]["trainer_stop_cancel"]) == ("st-1", True)
    assert call["args"][1:3] == ["-e", "x=1"]


def test_a_refused_run_exits_1_with_the_reason(fake_playbook):
    result = fake_playbook([{"rc": 2}], "--run-id", "st-2")
    assert result.returncode == FAILED and result.stdout == ""
    assert "Run st-2 is not running on any host" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("chargpt-stop: ansible-playbook exited 2: the run is not stopped")


def test_wrong_usage_exits_2(fake_playbook):
    result = fake_playbook([{"lines": LINES}], "--run-id")
    assert (result.returncode, result.stderr) == (USAGE, "chargpt-stop: --run-id needs a run id (--help shows the usage)\n")
