"""The rules about a run that several roles apply (roles/cluster/filter_plugins/run_rules.py), and the
script that reads a host's trainer for them (roles/cluster/files/read_trainer.py), run here with
stand-ins for docker and systemctl."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

from .helpers import REPO

_spec = importlib.util.spec_from_file_location("run_rules", REPO / "roles/cluster/filter_plugins/run_rules.py")
run_rules = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_rules)
READ_TRAINER = REPO / "roles/cluster/files/read_trainer.py"


@pytest.mark.parametrize("lines, expected", [
    (["[chargpt] step 1/10", "chargpt: error: batch_size=4 is smaller than the world size 5", "exiting"],
     "chargpt: error: batch_size=4 is smaller than the world size 5"),
    (["RuntimeError: first", "x", "torch.distributed.DistNetworkError: second", "  File y"],
     "torch.distributed.DistNetworkError: second"),
    (["ERROR:torch.distributed.elastic: failed (exitcode: 1)"], "ERROR:torch.distributed.elastic: failed (exitcode: 1)"),
    (["chargpt_train FAILED", "done"], "chargpt_train FAILED"),
    (["[chargpt] step 3/10 | loss 2.1", "it failed quietly"], ""),  # "failed" in lower case is no error line
    ([], ""),
    (None, ""),
])
def test_the_error_line_is_the_last_line_that_reports_an_error(lines, expected):
    assert run_rules.error_line(lines) == expected


SUMMARY = {"status": "complete", "world_size": 2, "experiment": "abc"}


@pytest.mark.parametrize("summary, world_size, experiment, expected", [
    (SUMMARY, 2, "abc", True),
    (SUMMARY, "2", "abc", True),  # Ansible passes the layout's numbers as strings
    (SUMMARY, 2, None, True),  # the status knows no experiment
    (SUMMARY, 3, "abc", False),
    (SUMMARY, 2, "other", False),
    ({**SUMMARY, "status": "diverged"}, 2, "abc", False),
    ({}, 2, "abc", False),
    (None, 2, None, False),
])
def test_a_run_finished_as_deployed(summary, world_size, experiment, expected):
    assert run_rules.finished_as(summary, world_size, experiment) is expected


FAKE_DOCKER = """#!{python}
import json, os, sys, time
state = json.load(open(os.environ["FAKE_STATE"]))
if sys.argv[1] == "inspect":
    if not state["exists"]:
        sys.exit(1)
    print(json.dumps({{"Status": state["status"], "ExitCode": state["exit_code"], "StartedAt": "2026-12-07T10:00:00Z"}}))
elif sys.argv[1] == "logs":
    assert sys.argv[2:4] == ["--since", "2026-12-07T10:00:00Z"], sys.argv
    print("\\n".join(state["log"]))
    print("torch warning on stderr", file=sys.stderr)
"""
FAKE_SYSTEMCTL = "#!/bin/sh\necho failed\n"


@pytest.fixture
def fake_host(tmp_path):
    (tmp_path / "docker").write_text(FAKE_DOCKER.format(python=sys.executable))
    (tmp_path / "systemctl").write_text(FAKE_SYSTEMCTL)
    for name in ("docker", "systemctl"):
        (tmp_path / name).chmod(0o755)
    return tmp_path


def read_trainer(fake_host, state: dict, *args: str) -> dict:
    (fake_host / "state.json").write_text(json.dumps(state))
    env = {**os.environ, "PATH": f"{fake_host}:{os.environ['PATH']}", "FAKE_STATE": str(fake_host / "state.json")}
    result = subprocess.run([sys.executable, str(READ_TRAINER), "chargpt-trainer-rank0", *args], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_script_reads_the_container_its_supervisor_and_the_log_of_its_current_start(fake_host):
    log = ["[chargpt] process group: backend=gloo world_size=2", "[chargpt] step 1/10 | loss 4.2",
           "[chargpt] step 2/10 | loss 4.1"]
    found = read_trainer(fake_host, {"exists": True, "status": "exited", "exit_code": 2, "log": log},
                         "--unit", "chargpt-trainer.service", "--tail", "2")
    assert found == {"exists": True, "status": "exited", "exit_code": 2, "started_at": "2026-12-07T10:00:00Z",
                     "supervisor": "failed", "joined": 1, "steps": 2,
                     "log_tail": ["[chargpt] step 2/10 | loss 4.1", "torch warning on stderr"]}


def test_the_script_says_when_there_is_no_container(fake_host):
    found = read_trainer(fake_host, {"exists": False})
    assert found["exists"] is False and found["log_tail"] == [] and found["supervisor"] is None


def test_the_script_waits_until_the_trainer_trains_but_no_longer_than_asked(fake_host):
    waiting = {"exists": True, "status": "running", "exit_code": 0, "log": ["[chargpt] process group: backend=gloo"]}
    started = time.monotonic()
    found = read_trainer(fake_host, waiting, "--wait-s", "2", "--node-rank", "0")  # rank 0 needs a step too
    assert 1.5 < time.monotonic() - started < 10 and found["steps"] == 0
    started = time.monotonic()
    found = read_trainer(fake_host, waiting, "--wait-s", "20", "--node-rank", "1")  # a worker has joined: done
    assert time.monotonic() - started < 5 and found["joined"] == 1
