"""bin/chargpt-logs without a lab: a stand-in ansible-playbook first on PATH keeps the per-host files
the logs playbook would keep (roles/run_logs), and the tests read the command's output, exit status
and the settings it passed on. The real playbook reads a lab's trainers in the fault cases
(tests/e2e/test_faults_provisioning.py)."""

from __future__ import annotations

import subprocess


import pytest

from .helpers import REPO, bin_command_module, stand_in_playbook, stand_in_script

COMMAND = REPO / "bin" / "chargpt-logs"
OK, USAGE, UNREAD = 0, 2, 4

chargpt_logs = bin_command_module("chargpt-logs")

# Each call plays the next round of rounds.json: {"hosts": {host: record}, "unreachable": [...], "rc": N}.
FAKE_PLAYBOOK = stand_in_script("FAKE_LOGS_DIR", """\
out = Path(extra["run_logs_dir"])
for host, record in round_["hosts"].items():
    (out / f"host-{host}.json").write_text(json.dumps(dict(record, host=host)))
everyone = list(round_["hosts"]) + round_.get("unreachable", [])
if everyone and round_["hosts"]:
    (out / "play.json").write_text(json.dumps({"hosts": everyone, "read": list(round_["hosts"])}))
print("PLAY [Read the trainer log of every host] ...")
for host in round_.get("unreachable", []):
    print(f"fatal: [{host}]: UNREACHABLE! => ssh: connect to host {host} port 22: Connection refused")
sys.exit(round_.get("rc", 0))
""")


def log(rank: int, *lines: str) -> dict:
    return {"node_rank": rank, "container": f"chargpt-trainer-rank{rank}", "returncode": 0, "lines": list(lines),
            "error": ""}


MASTER = log(0, "2026-12-07T10:00:01.000000000Z [chargpt] process group: backend=gloo world_size=2",
             "2026-12-07T10:00:03.500000000Z [chargpt] step 10/600 | loss 3.1",
             "2026-12-07T10:00:09.000000000Z [chargpt] rank 0: rank 1 gave no sign of life for 21 s. Exiting (69)")
# A shorter fraction than docker's usual nine digits still sorts as the time does (10:00:03.4 < 10:00:03.5).
WORKER = log(1, "2026-12-07T10:00:02.250000000Z [chargpt] process group: backend=gloo world_size=2",
             "2026-12-07T10:00:03.4Z Traceback (most recent call last):")


@pytest.fixture
def fake_playbook(tmp_path):
    """A function that sets the rounds the stand-in ansible-playbook plays and runs the command."""
    return stand_in_playbook(tmp_path, FAKE_PLAYBOOK, COMMAND, "FAKE_LOGS_DIR")


def test_every_hosts_lines_merged_in_time_order_with_host_and_rank(fake_playbook):
    result = fake_playbook([{"hosts": {"node-1": MASTER, "node-2": WORKER}}], "-i", "inventory/mine")
    assert result.returncode == OK, result.stderr
    assert result.stdout.splitlines() == [
        "2026-12-07T10:00:01.000Z node-1 rank 0 | [chargpt] process group: backend=gloo world_size=2",
        "2026-12-07T10:00:02.250Z node-2 rank 1 | [chargpt] process group: backend=gloo world_size=2",
        "2026-12-07T10:00:03.400Z node-2 rank 1 | Traceback (most recent call last):",
        "2026-12-07T10:00:03.500Z node-1 rank 0 | [chargpt] step 10/600 | loss 3.1",
        "2026-12-07T10:00:09.000Z node-1 rank 0 | [chargpt] rank 0: rank 1 gave no sign of life for 21 s. Exiting (69)",
    ]
    [call] = fake_playbook.calls()
    assert call["args"][:3] == [str(REPO / "playbooks" / "logs.yml"), "-i", "inventory/mine"]
    assert (call["extra"]["run_logs_since"], call["extra"]["run_logs_tail"]) == ("", 0)


def test_host_rank_and_error_filters(fake_playbook):
    rounds = [{"hosts": {"node-1": MASTER, "node-2": WORKER}}]
    by_rank = fake_playbook(rounds, "--rank", "1").stdout.splitlines()
    assert [line.split(" | ")[0].split(" ", 1)[1] for line in by_rank] == ["node-2 rank 1"] * 2
    by_host = fake_playbook(rounds, "--host=node-1").stdout.splitlines()
    assert len(by_host) == 3 and all(" node-1 rank 0 | " in line for line in by_host)
    errors = fake_playbook(rounds, "--errors").stdout.splitlines()
    assert [line.split(" | ", 1)[1] for line in errors] == [
        "Traceback (most recent call last):",
        "[chargpt] rank 0: rank 1 gave no sign of life for 21 s. Exiting (69)"]


def test_since_and_tail_reach_the_playbook(fake_playbook):
    result = fake_playbook([{"hosts": {"node-1": MASTER}}], "--since", "10m", "--tail=50", "-e", "x=1")
    assert result.returncode == OK, result.stderr
    [call] = fake_playbook.calls()
    assert (call["extra"]["run_logs_since"], call["extra"]["run_logs_tail"]) == ("10m", 50)
    assert call["args"][1:3] == ["-e", "x=1"]


def test_hosts_that_cannot_be_read_are_named_and_the_others_shown(fake_playbook):
    missing = {"node_rank": 2, "container": "chargpt-trainer-rank2", "returncode": 1, "lines": [],
               "error": "Error response from daemon: No such container: chargpt-trainer-rank2\n"}
    result = fake_playbook([{"hosts": {"node-1": MASTER, "node-3": missing}, "unreachable": ["node-2"], "rc": 4}])
    assert result.returncode == UNREAD
    assert len(result.stdout.splitlines()) == 3
    assert result.stderr.splitlines() == [
        "chargpt-logs: node-2: not read: could not be reached",
        "chargpt-logs: node-3: not read: Error response from daemon: No such container: chargpt-trainer-rank2"]


def test_no_host_read_shows_the_playbooks_output(fake_playbook):
    result = fake_playbook([{"hosts": {}, "unreachable": ["node-1"], "rc": 4}])
    assert result.returncode == UNREAD and result.stdout == ""
    assert "UNREACHABLE" in result.stderr
    assert result.stderr.splitlines()[-1] == "chargpt-logs: ansible-playbook exited 4 without reading a host"


@pytest.mark.parametrize("args, message", [
    (["--follow", "0"], "--follow takes a number of seconds above 0, not '0'"),
    (["--tail", "all"], "--tail takes a number of lines above 0, not 'all'"),
    (["--rank", "master"], "--rank takes a node rank (0, 1, ...), not 'master'"),
    (["--since"], "--since needs a value"),
])
def test_wrong_usage_exits_2(fake_playbook, args, message):
    result = fake_playbook([{"hosts": {}}], *args)
    assert result.returncode == USAGE
    assert result.stderr == f"chargpt-logs: {message} (--help shows the usage)\n"


def test_follow_prints_each_line_once_and_reads_on_from_the_newest(monkeypatch, capsys):
    """Two rounds: the second reads from the newest line's time on and gets that line again."""
    first = [chargpt_logs.Line("2026-12-07T10:00:01.000000000Z", 0, "node-1", "a")]
    second = first + [chargpt_logs.Line("2026-12-07T10:00:02.000000000Z", 1, "node-2", "b")]
    played = subprocess.CompletedProcess([], 0, "")
    readings = iter([chargpt_logs.Reading(first, {}, 2, played), chargpt_logs.Reading(second, {}, 2, played)])
    sinces = []

    def read_logs(options, since):
        sinces.append(since)
        return next(readings)

    def sleep(seconds):
        if len(sinces) == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(chargpt_logs, "read_logs", read_logs)
    monkeypatch.setattr(chargpt_logs.time, "sleep", sleep)
    with pytest.raises(KeyboardInterrupt):
        chargpt_logs.main(["--follow", "1", "--since", "5m"])
    assert sinces == ["5m", "2026-12-07T10:00:01.000000000Z"]
    assert [line.rsplit(" | ", 1)[1] for line in capsys.readouterr().out.splitlines()] == ["a", "b"]
