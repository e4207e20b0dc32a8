"""A peer that is gone is noticed within dead_peer_timeout_s; a slow one is not taken for gone.

The judge on its own (a store that answers or not, a counter that moves or not), then real
two-rank torchrun groups: a rank frozen with SIGSTOP ends the group within the shorter of
dist_timeout_s and dead_peer_timeout_s; a checkpoint that takes three times the dead-peer timeout
ends nothing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time

import pytest

from chargpt.config import ConfigError, TrainConfig
from chargpt.distributed import DistEnv
from chargpt.liveness import DEAD_PEER_EXIT, PeerWatch, beat_interval
from conftest import child_env, ranks_of, run_process, torchrun_command, wait_for

TIMEOUT_S = 4


class Store:
    """A store of counters that answers until it is told not to."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.answers = True

    def add(self, key: str, amount: int) -> int:
        if not self.answers:
            raise RuntimeError("timed out")
        self.counts[key] = self.counts.get(key, 0) + amount
        return self.counts[key]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watch(store: Store, clock: Clock | None = None, rank: int = 0, world_size: int = 3) -> PeerWatch:
    return PeerWatch(DistEnv(rank=rank, world_size=world_size, master_addr="10.0.0.1", master_port=29500),
                     TIMEOUT_S, "group", connect=lambda timeout: store, on_dead=pytest.fail, clock=clock or Clock())


def test_each_rank_watches_the_next_one_in_the_ring():
    assert [watch(Store(), rank=rank).watched for rank in range(3)] == [1, 2, 0]
    assert beat_interval(60) == 5 and beat_interval(4) == 1


def test_a_peer_whose_counter_moves_is_alive_and_one_whose_counter_stands_is_not():
    store, clock = Store(), Clock()
    peer_watch = watch(store, clock)
    peer_watch.beat()
    assert store.counts == {"chargpt/alive/group/0": 1, "chargpt/alive/group/1": 0}
    for _ in range(3):  # rank 1 beats between each of rank 0's beats, over twice the timeout
        clock.now += TIMEOUT_S - 1
        store.add("chargpt/alive/group/1", 1)
        peer_watch.beat()
        assert peer_watch.verdict() is None
    for _ in range(2):  # rank 1 no longer beats; the store still answers
        clock.now += TIMEOUT_S - 1
        peer_watch.beat()
    assert peer_watch.verdict().startswith("rank 1 gave no sign of life for 6 s"), peer_watch.verdict()


def test_a_store_that_stops_answering_is_named():
    store, clock = Store(), Clock()
    peer_watch = watch(store, clock)
    peer_watch.beat()
    store.answers = False
    clock.now += TIMEOUT_S
    peer_watch.beat()
    assert peer_watch.verdict() is None  # not longer than the timeout yet
    clock.now += 1
    assert peer_watch.verdict().startswith("the group's store at 10.0.0.1:29500 (on the master's host) did not "
                                           "answer for 5 s"), peer_watch.verdict()


def test_a_too_short_timeout_is_refused():
    with pytest.raises(ConfigError, match="dead_peer_timeout_s=1.0 must be at least 2"):
        TrainConfig(dead_peer_timeout_s=1.0)


@pytest.mark.parametrize("setting, line, exit_code, within_s", [
    # dead_peer_timeout_s at its default (60 s): Gloo's wait in the next collective ends it.
    ("dist_timeout_s=5", "[chargpt] rank 0: a collective timed out after 5 s (dist_timeout_s); a peer hung or died. "
                         "Exiting so that torchrun restarts the group.", 3, 5),
    # dist_timeout_s at its default (600 s): the judge ends it within the timeout and two beats.
    (f"dead_peer_timeout_s={TIMEOUT_S}", "[chargpt] rank 0: rank 1 gave no sign of life for ", DEAD_PEER_EXIT,
     TIMEOUT_S + 2 * beat_interval(TIMEOUT_S)),
], ids=["collective timeout", "dead peer"])
def test_a_frozen_rank_ends_the_group_within_the_shorter_timeout(corpus_path, tmp_path, setting, line, exit_code,
                                                                  within_s):
    """SIGSTOP rank 1 while training: rank 0 says why with one line and leaves with its own exit
    status, torchrun ends, nothing hangs."""
    log_path = tmp_path / "torchrun.log"
    command = torchrun_command(2, "train", "--data", str(corpus_path), "--preset", "smoke",
                               "--run-dir", str(tmp_path / "run"), "--set", "max_steps=1000000", "--set", setting)
    command[command.index("--nnodes=1")] = "--max-restarts=0"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=child_env(), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    ranks = {}
    try:
        wait_for(lambda: "[chargpt] step 20/" in log_path.read_text(), process, 120, "training steps")
        ranks = ranks_of(process.pid)
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[1], signal.SIGSTOP)
        frozen = time.monotonic()
        while line not in log_path.read_text():
            # 10 s more for a loaded CI machine.
            assert time.monotonic() - frozen < within_s + 10, log_path.read_text()[-3000:]
            time.sleep(0.1)
        # torchrun's agent then stops the group with SIGTERM, which a stopped process only gets when
        # continued (else torchrun's own fixed 30 s grace period ends in SIGKILL: torch's part, not
        # the trainer's, and not worth waiting for here).
        os.kill(ranks[1], signal.SIGCONT)
        process.wait(timeout=30)
    finally:
        for pid in ranks.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    log = log_path.read_text()
    assert process.returncode != 0
    assert f"exitcode  : {exit_code}" in log, log[-3000:]  # rank 0's own exit status
    # One line from rank 0, no traceback.
    assert log.count(line) == 1, log[-3000:]
    assert "[rank0]: Traceback" not in log


def test_a_checkpoint_three_times_longer_than_the_timeout_is_no_dead_peer(corpus_path, tmp_path):
    """Rank 0 pauses 3 x dead_peer_timeout_s halfway through writing checkpoint 40 (what a large
    model's checkpoint does) while rank 1 waits for it in the next collective: neither leaves, and
    the run completes."""
    pause_s = 3 * TIMEOUT_S
    result = run_process(torchrun_command(2, "train", "--data", str(corpus_path), "--preset", "smoke",
                                          "--run-dir", str(tmp_path / "run"),
                                          "--set", f"dead_peer_timeout_s={TIMEOUT_S}"),
                         TRAIN_FAULT_CHECKPOINT_PAUSE=f"40:{pause_s}")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert f"pausing {pause_s} s halfway through writing ckpt-00000040.pt" in output
    assert "gave no sign of life" not in output and "did not answer" not in output
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "complete"
