"""The real command line: bad input fails early and cleanly, sample reads a finished run."""

from __future__ import annotations

import hashlib

import pytest

from conftest import chargpt_command, run_process, torchrun_command


def snapshot(folder) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def finished_run(corpus_path, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    result = run_process(chargpt_command("train", "--data", str(corpus_path), "--preset", "smoke",
                                         "--run-dir", str(run_dir)))
    assert result.returncode == 0, result.stderr
    assert "sample (200 characters)" in result.stdout
    assert (run_dir / "sample.txt").read_text() in result.stdout
    return run_dir


def bad_corpus(tmp_path, content: bytes | None):
    path = tmp_path / "bad.txt"
    if content is not None:
        path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize("case, expected", [
    ("missing corpus", "does not exist or is not a file"),
    ("empty corpus", "is empty"),
    ("binary corpus", "is not UTF-8 text"),
    ("short corpus", "split has"),
    ("bad preset", "unknown preset 'giant'"),
    ("unknown key", "unknown config key 'n_layers'"),
    ("bad value", "bad value 'lots' for max_steps"),
    ("unknown env key", "unknown config key 'speed' (from environment variable CHARGPT_SPEED)"),
    ("other model in run dir", "holds a checkpoint with n_embd=64 but the configuration says n_embd=32"),
    ("checkpoint past max_steps", "holds a checkpoint of step 80, past max_steps=50"),
])
def test_bad_input_exits_2_with_one_line_and_leaves_the_run_dir_intact(
        finished_run, corpus_path, tmp_path, case, expected):
    data, preset, extra, env = str(corpus_path), "smoke", [], {}
    if case == "missing corpus":
        data = bad_corpus(tmp_path, None)
    elif case == "empty corpus":
        data = bad_corpus(tmp_path, b"")
    elif case == "binary corpus":
        data = bad_corpus(tmp_path, bytes(range(256)) * 10)
    elif case == "short corpus":
        data = bad_corpus(tmp_path, b"to be or not to be " * 3)
    elif case == "bad preset":
        preset = "giant"
    elif case == "unknown key":
        extra = ["--set", "n_layers=3"]
    elif case == "bad value":
        extra = ["--set", "max_steps=lots"]
    elif case == "unknown env key":
        env = {"CHARGPT_SPEED": "fast"}
    elif case == "other model in run dir":
        extra = ["--set", "n_embd=32"]
    elif case == "checkpoint past max_steps":
        extra = ["--set", "max_steps=50"]
    before = snapshot(finished_run)
    result = run_process(chargpt_command("train", "--data", data, "--preset", preset,
                                         "--run-dir", str(finished_run), *extra), **env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chargpt: error: ") and expected in lines[0], result.stderr
    assert snapshot(finished_run) == before


def test_batch_not_divisible_by_the_world_fails_before_the_process_group(corpus_path, tmp_path):
    run_dir = tmp_path / "run"
    result = run_process(torchrun_command(2, "train", "--data", str(corpus_path), "--preset", "smoke",
                                          "--run-dir", str(run_dir), "--set", "batch_size=9"))
    assert result.returncode != 0
    message = "batch_size=9 is not divisible by the world size 2"
    assert result.stderr.count(message) == 1, result.stderr
    assert "process group" not in result.stdout
    assert not run_dir.exists()


def test_a_finished_run_resumed_again_changes_nothing_but_the_outputs(finished_run, corpus_path):
    result = run_process(chargpt_command("train", "--data", str(corpus_path), "--preset", "smoke",
                                         "--run-dir", str(finished_run)))
    assert result.returncode == 0, result.stderr
    assert "resumed from step 80" in result.stdout


def test_sample_continues_the_prompt_reproducibly(finished_run):
    command = chargpt_command("sample", "--run-dir", str(finished_run), "--prompt", "ROMEO:",
                              "--chars", "80", "--temperature", "0.8", "--top-k", "10", "--seed", "7")
    first = run_process(command)
    assert first.returncode == 0, first.stderr
    text = first.stdout[:-1]  # print's newline
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 80
    assert run_process(command).stdout == first.stdout


@pytest.mark.parametrize("args, expected", [
    (["--prompt", "naïve €"], "characters the model never saw: 'ï€'"),
    (["--temperature", "0"], "--temperature 0.0 must be positive"),
])
def test_sample_rejects_bad_input(finished_run, args, expected):
    result = run_process(chargpt_command("sample", "--run-dir", str(finished_run), *args))
    assert result.returncode == 2
    assert expected in result.stderr


def test_sample_without_a_trained_model(tmp_path):
    result = run_process(chargpt_command("sample", "--run-dir", str(tmp_path)))
    assert result.returncode == 2
    assert "has no model.pt and no checkpoint; train first" in result.stderr
