"""Faults: a hung or dead peer, rank 0 killed while it writes a checkpoint, ranks in the wrong order."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from chargpt import checkpoint
from chargpt.distributed import DistributedError, check_node_rank, peer_failure
from chargpt.faults import CheckpointPause, FaultInjectionError, checkpoint_pause, refuse_check
from conftest import chargpt_command, child_env, free_port, run_process, torchrun_command, wait_for

PAUSE = "TRAIN_FAULT_CHECKPOINT_PAUSE"
REFUSE = "TRAIN_FAULT_REFUSE_CHECK"


# The fault-injection variable.

def test_checkpoint_pause_parses_step_and_seconds():
    assert checkpoint_pause({PAUSE: "40:2.5"}) == CheckpointPause(40, 2.5)
    assert checkpoint_pause({PAUSE: "40:30", "TORCHELASTIC_RESTART_COUNT": "0"}) == CheckpointPause(40, 30.0)
    assert checkpoint_pause({}) is None and checkpoint_pause({PAUSE: ""}) is None


def test_a_restarted_attempt_does_not_pause_again():
    assert checkpoint_pause({PAUSE: "40:30", "TORCHELASTIC_RESTART_COUNT": "1"}) is None


@pytest.mark.parametrize("value", ["40", "soon", "40:", ":30", "0:30", "-5:30", "40:0", "40:-1", "40:nan",
                                   "40:inf", "4.5:30"])
def test_a_bad_checkpoint_pause_is_rejected_even_in_a_restarted_attempt(value):
    for restarts in ("0", "2"):
        with pytest.raises(FaultInjectionError, match=f"{PAUSE}='.*' is not STEP:SECONDS.*e.g. {PAUSE}=40:30"):
            checkpoint_pause({PAUSE: value, "TORCHELASTIC_RESTART_COUNT": restarts})


def test_halfway_runs_with_the_first_half_on_disk_and_the_write_then_completes(tmp_path):
    target = tmp_path / "file.bin"
    data = bytes(range(256)) * 40
    seen = []

    def halfway():
        [temp] = [path for path in tmp_path.iterdir() if path.name.endswith(".tmp")]
        seen.append(temp.read_bytes())

    checkpoint.atomic_write_bytes(target, data, halfway)
    assert seen == [data[:len(data) // 2]]
    assert target.read_bytes() == data
    assert os.listdir(tmp_path) == ["file.bin"]


def test_refuse_check_raises_only_when_set():
    refuse_check({})
    refuse_check({REFUSE: "  "})  # blank counts as unset
    with pytest.raises(FaultInjectionError, match=f"^bad knob \\(fault injection: {REFUSE} is set; unset it"):
        refuse_check({REFUSE: " bad knob "})


def test_a_refused_check_exits_2_with_one_line_and_writes_nothing(corpus_path, tmp_path):
    """What the lab uses for "a bad setting only the trainer can see"."""
    run_dir = tmp_path / "run"
    result = run_process(chargpt_command("check", "--data", str(corpus_path), "--preset", "smoke",
                                         "--run-dir", str(run_dir), "--json"), **{REFUSE: "learning rate too hot"})
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [f"chargpt: error: learning rate too hot (fault injection: {REFUSE} is "
                                          "set; unset it to run the real check)"]
    assert not run_dir.exists()


# NODE_RANK (the inventory's) against GROUP_RANK (torchrun's rendezvous).

@pytest.mark.parametrize("environ", [{}, {"NODE_RANK": "1"}, {"GROUP_RANK": "1"},
                                     {"NODE_RANK": "1", "GROUP_RANK": "1"}])
def test_node_rank_agrees_or_is_absent(environ):
    check_node_rank(environ)


def test_node_rank_that_differs_from_group_rank_is_refused():
    with pytest.raises(DistributedError, match=r"NODE_RANK=1 .* differs from GROUP_RANK=0 .*global rank 0 "
                                               r"must run on the host that holds the run directory"):
        check_node_rank({"NODE_RANK": "1", "GROUP_RANK": "0"})


def test_swapped_node_ranks_stop_before_the_process_group(corpus_path, tmp_path):
    """torchrun --standalone gives this node GROUP_RANK=0; the inventory said 1."""
    run_dir = tmp_path / "run"
    result = run_process(torchrun_command(2, "train", "--data", str(corpus_path), "--preset", "smoke",
                                          "--run-dir", str(run_dir)), NODE_RANK="1")
    assert result.returncode != 0
    assert result.stderr.count("chargpt: error: NODE_RANK=1 (this host's rank in the inventory) differs "
                               "from GROUP_RANK=0") == 1, result.stderr
    assert "process group" not in result.stdout
    assert not run_dir.exists()


def test_a_bad_checkpoint_pause_stops_before_the_process_group(corpus_path, tmp_path):
    run_dir = tmp_path / "run"
    result = run_process(torchrun_command(2, "train", "--data", str(corpus_path), "--preset", "smoke",
                                          "--run-dir", str(run_dir)), **{PAUSE: "40"})
    assert result.returncode != 0
    assert result.stderr.count(f"chargpt: error: {PAUSE}='40' is not STEP:SECONDS") == 1, result.stderr
    assert "process group" not in result.stdout
    assert not run_dir.exists()


def test_bad_checkpoint_pause_exits_2_with_one_line(corpus_path, tmp_path):
    result = run_process(chargpt_command("train", "--data", str(corpus_path), "--preset", "smoke",
                                         "--run-dir", str(tmp_path / "run")), **{PAUSE: "40:soon"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"chargpt: error: {PAUSE}='40:soon' is not STEP:SECONDS with a step of at least 1 and a positive "
        f"number of seconds; write e.g. {PAUSE}=40:30 or unset it"]


# Rank 0 killed while it writes a checkpoint.

def test_rank_0_killed_mid_checkpoint_keeps_the_previous_one_and_the_rerun_resumes(corpus_path, tmp_path):
    run_dir, log_path = tmp_path / "run", tmp_path / "train.log"
    command = chargpt_command("train", "--data", str(corpus_path), "--preset", "smoke", "--run-dir", str(run_dir),
                             "--set", "checkpoint_interval=20")
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=child_env(**{PAUSE: "40:120"}), stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        pause_line = "[chargpt] fault injection: pausing 120 s halfway through writing ckpt-00000040.pt"
        wait_for(lambda: pause_line in log_path.read_text(), process, 120, "fault-injection line")
        temps = list((run_dir / "checkpoints").glob(".ckpt-00000040.pt.*.tmp"))
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL

    assert [step for step, _ in checkpoint.list_checkpoints(run_dir)] == [20]
    assert checkpoint.load_latest_checkpoint(run_dir, warn=pytest.fail)["step"] == 20
    [temp] = temps
    previous_size = checkpoint.checkpoint_path(run_dir, 20).stat().st_size
    assert 0.4 * previous_size < temp.stat().st_size < 0.6 * previous_size  # half of a checkpoint
    with pytest.raises(Exception):
        torch.load(temp, weights_only=True)

    # The re-run (a restarted torchrun attempt, the variable still set) resumes and does not pause.
    rerun = run_process(command, **{PAUSE: "40:120", "TORCHELASTIC_RESTART_COUNT": "1"})
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed from step 20" in rerun.stdout
    assert "fault injection" not in rerun.stdout
    assert not temp.exists()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_step"] == 80 and summary["resumed_from_step"] == 20
    assert [step for step, _ in checkpoint.list_checkpoints(run_dir)] == [40, 60, 80]


# A hung or dead peer.

TIMEOUT_S = 2


def collective_with_a_failed_peer(rank: int, port: int, operation: str, peer: str, out_dir: str) -> None:
    """Rank 1 hangs or dies before a collective; rank 0 records what its failure says."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=TIMEOUT_S))
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))
    dist.barrier()
    if rank == 1:
        if peer == "hangs":
            time.sleep(TIMEOUT_S + 3)
        os._exit(0)
    try:
        if operation == "ddp backward":
            model(torch.randn(2, 4)).sum().backward()
        elif operation == "ddp backward beside the stop vote":  # the vote's all-reduce is in flight
            vote = dist.all_reduce(torch.zeros(1, dtype=torch.int32), async_op=True)
            model(torch.randn(2, 4)).sum().backward()
            vote.wait()
        else:  # what estimate_loss() and the loss logging do
            dist.all_reduce(torch.ones(2))
    except RuntimeError as error:
        failure = peer_failure(error, rank, TIMEOUT_S)
        Path(out_dir, "rank0.txt").write_text(str(failure) if failure else f"not recognised: {error}")
    os._exit(0)  # a broken group's teardown at exit can abort (what the CLI avoids the same way)


@pytest.mark.parametrize("operation, peer, expected", [
    ("ddp backward", "hangs", f"rank 0: a collective timed out after {TIMEOUT_S} s (dist_timeout_s); a peer hung "
                              "or died. Exiting so that torchrun restarts the group."),
    ("eval all-reduce", "hangs", f"rank 0: a collective timed out after {TIMEOUT_S} s (dist_timeout_s)"),
    ("ddp backward beside the stop vote", "hangs", f"rank 0: a collective timed out after {TIMEOUT_S} s"),
    ("ddp backward", "dies", "rank 0: a peer closed its connection during a collective; it died or was restarted."),
])
def test_gloo_errors_of_a_failed_peer_are_recognised(tmp_path, operation, peer, expected):
    mp.spawn(collective_with_a_failed_peer, args=(free_port(), operation, peer, str(tmp_path)), nprocs=2, join=True)
    assert expected in (tmp_path / "rank0.txt").read_text()
