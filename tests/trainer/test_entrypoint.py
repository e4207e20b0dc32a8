"""The image's entrypoint script, run with stand-ins for torchrun and chargpt that print their arguments
and save their environment. The chargpt stand-in's `check` fails with FAKE_CHECK_STATUS when it is set."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import APP_DIR

ENTRYPOINT = APP_DIR / "entrypoint.sh"
IMAGE_DEFAULTS = {"NNODES": "1", "NPROC_PER_NODE": "1", "NODE_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                  "MASTER_PORT": "29500", "RUN_ID": "default", "TRAIN_PRESET": "cpu",
                  "TRAIN_DATA": "/data/input.txt", "RUN_ROOT": "/runs",
                  "TORCHRUN_MAX_RESTARTS": "0", "NODE_ADDR": "127.0.0.1", "TORCHRUN_JOIN_TIMEOUT_S": "600"}


FAKE_CHECK = """
if [ "$1" = check ] && [ -n "${FAKE_CHECK_STATUS_AFTER_TORCHRUN:-}" ] && [ -e "$(dirname "$0")/torchrun.ran" ]; then
    echo "chargpt: error: the fake run diverged" >&2
    exit "$FAKE_CHECK_STATUS_AFTER_TORCHRUN"
fi
if [ "$1" = check ] && [ -n "${FAKE_CHECK_STATUS:-}" ]; then
    echo "chargpt: error: the fake check fails" >&2
    exit "$FAKE_CHECK_STATUS"
fi
"""


@pytest.fixture
def fake_bin(tmp_path):
    for name in ("torchrun", "chargpt"):
        script = tmp_path / name
        script.write_text(f'#!/bin/sh\nenv > "$0.env"\necho {name}\nfor arg in "$@"; do echo "$arg"; done\n'
                          + (FAKE_CHECK if name == "chargpt" else ""))
        script.chmod(0o755)
    return tmp_path


def entrypoint(fake_bin, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {"PATH": f"{fake_bin}:{os.environ['PATH']}", **IMAGE_DEFAULTS, **env}
    return subprocess.run(["sh", str(ENTRYPOINT), *args], env=environ, capture_output=True, text=True)


def test_train_launches_torchrun_with_the_environment(fake_bin):
    result = entrypoint(fake_bin, NNODES="2", NPROC_PER_NODE="3", NODE_RANK="1",
                        MASTER_ADDR="trainer-master", MASTER_PORT="29511", RUN_ID="r1",
                        NODE_ADDR="trainer-node-1", TORCHRUN_JOIN_TIMEOUT_S="90",
                        TRAIN_PRESET="smoke", TORCHRUN_MAX_RESTARTS="3")
    assert result.returncode == 0, result.stderr
    words = result.stdout.splitlines()
    assert words[words.index("torchrun"):] == [
        "torchrun", "--nnodes=2", "--nproc-per-node=3", "--rdzv-backend=c10d",
        "--rdzv-endpoint=trainer-master:29511", "--rdzv-id=r1-2x3", "--rdzv-conf=is_host=false,join_timeout=90",
        "--local-addr=trainer-node-1", "--max-restarts=3", "-m", "chargpt", "train",
        "--data", "/data/input.txt", "--run-dir", "/runs/r1", "--preset", "smoke"]


def test_trainer_settings_reach_the_check_and_the_trainer_untouched(fake_bin):
    settings = {"CHARGPT_MAX_STEPS": "10", "CHARGPT_DTYPE": "two  words", "CHARGPT_DEVICE": "*",
                "CHARGPT_SEED": "$HOME ${PATH} $(echo expanded)"}
    result = entrypoint(fake_bin, **settings)
    assert result.returncode == 0, result.stderr
    assert "--set" not in result.stdout.splitlines()
    for program in ("chargpt", "torchrun"):
        lines = (fake_bin / f"{program}.env").read_text().splitlines()
        assert {name: value for name, _, value in (line.partition("=") for line in lines)
                if name.startswith("CHARGPT_")} == settings


def test_train_checks_the_inputs_before_torchrun(fake_bin):
    result = entrypoint(fake_bin, NNODES="2", NPROC_PER_NODE="3", RUN_ID="r1", TRAIN_PRESET="smoke")
    assert result.returncode == 0, result.stderr
    words = result.stdout.splitlines()
    assert words[:words.index("torchrun")][:12] == [
        "chargpt", "check", "--data", "/data/input.txt", "--preset", "smoke", "--world-size", "6",
        "--min-world-size", "6", "--run-dir", "/runs/r1"]
    assert "torchrun" in words


def test_a_group_that_may_shrink_is_elastic_and_checked_at_its_smallest(fake_bin):
    result = entrypoint(fake_bin, NNODES="3", MIN_NODES="2", NPROC_PER_NODE="2", NODE_RANK="0", RUN_ID="r1",
                        TORCHRUN_REJOIN_WAIT_S="45")
    assert result.returncode == 0, result.stderr
    words = result.stdout.splitlines()
    check = words[:words.index("torchrun")]
    assert check[check.index("--world-size"):check.index("--world-size") + 4] == [
        "--world-size", "6", "--min-world-size", "4"]
    launched = words[words.index("torchrun"):]
    assert "--nnodes=2:3" in launched
    assert "--rdzv-conf=is_host=true,join_timeout=600,last_call_timeout=45" in launched
    # The rendezvous keeps the full world's shape, whatever size the group trains at.
    assert "--rdzv-id=r1-3x2" in launched


def test_extra_train_arguments_reach_the_check_too(fake_bin):
    result = entrypoint(fake_bin, "train", "--set", "max_steps=5")
    assert result.returncode == 0, result.stderr
    words = result.stdout.splitlines()
    assert words[:4] == ["chargpt", "check", "--set", "max_steps=5"]
    assert words[-8:-6] == ["--set", "max_steps=5"]


@pytest.mark.parametrize("status", [2, 1])
def test_a_failing_check_stops_before_torchrun_with_its_status(fake_bin, status):
    result = entrypoint(fake_bin, FAKE_CHECK_STATUS=str(status))
    assert result.returncode == status
    assert result.stderr == "chargpt: error: the fake check fails\n"
    assert "torchrun" not in result.stdout and not (fake_bin / "torchrun.env").exists()


def test_the_master_hosts_the_rendezvous(fake_bin):
    result = entrypoint(fake_bin, NNODES="2", NODE_RANK="0")
    assert result.returncode == 0, result.stderr
    assert "--rdzv-conf=is_host=true,join_timeout=600" in result.stdout.splitlines()


def test_train_is_the_default_command(fake_bin):
    result = entrypoint(fake_bin)
    assert result.returncode == 0, result.stderr
    assert "--nnodes=1" in result.stdout.splitlines()


@pytest.mark.parametrize("env, message", [
    ({"NNODES": "two"}, "NNODES='two' must be a non-negative integer"),
    ({"NNODES": "2", "NODE_RANK": "2"}, "NODE_RANK=2 must be below NNODES=2"),
    ({"MASTER_ADDR": ""}, "MASTER_ADDR is empty"),
    ({"NODE_ADDR": ""}, "NODE_ADDR is empty"),
    ({"NODE_ADDR": "a b"}, "NODE_ADDR='a b' is not a host name or address"),
    ({"TORCHRUN_JOIN_TIMEOUT_S": "0"}, "TORCHRUN_JOIN_TIMEOUT_S must be at least 1"),
    ({"NNODES": "2", "MIN_NODES": "3"}, "MIN_NODES=3 must be from 1 to NNODES=2"),
    ({"NNODES": "2", "MIN_NODES": "0"}, "MIN_NODES=0 must be from 1 to NNODES=2"),
    ({"TORCHRUN_REJOIN_WAIT_S": "soon"}, "TORCHRUN_REJOIN_WAIT_S='soon' must be a non-negative integer"),
])
def test_inconsistent_settings_fail_before_torchrun(fake_bin, env, message):
    result = entrypoint(fake_bin, **env)
    assert result.returncode == 2
    assert message in result.stderr
    assert "torchrun" not in result.stdout


def test_sample_runs_chargpt_sample(fake_bin):
    result = entrypoint(fake_bin, "sample", "--run-dir", "/runs/r1", "--prompt", "To be")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["chargpt", "sample", "--run-dir", "/runs/r1", "--prompt", "To be"]


SLOW_TORCHRUN = """#!/bin/sh
trap 'echo "torchrun: got TERM" >&2; exit 1' TERM
echo ready > "$0.ready"
sleep 30 >/dev/null 2>&1 &
wait
exit "${FAKE_TORCHRUN_STATUS:-0}"
"""


def start_with_slow_torchrun(fake_bin, torchrun: str = SLOW_TORCHRUN, **env: str) -> subprocess.Popen:
    (fake_bin / "torchrun").write_text(torchrun)
    environ = {"PATH": f"{fake_bin}:{os.environ['PATH']}", **IMAGE_DEFAULTS, **env}
    process = subprocess.Popen(["sh", str(ENTRYPOINT)], env=environ, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 10
    while not (fake_bin / "torchrun.ready").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    return process


def test_a_requested_stop_is_passed_to_torchrun_and_ends_with_the_stopped_status(fake_bin):
    process = start_with_slow_torchrun(fake_bin)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=10)
    assert "torchrun: got TERM" in stderr
    assert process.returncode == 143, stderr
    assert "entrypoint: stopped on request (torchrun exited 1); exiting 143" in stderr


def test_torchrun_s_own_failure_keeps_its_status(fake_bin):
    (fake_bin / "torchrun").write_text("#!/bin/sh\nexit 3\n")
    result = entrypoint(fake_bin)
    assert result.returncode == 3, result.stderr


@pytest.mark.parametrize("check_status, expected", [(4, 4), (2, 2), (0, 1), (1, 1)])
def test_after_a_failed_torchrun_a_refusing_check_gives_its_status(fake_bin, check_status, expected):
    """A run that stopped for good fails in every torchrun restart; the check's refusal (2, or 4 for a
    diverged run) is what the supervisor must see, not torchrun's 1."""
    (fake_bin / "torchrun").write_text('#!/bin/sh\ntouch "$0.ran"\nexit 1\n')
    result = entrypoint(fake_bin, FAKE_CHECK_STATUS_AFTER_TORCHRUN=str(check_status))
    assert result.returncode == expected, result.stderr
    assert "chargpt: error: the fake run diverged" in result.stderr  # the refusal's line stays in the log


# torchrun that ignores SIGTERM, with a trainer (a child process) under it, none, or one that exited
# and was not reaped (a zombie), as when torchrun blocks in a rendezvous after its trainer left.
STUCK_TORCHRUN = """#!{python}
import pathlib, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
worker = subprocess.Popen(["sleep", "30" if "{child}" == "running" else "0"]) if "{child}" != "none" else None
time.sleep(0.5)  # a trainer that exits first is a zombie from here on: nobody waits for it
pathlib.Path(sys.argv[0] + ".ready").write_text("ready")
time.sleep(30)
"""


@pytest.mark.parametrize("child", ["none", "exited", "running"])
def test_a_stop_kills_torchrun_only_when_it_runs_no_trainer(fake_bin, child):
    """Waiting for a group whose host is gone, torchrun has no step to checkpoint and may not answer
    SIGTERM: the stop must not last the whole grace period. With a trainer under it, torchrun gets
    its time to let the trainer checkpoint."""
    with_worker = child == "running"
    process = start_with_slow_torchrun(fake_bin, torchrun=STUCK_TORCHRUN.format(python=sys.executable, child=child))
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=4)
    except subprocess.TimeoutExpired:
        assert with_worker, "the stop waited for torchrun although it ran no trainer"
        os.killpg(process.pid, signal.SIGKILL)  # the entrypoint, the stand-in torchrun and its trainer
        process.communicate()
        return
    assert not with_worker, f"torchrun was killed although a trainer ran under it: {stderr}"
    assert time.monotonic() - started < 5
    assert "torchrun runs no trainer 2 s after SIGTERM (it waits for its group): killing it" in stderr
    assert process.returncode == 143, stderr


def test_a_worker_waits_for_the_master_s_rendezvous_before_torchrun(fake_bin):
    result = entrypoint(fake_bin, NNODES="2", NODE_RANK="1", MASTER_ADDR="trainer-master", MASTER_PORT="29511",
                        TORCHRUN_JOIN_TIMEOUT_S="90")
    assert result.returncode == 0, result.stderr
    words = result.stdout.splitlines()
    waits = [index for index, word in enumerate(words) if word == "wait-for"]
    assert len(waits) == 1 and words[waits[0]:waits[0] + 4] == ["wait-for", "trainer-master:29511", "--timeout", "90"]
    assert waits[0] < words.index("torchrun")


def test_the_master_starts_torchrun_without_waiting(fake_bin):
    result = entrypoint(fake_bin, NNODES="2", NODE_RANK="0")
    assert result.returncode == 0, result.stderr
    assert "wait-for" not in result.stdout.splitlines()


def test_a_worker_that_never_reaches_the_master_fails_without_torchrun(fake_bin):
    (fake_bin / "chargpt").write_text('#!/bin/sh\n[ "$1" = wait-for ] && exit 1\nexit 0\n')
    result = entrypoint(fake_bin, NNODES="2", NODE_RANK="1")
    assert result.returncode == 1, result.stderr
    assert not (fake_bin / "torchrun.env").exists()


def test_a_stop_while_a_worker_waits_for_the_master_ends_at_once(fake_bin):
    (fake_bin / "chargpt").write_text('#!/bin/sh\n[ "$1" = wait-for ] && { echo > "$0.waiting"; exec sleep 30; }\n'
                                      'exit 0\n')
    environ = {"PATH": f"{fake_bin}:{os.environ['PATH']}", **IMAGE_DEFAULTS, "NNODES": "2", "NODE_RANK": "1"}
    process = subprocess.Popen(["sh", str(ENTRYPOINT)], env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    deadline = time.monotonic() + 10
    while not (fake_bin / "chargpt.waiting").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=5)
    assert time.monotonic() - started < 2
    assert process.returncode == 143, stderr
    assert "entrypoint: stopped on request while waiting for the master; exiting 143" in stderr
    assert not (fake_bin / "torchrun.env").exists()
