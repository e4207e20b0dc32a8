"""The real command line: bad input fails early and cleanly, sample reads a finished run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from chargpt import checkpoint, cli
from chargpt.config import TrainConfig
from chargpt.resume import experiment_id
from conftest import chargpt_command, run_process, snapshot, torchrun_command


@pytest.fixture(scope="module")
def finished_run(corpus_path, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    result = run_process(chargpt_command("train", "--data", str(corpus_path), "--preset", "smoke",
                                         "--run-dir", str(run_dir)))
    assert result.returncode == 0, result.stderr
    assert "sample (200 characters)" in result.stdout
    assert "[chargpt] step 1/80 | loss " in result.stdout  # the first step of every start is logged
    # A single process joins no group, but says so as every rank of a group does: the deployment's
    # start wait (roles/cluster/files/read_trainer.py) waits for this line on every host.
    assert "[chargpt] process group: backend=none world_size=1" in result.stdout
    assert (run_dir / "sample.txt").read_text() in result.stdout
    return run_dir


def bad_corpus(tmp_path, content: bytes | None):
    path = tmp_path / "bad.txt"
    if content is not None:
        path.write_bytes(content)
    return str(path)


# Through the real command line (a process of its own: its exit status, and nothing else on its
# stderr); the other cases call the command's entry point, chargpt.cli.main, in the test's process.
REAL_PROCESS_CASES = {"bad preset", "other corpus in run dir"}


def main_in_this_process(monkeypatch, capsys, argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """chargpt.cli.main(argv) with the environment a subprocess of run_process would get: its exit
    status and what it wrote to stderr."""
    for key in [key for key in os.environ if key.startswith("CHARGPT_")
                or key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    returncode = cli.main(argv)
    return returncode, capsys.readouterr().err


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
    ("other corpus in run dir", "was trained on another corpus (sha256 "),
    ("changed setting", "was trained with other settings: seed 1337 -> 7; one run id is one experiment"),
    ("model shape allowed to change", "allow_config_change names n_embd, which set the model's shape"),
])
def test_bad_input_exits_2_with_one_line_and_leaves_the_run_dir_intact(
        finished_run, corpus_path, tmp_path, monkeypatch, capsys, case, expected):
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
    elif case == "other corpus in run dir":
        data = bad_corpus(tmp_path, corpus_path.read_bytes()[::-1])
    elif case == "changed setting":
        env = {"CHARGPT_SEED": "7"}
    elif case == "model shape allowed to change":
        extra = ["--set", "n_embd=32", "--set", "allow_config_change=n_embd"]
    before = snapshot(finished_run)
    argv = ["train", "--data", data, "--preset", preset, "--run-dir", str(finished_run), *extra]
    if case in REAL_PROCESS_CASES:
        result = run_process(chargpt_command(*argv), **env)
        returncode, stderr = result.returncode, result.stderr
    else:
        returncode, stderr = main_in_this_process(monkeypatch, capsys, argv, env)
    assert returncode == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chargpt: error: ") and expected in lines[0], stderr
    assert snapshot(finished_run) == before


def test_a_batch_smaller_than_the_world_fails_before_the_process_group(corpus_path, tmp_path):
    run_dir = tmp_path / "run"
    result = run_process(torchrun_command(2, "train", "--data", str(corpus_path), "--preset", "smoke",
                                          "--run-dir", str(run_dir), "--set", "batch_size=1"))
    assert result.returncode != 0
    message = "batch_size=1 is smaller than the world size 2"
    assert result.stderr.count(message) == 1, result.stderr
    assert "process group" not in result.stdout
    assert not run_dir.exists()


def test_whichever_local_rank_meets_bad_input_first_says_it_once(corpus_path, tmp_path):
    """torchrun stops the other ranks when one exits: the first to fail reports for the host, even
    when it is not local rank 0, and a rank after it stays silent."""
    # torchrun's own default run id, the same for every launch: it must not name the report.
    torchrun = {"TORCHELASTIC_RUN_ID": "none", "TORCHELASTIC_RESTART_COUNT": "0"}
    command = chargpt_command("train", "--data", str(corpus_path), "--preset", "giant", "--run-dir",
                              str(tmp_path / "run"))
    first = run_process(command, LOCAL_RANK="1", **torchrun)
    second = run_process(command, LOCAL_RANK="0", **torchrun)
    assert (first.returncode, second.returncode) == (2, 2), first.stderr + second.stderr
    assert first.stderr.count("chargpt: error: unknown preset 'giant'") == 1, first.stderr
    assert "chargpt: error" not in second.stderr, second.stderr


def test_a_finished_run_resumed_again_changes_nothing_but_the_outputs(finished_run, corpus_path):
    result = run_process(chargpt_command("train", "--data", str(corpus_path), "--preset", "smoke",
                                         "--run-dir", str(finished_run)))
    assert result.returncode == 0, result.stderr
    assert "resumed from step 80" in result.stdout


def test_a_run_continues_with_an_allowed_change_and_keeps_its_history(finished_run, corpus_path, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    result = run_process(chargpt_command("train", "--data", str(corpus_path), "--preset", "smoke",
                                         "--run-dir", str(run_dir)),
                         CHARGPT_MAX_STEPS="100", CHARGPT_ALLOW_CONFIG_CHANGE="max_steps")
    assert result.returncode == 0, result.stderr
    assert ("[chargpt] warning: resuming step 80 with changed settings that allow_config_change accepts: "
            "max_steps 80 -> 100") in result.stdout
    assert "resumed from step 80" in result.stdout
    assert "[chargpt] step 81/100 | loss " in result.stdout  # the first step of every start is logged
    before = json.loads((finished_run / "config.json").read_text())["attempts"]
    attempts = json.loads((run_dir / "config.json").read_text())["attempts"]
    assert attempts[:-1] == before  # one more attempt: the history is kept
    first, second = attempts[0], attempts[-1]
    digest = hashlib.sha256(corpus_path.read_bytes()).hexdigest()
    assert (first["resumed_from_step"], first["world_size"], first["corpus_sha256"]) == (None, 1, digest)
    assert (second["resumed_from_step"], second["config"]["max_steps"]) == (80, 100)
    assert first["config"]["max_steps"] == 80 and first["started_at"] <= second["started_at"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["final_step"], summary["resumed_from_step"], summary["corpus_sha256"]) == (100, 80, digest)
    assert summary["config"] == second["config"]
    assert summary["experiment"] == experiment_id(TrainConfig(**second["config"]), digest)
    state = checkpoint.load_checkpoint(checkpoint.checkpoint_path(run_dir, 100))
    assert state["corpus_sha256"] == digest and state["config"] == second["config"]


def test_checkpoints_that_all_fail_to_load_stop_the_run_and_stay(corpus_path, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "ckpt-00000040.pt").write_bytes(b"torn")
    (run_dir / "checkpoints" / "ckpt-00000080.pt").write_bytes(b"")
    (run_dir / "metrics.jsonl").write_text('{"step": 40, "train_loss": 2.0, "val_loss": 2.1}\n')
    before = snapshot(run_dir)
    result = run_process(chargpt_command("train", "--data", str(corpus_path), "--preset", "smoke",
                                         "--run-dir", str(run_dir)))
    assert result.returncode == 2
    [error] = result.stderr.strip().splitlines()
    assert error.startswith(f"chargpt: error: run directory {run_dir} has checkpoints but none loads and "
                            "verifies: ckpt-00000080.pt (")
    assert "; ckpt-00000040.pt (" in error
    assert error.endswith(f"move them out of {run_dir / 'checkpoints'} to start again from step 0, or restore "
                          "a good one")
    # Set aside, not deleted: the same bytes under the names a later start still refuses.
    assert snapshot(run_dir) == {name.replace(".pt", ".pt.damaged"): digest for name, digest in before.items()}


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
