"""The memory estimate of `chargpt check` (memory.py): it grows with the model and the micro-batch, it
bounds a real run's peak, and a run over the limit is refused with the estimate, the limit and the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from chargpt.cli import EXIT_BAD_INPUT, main
from chargpt.config import ConfigError, build_config
from chargpt.memory import estimate, parse_size
from conftest import REPO_ROOT, chargpt_command, child_env


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("CHARGPT_", "TRAIN_FAULT_")):
            monkeypatch.delenv(name)


def process_bytes(preset="smoke", world_size=1, **overrides) -> int:
    config = build_config(preset, {key: str(value) for key, value in overrides.items()}, environ={})
    return estimate(config, 65, 200_000, 200_049, world_size, processes=1).process_bytes


def test_the_estimate_grows_with_the_micro_batch_and_the_model():
    micro = [process_bytes("original", micro_batch_size=size) for size in (1, 2, 4, 8, 16, 32, 64)]
    assert micro == sorted(micro) and len(set(micro)) == len(micro)
    assert process_bytes(n_embd=128) > process_bytes(n_embd=64)
    assert process_bytes(n_layer=4) > process_bytes(n_layer=2)
    assert process_bytes(block_size=64) > process_bytes(block_size=32)
    assert process_bytes(dtype="auto") > process_bytes(dtype="float32")  # autocast's bfloat16 weights
    assert process_bytes(world_size=2, batch_size=24) > process_bytes(batch_size=12)  # DDP's buckets


def test_processes_share_the_host():
    config = build_config("cpu", environ={})
    one, two = (estimate(config, 65, 200_000, 200_049, 2, processes) for processes in (1, 2))
    assert two.host_bytes - one.host_bytes == one.process_bytes


@pytest.mark.parametrize("text, size", [("8g", 8 * 2**30), ("512m", 512 * 2**20), ("1.5GiB", 3 * 2**29),
                                        ("2 gb", 2 * 2**30), ("1024", 1024), ("64k", 65536)])
def test_docker_sizes(text, size):
    assert parse_size(text) == size


def test_a_size_docker_cannot_read_is_refused():
    with pytest.raises(ConfigError, match="memory limit 'lots' is not a size such as 8g"):
        parse_size("lots")


def test_an_oversized_run_is_refused_with_the_estimate_the_limit_and_the_fix(capsys, corpus_path):
    status = main(["check", "--data", str(corpus_path), "--preset", "original", "--memory-limit", "4g",
                   "--processes-per-host", "2", "--world-size", "2"])
    error = capsys.readouterr().err
    assert status == EXIT_BAD_INPUT
    assert error.startswith("chargpt: error: this run needs about ")
    assert "of memory on each host (2 processes of " in error
    assert "more than the memory limit of 4.00 GiB (4g): set micro_batch_size=" in error
    assert "or run fewer processes per host" in error


def test_a_model_too_large_for_any_micro_batch_is_refused(capsys, corpus_path):
    status = main(["check", "--data", str(corpus_path), "--preset", "cpu", "--memory-limit", "1g",
                   "--set", "n_layer=24", "--set", "n_embd=1024", "--set", "n_head=8"])
    error = capsys.readouterr().err
    assert status == EXIT_BAD_INPUT
    assert "more than the memory limit of 1.00 GiB (1g): make the model smaller (n_layer=24, n_embd=1024" in error


@pytest.mark.parametrize("processes, limit", [(1, "256m"), (3, "1g")])
def test_a_limit_below_the_trainers_without_a_model_says_to_raise_it(capsys, corpus_path, processes, limit):
    status = main(["check", "--data", str(corpus_path), "--preset", "smoke", "--memory-limit", limit,
                   "--processes-per-host", str(processes), "--world-size", str(2 * processes)])
    error = capsys.readouterr().err
    assert status == EXIT_BAD_INPUT
    assert f"({limit}), which is below the " in error and "its trainers take before any model" in error
    assert "raise the limit above " in error and "micro_batch_size" not in error
    assert ("or run fewer processes per host" in error) == (processes > 1)


def test_a_group_that_may_shrink_is_judged_at_its_smallest_world(capsys, corpus_path):
    """Fewer ranks split the same global batch into larger shares: a run that fits at eight ranks does
    not at one, unless micro-batches cap each rank's share."""
    args = ["check", "--data", str(corpus_path), "--preset", "original", "--memory-limit", "4g", "--world-size", "8"]
    assert main(args) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main([*args, "--min-world-size", "1"]) == EXIT_BAD_INPUT
    assert "more than the memory limit of 4.00 GiB (4g): set micro_batch_size=" in capsys.readouterr().err
    assert main([*args, "--min-world-size", "1", "--set", "micro_batch_size=8"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("smallest", ["0", "9"])
def test_a_smallest_world_outside_the_world_is_refused(capsys, corpus_path, smallest):
    status = main(["check", "--data", str(corpus_path), "--preset", "smoke", "--world-size", "8",
                   "--min-world-size", smallest])
    assert status == EXIT_BAD_INPUT
    assert f"the smallest world size ({smallest}) must be from 1 to the world size (8)" in capsys.readouterr().err


def test_a_run_that_fits_passes_and_reports_its_estimate(capsys, corpus_path):
    status = main(["check", "--data", str(corpus_path), "--preset", "original", "--memory-limit", "8g", "--json"])
    memory = json.loads(capsys.readouterr().out)["memory"]
    assert status == 0
    assert memory["processes_per_host"] == 1 and memory["host_bytes"] < 8 * 2**30
    assert memory["process_bytes"] == sum(memory["parts"].values())


def test_the_estimate_bounds_a_real_runs_peak(corpus_path, tmp_path):
    """The smoke preset's whole run (steps, evaluation, checkpoint, outputs) in a process of its own."""
    overrides = {"max_steps": 4, "eval_interval": 4, "checkpoint_interval": 4, "sample_chars": 20,
                 "batch_size": 32, "dtype": "float32"}
    command = chargpt_command("train", "--data", str(corpus_path), "--preset", "smoke", "--run-dir",
                              str(tmp_path / "run"), *[f"--set={key}={value}" for key, value in overrides.items()])
    watcher = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
               "stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    result = subprocess.run([sys.executable, "-c", watcher, *command], capture_output=True, text=True,
                            timeout=300, env=child_env(), cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    peak = int(result.stdout) * 1024
    text = corpus_path.read_text()
    config = build_config("smoke", {key: str(value) for key, value in overrides.items()}, environ={})
    estimated = estimate(config, len(set(text)), len(text), sys.getsizeof(text), 1, 1).process_bytes
    assert peak <= estimated <= 2 * peak, (peak, estimated)
