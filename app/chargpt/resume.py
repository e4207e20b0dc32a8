"""Resuming a run: the newest checkpoint, and the checks that keep one run id one experiment.

A checkpoint continues only on the corpus it was trained on (its sha256), with the model shape and
the training settings it was written with. Settings that only change how the run is watched or
executed (config.RUNTIME_KEYS) may change; others only when allow_config_change names them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import checkpoint
from .config import RUNTIME_KEYS, TrainConfig
from .data import Corpus
from .divergence import check_not_diverged
from .model_config import GPTConfig, model_args


def experiment_id(config: TrainConfig, corpus_sha256: str) -> str:
    """A short digest of what a run learns from: the corpus and every setting but the runtime ones.
    Two starts with the same digest are the same experiment (summary.json and `chargpt check --json`
    carry it, so that a deployment can tell a finished run of this experiment from another)."""
    settings = {key: value for key, value in config.to_dict().items() if key not in RUNTIME_KEYS}
    text = json.dumps({"corpus_sha256": corpus_sha256, "settings": settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ResumeError(ValueError):
    """The run directory holds checkpoints that this configuration cannot continue."""


@dataclass
class Resume:
    """What this host's run directory holds, found before the process group existed."""
    state: dict | None

    @property
    def step(self) -> int | None:
        return None if self.state is None else self.state["step"]


def find_resume_state(run_dir: Path, config: TrainConfig, corpus: Corpus, warn: Callable[[str], None],
                      set_aside: bool = False, host: str = "this host") -> Resume:
    """Before any distributed setup: the newest valid checkpoint of this host, checked against us.

    warn gets the skipped (torn or damaged) checkpoints of host, which set_aside renames out of the
    way; without it this only reads (`chargpt check --run-dir`)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ResumeError(f"run directory {run_dir} exists and is not a directory; pick another --run-dir")
    check_not_diverged(run_dir, experiment_id(config, corpus.sha256))
    try:
        state = checkpoint.load_latest_checkpoint(run_dir, warn, set_aside, host)
    except checkpoint.UnreadableCheckpoints as error:
        raise ResumeError(str(error)) from None
    if state is None:
        return Resume(None)
    check_resumable(run_dir, state, config, corpus, warn)
    return Resume(state)


def check_resumable(run_dir: Path, state: dict, config: TrainConfig, corpus: Corpus,
                    warn: Callable[[str], None]) -> None:
    """Raise ResumeError unless this configuration may continue state (found in, or sent for, run_dir)."""
    if state["step"] > config.max_steps:
        raise ResumeError(f"run directory {run_dir} holds a checkpoint of step {state['step']}, past "
                          f"max_steps={config.max_steps}; raise max_steps or use a new --run-dir")
    check_same_corpus(run_dir, state, corpus)
    check_same_shape(run_dir, state, config, corpus.tokenizer.vocab_size)
    allowed = check_same_settings(run_dir, state, config)
    if allowed:
        warn(f"resuming step {state['step']} with changed settings that allow_config_change accepts: "
             f"{describe_changes(allowed)}")


def check_same_corpus(run_dir: Path, state: dict, corpus: Corpus) -> None:
    saved = state.get("corpus_sha256")
    if saved is None:  # a checkpoint from before the hash was stored: its vocabulary must match
        if state["vocab"] != corpus.tokenizer.chars:
            raise ResumeError(f"run directory {run_dir} holds a checkpoint trained on another corpus "
                              "(its vocabulary differs); use a new --run-dir or the same --data")
    elif saved != corpus.sha256:
        raise ResumeError(f"run directory {run_dir} was trained on another corpus (sha256 {saved[:12]}, "
                          f"this one is {corpus.sha256[:12]}); one run id is one experiment: use a new run "
                          "id (a new --run-dir) for this corpus, or pass the original corpus")


def check_same_shape(run_dir: Path, state: dict, config: TrainConfig, vocab_size: int) -> None:
    expected = model_args(config, vocab_size).__dict__
    # Through GPTConfig, so that a setting the checkpoint predates counts with its old default.
    saved = GPTConfig(**state["model_args"]).__dict__
    for key, value in saved.items():
        if expected.get(key) != value and key != "dropout":
            raise ResumeError(f"run directory {run_dir} holds a checkpoint with {key}={value} but the "
                              f"configuration says {key}={expected.get(key)}; use a new --run-dir or "
                              "the checkpoint's settings")


def check_same_settings(run_dir: Path, state: dict, config: TrainConfig) -> dict[str, tuple]:
    """Refuse changed training settings that allow_config_change does not name; return the others."""
    changed = changed_settings(state["config"], config)
    refused = {key: change for key, change in changed.items() if key not in config.allowed_changes}
    if refused:
        keys = ",".join(refused)
        raise ResumeError(f"run directory {run_dir} was trained with other settings: {describe_changes(refused)}; "
                          "one run id is one experiment: use a new run id (a new --run-dir) for these "
                          f"settings, or allow the change explicitly with allow_config_change={keys} "
                          f"(CHARGPT_ALLOW_CONFIG_CHANGE={keys})")
    return changed


def changed_settings(saved: dict, config: TrainConfig) -> dict[str, tuple]:
    """{key: (checkpoint's value, ours)} of the training settings that differ.

    Keys the checkpoint predates are not compared: it did not record them."""
    return {key: (saved[key], value) for key, value in config.to_dict().items()
            if key in saved and key not in RUNTIME_KEYS and saved[key] != value}


def describe_changes(changes: dict[str, tuple]) -> str:
    return ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())
