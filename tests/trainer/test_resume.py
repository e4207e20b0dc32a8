"""One run id is one experiment: what resuming a run directory accepts and what it refuses."""

from __future__ import annotations

import pytest

from chargpt import checkpoint
from chargpt.config import RUNTIME_KEYS, build_config
from chargpt.data import load_corpus
from chargpt.model_config import model_args
from chargpt.resume import ResumeError, find_resume_state

TEXT = "to be, or not to be: that is the question.\n" * 40


def write_corpus(path, text: str = TEXT):
    path.write_text(text, encoding="utf-8")
    return load_corpus(path, block_size=32, val_fraction=0.1)


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "corpus.txt")


def save(run_dir, step: int, trained_with, corpus, **changes) -> None:
    """A checkpoint as the trainer writes it (without weights: the checks do not load them)."""
    state = {"model": {}, "optimizer": {}, "step": step, "config": trained_with.to_dict(),
             "model_args": model_args(trained_with, corpus.tokenizer.vocab_size).__dict__,
             "vocab": corpus.tokenizer.chars, "corpus_sha256": corpus.sha256, "rng": [], "world_size": 2}
    state.update(changes)
    checkpoint.save_checkpoint(run_dir, step, state, keep=3)


def smoke(**overrides: str):
    return build_config("smoke", overrides, environ={})


def test_the_same_corpus_and_settings_resume(tmp_path, corpus):
    save(tmp_path / "run", 40, smoke(), corpus)
    assert find_resume_state(tmp_path / "run", smoke(), corpus, warn=pytest.fail).step == 40


def test_an_empty_run_directory_starts_at_step_0(tmp_path, corpus):
    assert find_resume_state(tmp_path / "absent", smoke(), corpus, warn=pytest.fail).step is None


def test_another_corpus_is_refused_naming_both_hashes(tmp_path, corpus):
    run_dir = tmp_path / "run"
    save(run_dir, 40, smoke(), corpus)
    other = write_corpus(tmp_path / "other.txt", TEXT.replace("question", "quite a ton"))
    assert other.tokenizer.chars == corpus.tokenizer.chars  # the vocabulary alone would not tell
    with pytest.raises(ResumeError) as caught:
        find_resume_state(run_dir, smoke(), other, warn=pytest.fail)
    assert str(caught.value) == (
        f"run directory {run_dir} was trained on another corpus (sha256 {corpus.sha256[:12]}, this one is "
        f"{other.sha256[:12]}); one run id is one experiment: use a new run id (a new --run-dir) for this "
        "corpus, or pass the original corpus")


def test_a_checkpoint_without_a_corpus_hash_is_checked_by_its_vocabulary(tmp_path, corpus):
    run_dir = tmp_path / "run"
    save(run_dir, 40, smoke(), corpus, corpus_sha256=None)
    same_vocabulary = write_corpus(tmp_path / "same.txt", TEXT[::-1])
    assert find_resume_state(run_dir, smoke(), same_vocabulary, warn=pytest.fail).step == 40
    other_vocabulary = write_corpus(tmp_path / "other.txt", TEXT.upper())
    with pytest.raises(ResumeError, match="trained on another corpus \\(its vocabulary differs\\)"):
        find_resume_state(run_dir, smoke(), other_vocabulary, warn=pytest.fail)


def test_a_checkpoint_without_a_corpus_hash_still_compares_its_settings(tmp_path, corpus):
    run_dir = tmp_path / "run"
    save(run_dir, 40, smoke(), corpus, corpus_sha256=None)
    with pytest.raises(ResumeError, match="was trained with other settings: seed 1337 -> 7;"):
        find_resume_state(run_dir, smoke(seed="7"), corpus, warn=pytest.fail)


def test_changed_training_settings_are_refused_naming_each(tmp_path, corpus):
    run_dir = tmp_path / "run"
    save(run_dir, 40, smoke(), corpus)
    with pytest.raises(ResumeError) as caught:
        find_resume_state(run_dir, smoke(max_steps="120", lr="0.002", lr_schedule="constant"), corpus,
                          warn=pytest.fail)
    assert str(caught.value) == (
        f"run directory {run_dir} was trained with other settings: max_steps 80 -> 120, lr 0.005 -> 0.002, "
        "lr_schedule 'cosine' -> 'constant'; one run id is one experiment: use a new run id (a new --run-dir) "
        "for these settings, or allow the change explicitly with allow_config_change=max_steps,lr,lr_schedule "
        "(CHARGPT_ALLOW_CONFIG_CHANGE=max_steps,lr,lr_schedule)")


def test_a_change_that_allow_config_change_names_is_accepted_and_said(tmp_path, corpus):
    run_dir = tmp_path / "run"
    save(run_dir, 40, smoke(), corpus)
    warnings = []
    longer = smoke(max_steps="120", dropout="0.1", allow_config_change="max_steps,dropout")
    assert find_resume_state(run_dir, longer, corpus, warn=warnings.append).step == 40
    assert warnings == ["resuming step 40 with changed settings that allow_config_change accepts: "
                        "dropout 0.0 -> 0.1, max_steps 80 -> 120"]
    with pytest.raises(ResumeError, match="other settings: seed 1337 -> 3;"):
        find_resume_state(run_dir, smoke(max_steps="120", seed="3", allow_config_change="max_steps"), corpus,
                          warn=pytest.fail)


def test_settings_of_how_the_run_is_watched_or_run_change_freely(tmp_path, corpus):
    run_dir = tmp_path / "run"
    save(run_dir, 40, smoke(), corpus)
    runtime = dict(log_interval="3", eval_interval="7", eval_batches="2", checkpoint_interval="9",
                   keep_checkpoints="5", sample_chars="50", sample_temperature="0.7", sample_top_k="4",
                   device="cpu", compile="true", num_threads="1", dist_timeout_s="30", dead_peer_timeout_s="20",
                   allow_config_change="max_steps")
    assert set(runtime) == RUNTIME_KEYS
    assert find_resume_state(run_dir, smoke(**runtime), corpus, warn=pytest.fail).step == 40


def test_settings_a_checkpoint_predates_are_not_compared(tmp_path, corpus):
    run_dir = tmp_path / "run"
    saved = smoke().to_dict()
    del saved["micro_batch_size"], saved["allow_config_change"]
    save(run_dir, 40, smoke(), corpus, config=saved)
    assert find_resume_state(run_dir, smoke(micro_batch_size="2"), corpus, warn=pytest.fail).step == 40


def test_checkpoints_that_all_fail_to_load_are_refused(tmp_path, corpus):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "ckpt-00000040.pt").write_bytes(b"torn")
    with pytest.raises(ResumeError, match="has checkpoints but none loads and verifies: ckpt-00000040.pt \\(.*\\); move them "
                                          "out of .* to start again from step 0, or restore a good one"):
        find_resume_state(tmp_path / "run", smoke(), corpus, warn=lambda text: None)
    assert (folder / "ckpt-00000040.pt").read_bytes() == b"torn"


def test_an_unreadable_checkpoint_newer_than_a_readable_one_is_skipped(tmp_path, corpus):
    run_dir = tmp_path / "run"
    save(run_dir, 40, smoke(), corpus)
    checkpoint.checkpoint_path(run_dir, 60).write_bytes(b"torn")
    warnings = []
    assert find_resume_state(run_dir, smoke(), corpus, warn=warnings.append).step == 40
    assert len(warnings) == 1 and "checkpoint ckpt-00000060.pt of step 60 on this host is unusable" in warnings[0]
