"""Two-rank Gloo runs on CPU over 127.0.0.1: DDP consistency, learning, and exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from conftest import child_env, free_port, leave_like_the_cli, run_process, torchrun_command

STEPS = 300


def train_one_rank(rank: int, world_size: int, port: int, corpus: str, run_dir: str, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.pop("GLOO_SOCKET_IFNAME", None)
    from chargpt.train import train

    model = train(corpus, "smoke", run_dir, ["max_steps=12", "eval_interval=6", "checkpoint_interval=6"])
    torch.save(model.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    leave_like_the_cli()


def test_ranks_hold_identical_parameters_after_training(corpus_path, tmp_path):
    mp.spawn(train_one_rank, args=(2, free_port(), str(corpus_path), str(tmp_path / "run"), str(tmp_path)),
             nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"{name} differs between the ranks"
    final = torch.load(tmp_path / "run" / "model.pt")["model"]
    assert all(torch.equal(final[name], rank0[name]) for name in rank0)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["final_step"] == 12


def test_ranks_draw_different_batches():
    from chargpt.config import build_config
    from chargpt.data import sample_batch
    from chargpt.distributed import DistEnv
    from chargpt.train import rank_seed

    config = build_config("smoke", environ={})
    data = torch.arange(10_000)
    batches = [sample_batch(data, 6, 32, torch.Generator().manual_seed(rank_seed(config, DistEnv(rank=r, world_size=2))))
               for r in (0, 1)]
    assert not torch.equal(batches[0][0], batches[1][0])


def train_command(corpus_path, run_dir) -> list[str]:
    return torchrun_command(2, "train", "--data", str(corpus_path), "--preset", "smoke",
                            "--run-dir", str(run_dir), "--set", f"max_steps={STEPS}",
                            "--set", "checkpoint_interval=25", "--set", "eval_interval=50",
                            "--set", "keep_checkpoints=2")


def kill_tree(pid: int) -> None:
    """SIGKILL a process and its descendants (torchrun starts its workers in their own sessions)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    os.kill(pid, signal.SIGSTOP)  # no new workers while the children die
    for child in children:
        kill_tree(child)
    os.kill(pid, signal.SIGKILL)


def comparable(records: list[dict]) -> list[dict]:
    return [{key: record[key] for key in ("step", "train_loss", "val_loss", "lr")} for record in records]


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_ranks_learn_and_a_killed_run_resumes_to_the_same_parameters(corpus_path, tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    result = run_process(train_command(corpus_path, uninterrupted))
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "world_size=2" in log
    assert "GLOO_SOCKET_IFNAME=auto: using interface lo" in log
    metrics = read_metrics(uninterrupted)
    assert [record["step"] for record in metrics] == list(range(50, STEPS + 1, 50))
    eval_seconds = [record["eval_s"] for record in metrics]
    assert 0 < eval_seconds[0] and eval_seconds == sorted(eval_seconds), metrics
    assert eval_seconds[-1] < metrics[-1]["elapsed_s"], metrics
    # From ln(65) = 4.17 untrained, through the unigram plateau (about 3.3), to bigram-like text.
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"] - 0.1, metrics
    assert metrics[-1]["val_loss"] < 2.6, metrics
    for name in ("config.json", "model.pt", "sample.txt", "loss.svg", "summary.json"):
        assert (uninterrupted / name).is_file(), name
    assert sorted(p.name for p in (uninterrupted / "checkpoints").iterdir()) == [
        f"ckpt-{STEPS - 25:08d}.pt", f"ckpt-{STEPS:08d}.pt"]

    # The same run, killed (SIGKILL, all ranks) once it has written a checkpoint.
    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(train_command(corpus_path, interrupted), env=child_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list((interrupted / "checkpoints").glob("ckpt-*.pt")):
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
        time.sleep(0.005)
    kill_tree(process.pid)
    process.wait()
    assert not (interrupted / "summary.json").exists(), "the run finished before it could be killed"
    steps = sorted(int(p.name[5:13]) for p in (interrupted / "checkpoints").glob("ckpt-*.pt"))
    # A torn newer checkpoint, as a crash of a non-atomic writer would leave: it must be skipped.
    torn = interrupted / "checkpoints" / f"ckpt-{steps[-1] + 25:08d}.pt"
    torn.write_bytes((interrupted / "checkpoints" / f"ckpt-{steps[-1]:08d}.pt").read_bytes()[:1000])

    resumed = run_process(train_command(corpus_path, interrupted))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert f"resumed from step {steps[-1]}" in log, log
    assert f"checkpoint {torn.name} of step {steps[-1] + 25} on " in log and f"set aside as {torn.name}.damaged" in log
    summary = json.loads((interrupted / "summary.json").read_text())
    assert summary["resumed_from_step"] == steps[-1] and summary["status"] == "complete"

    expected = torch.load(uninterrupted / "model.pt")["model"]
    actual = torch.load(interrupted / "model.pt")["model"]
    for name in expected:
        assert torch.equal(expected[name], actual[name]), f"{name} differs after resuming"
    assert comparable(read_metrics(interrupted)) == comparable(metrics)
