"""The trainer's supervisor (roles/trainer/files/supervise_trainer.py, run by the systemd unit
roles/trainer/templates/supervisor.service.j2): starts the container unless it runs, never one that
refused its settings, finished, or that a person stopped (recorded when it watched the stop); ends with
the container's exit code; starts with the engine; no shell between the unit and docker."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from .helpers import REPO

SCRIPT = REPO / "roles" / "trainer" / "files" / "supervise_trainer.py"
UNIT = REPO / "roles" / "trainer" / "templates" / "supervisor.service.j2"

# A docker CLI that knows one container; it records every call it gets.
FAKE_DOCKER = """#!{python}
import json, sys
from pathlib import Path
folder = Path(sys.argv[0]).parent
calls = folder / "calls.jsonl"
with calls.open("a") as out:
    out.write(json.dumps(sys.argv[1:]) + "\\n")
state = json.loads((folder / "state.json").read_text())
command, name = sys.argv[1], sys.argv[-1]
if name != state["name"]:
    sys.exit(f"Error: No such object: {{name}}")
if command == "inspect":
    print(state["status"], state["exit_code"])
elif command == "start":
    print(name)
elif command == "wait":
    print(state["wait"])
"""


@pytest.fixture
def docker(tmp_path):
    cli = tmp_path / "docker"
    cli.write_text(FAKE_DOCKER.format(python=sys.executable))
    cli.chmod(0o755)
    return cli


def supervise(docker, container, status, exit_code, wait="0"):
    (docker.parent / "state.json").write_text(json.dumps(
        {"name": "chargpt-trainer-rank0", "status": status, "exit_code": exit_code, "wait": wait}))
    result = subprocess.run([sys.executable, str(SCRIPT), str(docker), container, str(stop_record(docker))],
                            capture_output=True, text=True, timeout=60)
    calls_file = docker.parent / "calls.jsonl"
    calls = [json.loads(line)[0] for line in calls_file.read_text().splitlines()] if calls_file.exists() else []
    return result, calls


def stop_record(docker):
    return docker.parent / "stopped-on-request"


def test_a_killed_trainer_is_started_and_its_exit_code_returned(docker):
    result, calls = supervise(docker, "chargpt-trainer-rank0", "exited", 137, wait="137")
    assert (result.returncode, calls) == (137, ["inspect", "start", "wait"]), result.stderr
    assert result.stdout == ""  # docker start's echo of the name stays out of the journal
    assert not stop_record(docker).exists()


def test_a_trainer_the_engine_stopped_is_started_when_the_engine_starts(docker):
    """At boot the container shows the 143 of the engine's stop, which no supervisor saw (the unit
    stops before the engine): nothing was recorded, so it starts."""
    result, calls = supervise(docker, "chargpt-trainer-rank0", "exited", 143, wait="0")
    assert (result.returncode, calls) == (0, ["inspect", "start", "wait"]), result.stderr


def test_a_docker_stop_it_watched_is_recorded_and_keeps_the_trainer_stopped(docker):
    result, calls = supervise(docker, "chargpt-trainer-rank0", "running", 0, wait="143")
    assert (result.returncode, calls) == (143, ["inspect", "start", "wait"]), result.stderr
    assert "stopped on request" in stop_record(docker).read_text()
    # After a reboot: the record keeps it stopped.
    result, calls = supervise(docker, "chargpt-trainer-rank0", "exited", 143)
    assert (result.returncode, calls) == (143, ["inspect", "start", "wait", "inspect"]), result.stderr
    assert "stopped on request" in result.stderr and str(stop_record(docker)) in result.stderr


def test_a_trainer_started_by_hand_since_its_stop_forgets_the_record(docker):
    stop_record(docker).write_text("stopped\n")
    result, calls = supervise(docker, "chargpt-trainer-rank0", "running", 0, wait="137")
    assert (result.returncode, calls) == (137, ["inspect", "start", "wait"]), result.stderr
    assert not stop_record(docker).exists()


def test_a_finished_trainer_is_not_started_again(docker):
    result, calls = supervise(docker, "chargpt-trainer-rank0", "exited", 0)
    assert (result.returncode, calls) == (0, ["inspect"])
    assert "finished its run" in result.stderr


def test_a_running_trainer_is_watched_until_it_ends(docker):
    result, calls = supervise(docker, "chargpt-trainer-rank0", "running", 0, wait="0")
    assert (result.returncode, calls) == (0, ["inspect", "start", "wait"]), result.stderr


def test_a_trainer_that_refused_its_settings_is_not_started_again(docker):
    result, calls = supervise(docker, "chargpt-trainer-rank0", "exited", 2)
    assert (result.returncode, calls) == (2, ["inspect"])
    assert "refused its settings" in result.stderr


def test_a_missing_container_fails_the_supervisor(docker):
    result, calls = supervise(docker, "chargpt-trainer-rank7", "exited", 1)
    assert (result.returncode, calls) == (1, ["inspect"])
    assert "supervise_trainer:" in result.stderr


def test_the_unit_runs_the_script_without_a_shell():
    text = UNIT.read_text()
    exec_start = re.search(r"^ExecStart=((?:.*\\\n)*.*)", text, re.MULTILINE).group(1)
    assert exec_start.split()[:2] == ["{{", "trainer_supervisor_python"]
    assert ("trainer_supervisor_script" in exec_start and "cluster_trainer_container" in exec_start
            and "trainer_supervisor_stop_record" in exec_start)
    assert not re.search(r"\bsh\b|bash|\$", exec_start)
    assert "RestartPreventExitStatus=2 4 143" in text and "Restart=on-failure" in text


def test_the_unit_stops_before_the_engine_and_starts_with_it():
    """A reboot or an engine restart stops the unit before the engine stops the container (so the
    engine's 143 is never recorded as a person's stop) and starts it again with the engine."""
    lines = UNIT.read_text().splitlines()
    assert "PartOf={{ trainer_supervisor_docker_unit }}" in lines
    assert "After={{ trainer_supervisor_docker_unit }}" in lines
    wanted_by = next(line for line in lines if line.startswith("WantedBy="))
    assert wanted_by == "WantedBy=multi-user.target {{ trainer_supervisor_docker_unit }}"
