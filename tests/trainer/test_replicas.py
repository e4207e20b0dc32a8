"""Every host keeps the run (issue 10), with real 2-rank Gloo groups over 127.0.0.1.

Each rank runs as its own `python -m chargpt train` with LOCAL_RANK=0 and its own run directory:
two hosts with their own disks. The reference run trains uninterrupted; the others lose parts of
the hosts' checkpoints, or are stopped with SIGTERM, and must end with the reference's weights."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from harness.damage import damage_tensor_bytes

from conftest import child_env, chargpt_command, free_port, leave_like_the_cli, torchrun_command
from test_tensor_tree import assert_same

SETTINGS = ["max_steps=120", "checkpoint_interval=40", "eval_interval=40", "keep_checkpoints=3", "log_interval=2"]
PEER_STOPPED_EXIT = 75


# The trainer under a guard that refuses to unpickle anything but a checkpoint file of its own
# host: whatever the peers send each other must arrive without unpickling.
WITHOUT_PICKLE = [sys.executable, str(Path(__file__).with_name("pickle_guard.py"))]


def start_hosts(corpus: Path, run_dirs: list[Path], without_pickle: bool = False) -> list[subprocess.Popen]:
    port = free_port()
    processes = []
    for rank, run_dir in enumerate(run_dirs):
        env = child_env(RANK=str(rank), LOCAL_RANK="0", WORLD_SIZE=str(len(run_dirs)), LOCAL_WORLD_SIZE="1",
                        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        env.pop("GLOO_SOCKET_IFNAME", None)
        arguments = ["train", "--data", str(corpus), "--preset", "smoke", "--run-dir", str(run_dir),
                     *[part for setting in SETTINGS for part in ("--set", setting)]]
        command = [*WITHOUT_PICKLE, *arguments] if without_pickle else chargpt_command(*arguments)
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True))
    return processes


def finish(processes: list[subprocess.Popen], timeout: float = 180) -> list[tuple[int, str]]:
    return [(process.wait(timeout), process.stdout.read()) for process in processes]


def train_hosts(corpus: Path, run_dirs: list[Path], without_pickle: bool = False) -> list[str]:
    results = finish(start_hosts(corpus, run_dirs, without_pickle))
    for rank, (code, log) in enumerate(results):
        assert code == 0, f"rank {rank} exited {code}:\n{log[-3000:]}"
    return [log for _, log in results]


def checkpoint_file(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"ckpt-{step:08d}.pt"


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def comparable(run_dir: Path) -> list[dict]:
    return [{key: record[key] for key in ("step", "train_loss", "val_loss", "lr")}
            for record in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]


def assert_same_final_model(reference: Path, run_dir: Path) -> None:
    expected, actual = load(reference / "model.pt")["model"], load(run_dir / "model.pt")["model"]
    for name in expected:
        assert torch.equal(expected[name], actual[name]), f"{name} differs from the uninterrupted run"


@pytest.fixture(scope="module")
def reference(corpus_path, tmp_path_factory) -> list[Path]:
    """The uninterrupted run on two hosts: [host 0's run directory, host 1's]."""
    root = tmp_path_factory.mktemp("reference")
    run_dirs = [root / "host0", root / "host1"]
    train_hosts(corpus_path, run_dirs)
    return run_dirs


def test_every_host_writes_the_same_complete_checkpoint(reference):
    host0, host1 = reference
    for step in (40, 80, 120):
        assert_same(load(checkpoint_file(host0, step)), load(checkpoint_file(host1, step)))
    state = load(checkpoint_file(host1, 80))
    assert len(state["rng"]) == 2 and state["step"] == 80
    # Host 1 never wrote metrics.jsonl, but its checkpoint carries the history up to its step.
    assert not (host1 / "metrics.jsonl").exists()
    history = [json.loads(line) for line in state["metrics"].splitlines()]
    assert [record["step"] for record in history] == [40, 80]
    assert history == [json.loads(line) for line in (host0 / "metrics.jsonl").read_text().splitlines()][:2]


def tear(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:2000])


# What each host's disk holds when the run starts again: the checkpoints kept, the torn ones.
LOSSES = {
    "host 0 is behind": ({"keep": [40]}, {"keep": [40, 80]}),
    "host 0 is a new, empty master": ({"keep": []}, {"keep": [40, 80]}),
    "host 0's newest is torn": ({"keep": [40, 80], "torn": [80]}, {"keep": [80]}),
    "host 0's newest is damaged inside a tensor": ({"keep": [40, 80], "damaged": [80]}, {"keep": [80]}),
}


@pytest.mark.parametrize("case", LOSSES)
def test_the_group_resumes_from_the_newest_checkpoint_any_host_has(case, reference, corpus_path, tmp_path):
    # The ranks exchange checkpoints and RNG states with pickle disabled: only tensors cross.
    run_dirs = [tmp_path / "host0", tmp_path / "host1"]
    for source, target, plan in zip(reference, run_dirs, LOSSES[case]):
        target.mkdir()
        for step in plan["keep"]:
            (target / "checkpoints").mkdir(exist_ok=True)
            shutil.copy(checkpoint_file(source, step), checkpoint_file(target, step))
        for step in plan.get("torn", []):
            tear(checkpoint_file(target, step))
        for step in plan.get("damaged", []):
            damage_tensor_bytes(checkpoint_file(target, step))
            assert load(checkpoint_file(target, step))["step"] == step  # torch alone takes it
        if source == reference[0] and plan["keep"]:
            shutil.copy(source / "config.json", target / "config.json")
    logs = train_hosts(corpus_path, run_dirs, without_pickle=True)

    if "damaged" in LOSSES[case][0]:
        assert "checkpoint ckpt-00000080.pt of step 80 on " in logs[0]
        assert "is unusable (DamagedCheckpoint: " in logs[0] and "set aside as ckpt-00000080.pt.damaged" in logs[0]
        assert (run_dirs[0] / "checkpoints" / "ckpt-00000080.pt.damaged").is_file()
    assert "resume agreement: newest checkpoint is step 80, on rank(s) 1; rank 1 sends it to rank(s) 0" in logs[0]
    assert "received step 80 from rank 1, kept as ckpt-00000080.pt" in logs[0]
    assert "resumed from step 80" in logs[0]
    assert_same(load(checkpoint_file(reference[1], 80)), load(checkpoint_file(run_dirs[0], 80)))
    assert_same_final_model(reference[0], run_dirs[0])
    # Host 0 rebuilt the metrics before step 80 from the checkpoint it received.
    assert comparable(run_dirs[0]) == comparable(reference[0])
    summary = json.loads((run_dirs[0] / "summary.json").read_text())
    assert summary["resumed_from_step"] == 80 and summary["status"] == "complete"


def wait_for_step(run_dir: Path, step: int, processes: list[subprocess.Popen], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if json.loads((run_dir / "progress.json").read_text())["step"] >= step:
                return
        except (OSError, ValueError):
            pass
        assert all(process.poll() is None for process in processes), "a rank ended before the stop"
        assert time.monotonic() < deadline, f"no step {step} within {timeout} s"
        time.sleep(0.01)


def stopped_step(run_dir: Path) -> int:
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["state"] == "stopped", progress
    return progress["step"]


def test_sigterm_on_one_host_checkpoints_every_host_and_loses_no_step(reference, corpus_path, tmp_path):
    run_dirs = [tmp_path / "host0", tmp_path / "host1"]
    processes = start_hosts(corpus_path, run_dirs)
    wait_for_step(run_dirs[1], 10, processes)
    processes[1].send_signal(signal.SIGTERM)
    (code0, log0), (code1, log1) = finish(processes)

    step = stopped_step(run_dirs[0])
    assert 10 <= step < 40, step  # before the first regular checkpoint
    assert code1 == 0, log1[-3000:]
    assert f"stopped on SIGTERM after step {step}" in log1
    assert code0 == PEER_STOPPED_EXIT, log0[-3000:]
    assert f"rank 0: another rank was asked to stop; the checkpoint of step {step} is written" in log0
    assert_same(load(checkpoint_file(run_dirs[0], step)), load(checkpoint_file(run_dirs[1], step)))

    attempts = json.loads((run_dirs[0] / "config.json").read_text())["attempts"]
    assert attempts[-1]["stopped_at_step"] == step

    logs = train_hosts(corpus_path, run_dirs)
    assert f"resumed from step {step}" in logs[0]
    attempts = json.loads((run_dirs[0] / "config.json").read_text())["attempts"]
    assert attempts[-1]["resumed_from_step"] == attempts[-2]["stopped_at_step"] == step  # no step lost
    assert_same_final_model(reference[0], run_dirs[0])


def test_sigterm_to_torchrun_stops_its_workers_after_a_checkpoint(corpus_path, tmp_path):
    run_dir = tmp_path / "run"
    command = torchrun_command(2, "train", "--data", str(corpus_path), "--preset", "smoke", "--run-dir", str(run_dir),
                               *[part for setting in SETTINGS for part in ("--set", setting)])
    process = subprocess.Popen(command, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_step(run_dir, 10, [process])
    process.send_signal(signal.SIGTERM)
    log = process.communicate(timeout=60)[0]

    step = stopped_step(run_dir)
    assert f"stopped on SIGTERM after step {step}" in log, log[-3000:]
    assert checkpoint_file(run_dir, step).is_file()
    # Both workers got torchrun's SIGTERM: neither left as a peer of a stopped rank.
    assert "another rank was asked to stop" not in log, log[-3000:]


def receive_from_a_damaged_sender(rank: int, port: int, run_dir: str, corpus: str) -> None:
    """Rank 1 holds step 80 but a tensor changed after its digest was taken; rank 0 has nothing."""
    os.environ.update(RANK=str(rank), LOCAL_RANK="0", WORLD_SIZE="2", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    from chargpt import checkpoint
    from chargpt.config import build_config
    from chargpt.data import load_corpus
    from chargpt.distributed import read_env
    from chargpt.replicas import agree_on_resume
    from chargpt.resume import Resume

    config = build_config("smoke", dict(setting.split("=") for setting in SETTINGS), environ={})
    state = None
    if rank == 1:
        state = checkpoint.load_checkpoint(checkpoint_file(Path(run_dir), 80))
        next(iter(state["model"].values())).view(-1)[0] += 1.0  # after the digest: as if damaged in memory
    outcome = "received"
    try:
        agree_on_resume(Resume(state), read_env(), Path(run_dir) / f"rank{rank}", config,
                        load_corpus(Path(corpus), config.block_size, config.val_fraction), print, print)
    except checkpoint.DamagedCheckpoint as error:
        outcome = str(error)
    (Path(run_dir) / f"outcome{rank}").write_text(outcome)
    leave_like_the_cli()


def test_a_copy_that_fails_its_digest_on_receipt_is_refused(reference, corpus_path, tmp_path):
    shutil.copytree(reference[1] / "checkpoints", tmp_path / "checkpoints")
    mp.spawn(receive_from_a_damaged_sender, args=(free_port(), str(tmp_path), str(corpus_path)), nprocs=2, join=True)
    assert (tmp_path / "outcome0").read_text().startswith(
        "the checkpoint of step 80 received from rank 1 is damaged: its content has sha256 ")
    assert not (tmp_path / "rank0").exists()  # nothing kept
