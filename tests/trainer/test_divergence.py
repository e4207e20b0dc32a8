"""A step that is not finite is never applied: the run goes back to its newest checkpoint, and a
second one from there stops it for good (exit 4) with no non-finite checkpoint written (divergence.py).
Real training runs: two ranks over Gloo under torchrun, and one process."""

from __future__ import annotations

import json

import torch

from conftest import chargpt_command, run_process, torchrun_command

SETTINGS = ["max_steps=60", "checkpoint_interval=20", "eval_interval=20", "log_interval=10"]
EXIT_DIVERGED = 4


def train(corpus, run_dir, *settings: str, nproc: int = 1, **env: str):
    arguments = ["train", "--data", str(corpus), "--preset", "smoke", "--run-dir", str(run_dir),
                 *[part for setting in (*SETTINGS, *settings) for part in ("--set", setting)]]
    command = torchrun_command(nproc, *arguments) if nproc > 1 else chargpt_command(*arguments)
    return run_process(command, timeout=300, **env)


def final_weights(run_dir) -> dict:
    return torch.load(run_dir / "model.pt", weights_only=True)["model"]


def metrics(run_dir) -> list[dict]:
    return [{key: record[key] for key in ("step", "train_loss", "val_loss")}
            for record in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]


def test_a_nan_loss_goes_back_to_the_checkpoint_and_ends_as_if_it_never_happened(corpus_path, tmp_path):
    reference = train(corpus_path, tmp_path / "reference", nproc=2)
    assert reference.returncode == 0, reference.stderr[-3000:]
    # The NaN on rank 1 only: rank 0, whose loss was finite, must go back too.
    poisoned = train(corpus_path, tmp_path / "run", nproc=2, TRAIN_FAULT_NONFINITE_LOSS="30:1")
    log = poisoned.stdout + poisoned.stderr
    assert poisoned.returncode == 0, log[-3000:]
    assert ("step 30 is not finite (the loss on rank(s) 1): it is not applied; going back to the newest "
            "checkpoint that verifies") in log
    assert log.count("went back to step 20; training goes on from there") == 1
    expected, actual = final_weights(tmp_path / "reference"), final_weights(tmp_path / "run")
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    assert metrics(tmp_path / "run") == metrics(tmp_path / "reference")


def test_a_diverging_learning_rate_stops_for_good_without_a_nonfinite_checkpoint(corpus_path, tmp_path):
    run_dir = tmp_path / "run"
    # A checkpoint every step: the last finite one is there to go back to, and none after it may appear.
    diverging = ("lr=100", "checkpoint_interval=1", "keep_checkpoints=100")
    result = train(corpus_path, run_dir, *diverging)
    assert result.returncode == EXIT_DIVERGED, result.stderr[-3000:]
    [error] = [line for line in result.stderr.splitlines() if line.startswith("chargpt: error:")]
    assert error.startswith("chargpt: error: the run diverged: step ") and "stopped for good (exit 4)" in error
    assert "Lower lr (or raise warmup_steps) and allow the change (allow_config_change=lr)" in error
    checkpoints = sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))
    assert checkpoints, "the run should have written checkpoints before it diverged"
    for path in checkpoints:
        state = torch.load(path, weights_only=True)
        assert all(torch.isfinite(tensor).all() for tensor in state["model"].values()), path
    assert json.loads((run_dir / "progress.json").read_text())["state"] == "diverged"

    again = train(corpus_path, run_dir, *diverging)  # what every restart meets: refused at once
    assert again.returncode == EXIT_DIVERGED and error in again.stderr, again.stderr[-3000:]
    assert "step 1/" not in again.stdout
    check = ["check", "--data", str(corpus_path), "--preset", "smoke", "--run-dir", str(run_dir),
             *[part for setting in SETTINGS for part in ("--set", setting)]]
    refused = run_process(chargpt_command(*check, *[part for setting in diverging for part in ("--set", setting)]))
    assert refused.returncode == EXIT_DIVERGED and error in refused.stderr
    # Other settings are another experiment: the record does not refuse them.
    lower = run_process(chargpt_command(*check, "--set", "lr=0.005", "--set", "allow_config_change=lr"))
    assert lower.returncode == 0 and f"resumes from step {len(checkpoints)}" in lower.stdout, lower.stderr
