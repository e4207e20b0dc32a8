"""`chargpt check`: the trainer's own checks of a run's inputs, run before anything else."""

from __future__ import annotations

import hashlib
import json
import os
import sys

import pytest

from chargpt.cli import main
from chargpt.config import build_config
from chargpt.model import GPT
from chargpt.model_config import model_args
from chargpt.resume import experiment_id
from conftest import chargpt_command, run_process, snapshot


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("CHARGPT_", "TRAIN_FAULT_")) or name == "LOCAL_RANK":
            monkeypatch.delenv(name)


def check(capsys, *args: str) -> tuple[int, str, str]:
    status = main(["check", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_good_input_prints_one_line(capsys, corpus_path):
    status, out, err = check(capsys, "--data", str(corpus_path), "--preset", "smoke", "--world-size", "3")
    digest = hashlib.sha256(corpus_path.read_bytes()).hexdigest()
    assert (status, err) == (0, "")
    assert out == (f"chargpt: check passed: preset smoke, world size 3, corpus 200,000 characters "
                   f"(sha256 {digest}), starts at step 0\n")


def test_json_holds_the_resolved_config_the_corpus_and_the_resume_step(capsys, monkeypatch, corpus_path):
    monkeypatch.setenv("CHARGPT_MAX_STEPS", "30")
    monkeypatch.setenv("CHARGPT_LR", "0.002")
    status, out, _ = check(capsys, "--data", str(corpus_path), "--preset", "smoke", "--world-size", "2",
                           "--set", "lr=0.003", "--json")
    assert status == 0
    config = build_config("smoke", {"max_steps": "30", "lr": "0.003"}, environ={})
    digest = hashlib.sha256(corpus_path.read_bytes()).hexdigest()
    vocab = len(set(corpus_path.read_text()))
    parameters = GPT(model_args(config, vocab)).num_parameters()
    assert json.loads(out) == {
        "config": config.to_dict(), "corpus_sha256": digest, "corpus_chars": 200_000,
        "world_size": 2, "resume_step": None, "experiment": experiment_id(config, digest),
        "gradient_bytes": 4 * parameters, "memory": json.loads(out)["memory"]}
    assert json.loads(out)["memory"]["host_bytes"] > 0


# Runs chargpt as `python -m chargpt` does, then looks whether torch was imported.
WITHOUT_TORCH = """
import runpy, sys
sys.argv = ["chargpt", *sys.argv[1:]]
try:
    runpy.run_module("chargpt", run_name="__main__")
except SystemExit as stop:
    assert not stop.code, stop.code
assert "torch" not in sys.modules, "chargpt imported torch"
"""


@pytest.mark.parametrize("command", ["check", "--help"])
def test_check_and_help_run_without_torch(corpus_path, command):
    """The preflight runs check on every deployment; importing torch would take most of its time."""
    args = ["check", "--data", str(corpus_path), "--preset", "smoke", "--world-size", "2", "--json"]
    result = run_process([sys.executable, "-c", WITHOUT_TORCH, *(args if command == "check" else ["--help"])])
    assert result.returncode == 0, result.stderr


def test_the_experiment_id_follows_the_corpus_and_the_training_settings_only():
    config = build_config("smoke", {}, environ={})
    same = experiment_id(config, "a" * 64)
    assert same == experiment_id(build_config("smoke", {"eval_interval": "5", "num_threads": "1"}, environ={}),
                                 "a" * 64)  # runtime settings are not the experiment
    assert same != experiment_id(config, "b" * 64)
    assert same != experiment_id(build_config("smoke", {"max_steps": "81"}, environ={}), "a" * 64)
    assert same != experiment_id(build_config("smoke", {"max_steps": "81", "allow_config_change": "max_steps"},
                                              environ={}), "a" * 64)


def test_a_symlinked_corpus_is_followed(capsys, corpus_path, tmp_path):
    link = tmp_path / "input.txt"
    link.symlink_to(corpus_path)
    status, out, _ = check(capsys, "--data", str(link), "--preset", "smoke", "--json")
    assert status == 0
    assert json.loads(out)["corpus_sha256"] == hashlib.sha256(corpus_path.read_bytes()).hexdigest()


@pytest.mark.parametrize("args, environ, expected", [
    (["--preset", "giant"], {}, "unknown preset 'giant'; choose one of: original, cpu, smoke"),
    (["--set", "n_layers=3"], {}, "unknown config key 'n_layers' (from --set n_layers); valid keys: "),
    ([], {"CHARGPT_SPEED": "fast"}, "unknown config key 'speed' (from environment variable CHARGPT_SPEED)"),
    (["--set", "max_steps=lots"], {}, "bad value 'lots' for max_steps (from --set max_steps): expected int"),
    ([], {"CHARGPT_COMPILE": "maybe"}, "bad value 'maybe' for compile (from environment variable CHARGPT_COMPILE)"),
    (["--set", "dropout=1.5"], {}, "dropout=1.5 must be in [0, 1)"),
    (["--set", "max_steps=0"], {}, "max_steps=0 must be at least 1"),
    ([], {"CHARGPT_LR": "nan"}, "lr=nan is not a finite number (from environment variable CHARGPT_LR); set lr "
                                "to a finite number such as 0.001"),
    (["--set", "weight_decay=inf"], {}, "weight_decay=inf is not a finite number (from --set weight_decay)"),
    (["--set", "beta1=-inf"], {}, "beta1=-inf is not a finite number"),
    (["--world-size", "13"], {}, "batch_size=12 is smaller than the world size 13; set batch_size to at "
                                 "least 13"),
    (["--world-size", "0"], {}, "the world size 0 must be at least 1"),
    (["--set", "block_size=20000"], {}, "its validation split has 20000 characters but block_size=20000 "
                                         "needs more than that; use a longer corpus or a smaller block_size"),
    (["--set", "allow_config_change=n_layer"], {}, "allow_config_change names n_layer, which set the model's "
                                                   "shape"),
    (["--set", "max_steps"], {}, "override 'max_steps' is not KEY=VALUE"),
])
def test_bad_input_exits_2_with_one_line(capsys, monkeypatch, corpus_path, args, environ, expected):
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    arguments = ["--data", str(corpus_path), "--preset", "smoke", *args]
    status, out, err = check(capsys, *arguments)
    assert (status, out) == (2, "")
    assert err.startswith("chargpt: error: ") and err.count("\n") == 1 and expected in err, err


@pytest.mark.parametrize("content, expected", [
    (None, "does not exist or is not a file; pass --data PATH to a text file"),
    ("utf-16", "is not UTF-8 text (bad byte at offset 0); convert it to UTF-8"),
    (b"abc\x00def" * 100, "contains NUL bytes"),
])
def test_a_bad_corpus_exits_2_naming_the_file(capsys, tmp_path, content, expected):
    path = tmp_path / "input.txt"
    if content == "utf-16":
        path.write_text("to be or not to be\n" * 100, encoding="utf-16")
    elif content is not None:
        path.write_bytes(content)
    status, _, err = check(capsys, "--data", str(path), "--preset", "smoke")
    assert status == 2 and err.startswith(f"chargpt: error: corpus {path} {expected}"), err


def test_fault_injection_refuses_the_check_as_bad_input(capsys, monkeypatch, corpus_path):
    monkeypatch.setenv("TRAIN_FAULT_REFUSE_CHECK", "a setting only the trainer sees is bad")
    status, out, err = check(capsys, "--data", str(corpus_path), "--preset", "smoke")
    assert (status, out) == (2, "")
    assert err == ("chargpt: error: a setting only the trainer sees is bad (fault injection: "
                   "TRAIN_FAULT_REFUSE_CHECK is set; unset it to run the real check)\n")


# With --run-dir: what train would find there, read only.

@pytest.fixture(scope="module")
def short_run(corpus_path, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("short") / "run"
    result = run_process(chargpt_command("train", "--data", str(corpus_path), "--preset", "smoke",
                                         "--run-dir", str(run_dir), "--set", "max_steps=20",
                                         "--set", "checkpoint_interval=10", "--set", "eval_interval=10"))
    assert result.returncode == 0, result.stderr
    return run_dir


def test_check_reports_the_step_a_run_would_resume_from(capsys, corpus_path, short_run):
    before = snapshot(short_run)
    status, out, _ = check(capsys, "--data", str(corpus_path), "--preset", "smoke", "--run-dir", str(short_run),
                           "--set", "max_steps=30", "--set", "allow_config_change=max_steps", "--json")
    assert status == 0 and json.loads(out)["resume_step"] == 20
    status, out, _ = check(capsys, "--data", str(corpus_path), "--preset", "smoke", "--run-dir", str(short_run),
                           "--set", "max_steps=20", "--set", "log_interval=1", "--set", "device=cpu")
    assert status == 0 and out.endswith(", resumes from step 20\n")
    assert snapshot(short_run) == before


@pytest.mark.parametrize("args, expected", [
    (["--set", "lr=0.001"], "was trained with other settings: lr 0.005 -> 0.001; one run id is one experiment"),
    (["--set", "max_steps=30"], "allow the change explicitly with allow_config_change=max_steps"),
    (["--set", "n_embd=32"], "holds a checkpoint with n_embd=64 but the configuration says n_embd=32"),
    (["--set", "max_steps=10"], "holds a checkpoint of step 20, past max_steps=10"),
])
def test_check_refuses_what_resuming_would_refuse(capsys, corpus_path, short_run, args, expected):
    before = snapshot(short_run)
    status, _, err = check(capsys, "--data", str(corpus_path), "--preset", "smoke", "--run-dir", str(short_run),
                           "--set", "max_steps=20", *args)
    assert status == 2 and err.startswith("chargpt: error: ") and expected in err, err
    assert snapshot(short_run) == before


def test_check_refuses_another_corpus_for_the_run(capsys, corpus_path, short_run, tmp_path):
    other = tmp_path / "other.txt"
    other.write_bytes(corpus_path.read_bytes()[::-1])
    status, _, err = check(capsys, "--data", str(other), "--preset", "smoke", "--run-dir", str(short_run),
                           "--set", "max_steps=20")
    assert status == 2 and f"run directory {short_run} was trained on another corpus (sha256 " in err


def test_the_real_command_line_prints_json_and_warnings_apart(corpus_path, short_run, tmp_path):
    """As the preflight runs it: settings in CHARGPT_<KEY>, JSON on stdout, warnings on stderr."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    for path in (short_run / "checkpoints").iterdir():
        (run_dir / "checkpoints" / path.name).write_bytes(path.read_bytes())
    (run_dir / "checkpoints" / "ckpt-00000030.pt").write_bytes(b"torn")
    result = run_process(chargpt_command("check", "--data", str(corpus_path), "--preset", "smoke",
                                         "--world-size", "2", "--run-dir", str(run_dir), "--json"),
                         CHARGPT_MAX_STEPS="20")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["resume_step"] == 20 and report["config"]["max_steps"] == 20 and report["world_size"] == 2
    assert "checkpoint ckpt-00000030.pt of step 30 on this host is unusable" in result.stderr and "left in place" in result.stderr
