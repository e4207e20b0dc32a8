import os
import re

import pytest
import torch

from chargpt import checkpoint


def state(step: int) -> dict:
    return {"model": {"w": torch.full((3,), float(step))}, "optimizer": {}, "step": step,
            "config": {}, "model_args": {}, "vocab": ["a"], "rng": []}


def test_keeps_the_last_k_and_leaves_no_temp_files(tmp_path):
    for step in (10, 20, 30, 40):
        checkpoint.save_checkpoint(tmp_path, step, state(step), keep=2)
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["ckpt-00000030.pt", "ckpt-00000040.pt"]
    loaded = checkpoint.load_latest_checkpoint(tmp_path, warn=pytest.fail)
    assert loaded["step"] == 40 and torch.equal(loaded["model"]["w"], torch.full((3,), 40.0))


def test_torn_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    for step in (10, 20):
        checkpoint.save_checkpoint(tmp_path, step, state(step), keep=3)
    newest = checkpoint.checkpoint_path(tmp_path, 20)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # torn in the middle
    checkpoint.checkpoint_path(tmp_path, 30).write_bytes(b"")  # and an empty one after it
    warnings = []
    loaded = checkpoint.load_latest_checkpoint(tmp_path, warn=warnings.append)
    assert loaded["step"] == 10
    assert len(warnings) == 2 and "checkpoint ckpt-00000030.pt of step 30 on this host is unusable" in warnings[0]
    assert "left in place" in warnings[0] and newest.exists()  # only a trainer sets files aside


def test_a_checkpoint_without_required_keys_is_skipped(tmp_path):
    checkpoint.save_checkpoint(tmp_path, 10, state(10), keep=3)
    checkpoint.atomic_save_torch(checkpoint.checkpoint_path(tmp_path, 20), {"step": 20})
    warnings = []
    assert checkpoint.load_latest_checkpoint(tmp_path, warn=warnings.append)["step"] == 10
    assert "missing model" in warnings[0]


def test_no_checkpoint_means_a_fresh_start(tmp_path):
    assert checkpoint.load_latest_checkpoint(tmp_path / "absent", warn=pytest.fail) is None


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "model.pt"
    checkpoint.atomic_write_bytes(target, b"old")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.pt"]


def test_stale_temp_files_are_removed(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / ".ckpt-00000010.pt.123.tmp").write_bytes(b"partial")
    (folder / "ckpt-00000010.pt").write_bytes(b"keep")
    checkpoint.remove_stale_temp_files(tmp_path)
    assert os.listdir(folder) == ["ckpt-00000010.pt"]


def test_a_checkpoint_from_before_the_activation_setting_counts_as_gelu(tmp_path):
    from chargpt.config import build_config
    from chargpt.data import CharTokenizer, Corpus
    from chargpt.model_config import model_args
    from chargpt.resume import ResumeError, find_resume_state

    tokenizer = CharTokenizer(["a", "b"])
    corpus = Corpus(tokenizer, text="", train_chars=0, sha256="0" * 64)
    config = build_config("smoke", environ={})
    saved_args = model_args(config, tokenizer.vocab_size).__dict__
    del saved_args["activation"]  # as written before the setting existed
    checkpoint.save_checkpoint(tmp_path, 10, dict(state(10), model_args=saved_args, vocab=tokenizer.chars), keep=1)
    with pytest.raises(ResumeError, match="activation=gelu but the configuration says activation=relu"):
        find_resume_state(tmp_path, config, corpus, warn=pytest.fail)
    gelu = build_config("smoke", {"activation": "gelu"}, environ={})
    assert find_resume_state(tmp_path, gelu, corpus, warn=pytest.fail).state["step"] == 10


def test_rotation_keeps_the_new_checkpoint_among_stale_later_ones(tmp_path):
    """A run that started again from step 0 while files of later steps (unreadable ones) remained."""
    for step in (60, 80):
        checkpoint.checkpoint_path(tmp_path, step).parent.mkdir(exist_ok=True)
        checkpoint.checkpoint_path(tmp_path, step).write_bytes(b"torn")
    checkpoint.save_checkpoint(tmp_path, 20, state(20), keep=1)
    assert [step for step, _ in checkpoint.list_checkpoints(tmp_path)] == [20]
    checkpoint.checkpoint_path(tmp_path, 80).write_bytes(b"torn")
    checkpoint.save_checkpoint(tmp_path, 40, state(40), keep=2)
    assert [step for step, _ in checkpoint.list_checkpoints(tmp_path)] == [40, 80]
    assert checkpoint.load_checkpoint(checkpoint.checkpoint_path(tmp_path, 40))["step"] == 40


def test_checkpoints_that_all_fail_to_load_are_refused_and_kept(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "ckpt-00000010.pt").write_bytes(b"")
    (folder / "ckpt-00000020.pt").write_bytes(b"not a checkpoint")
    warnings = []
    with pytest.raises(checkpoint.UnreadableCheckpoints) as caught:
        checkpoint.load_latest_checkpoint(tmp_path, warn=warnings.append)
    message = str(caught.value)
    assert message.startswith(f"run directory {tmp_path} has checkpoints but none loads and verifies: "
                              "ckpt-00000020.pt (")
    assert "; ckpt-00000010.pt (" in message and "\n" not in message
    assert message.endswith(f"move them out of {folder} to start again from step 0, or restore a good one")
    assert len(warnings) == 2
    assert sorted(os.listdir(folder)) == ["ckpt-00000010.pt", "ckpt-00000020.pt"]


def test_rotation_with_fewer_files_than_kept_deletes_nothing(tmp_path):
    for step in (10, 20, 30, 40):
        checkpoint.save_checkpoint(tmp_path, step, state(step), keep=5)
    assert [step for step, _ in checkpoint.list_checkpoints(tmp_path)] == [10, 20, 30, 40]


def damage_a_tensor(path) -> None:
    """Flip one byte of the stored weights: the zip structure and the size stay as they were."""
    data = bytearray(path.read_bytes())
    offset = data.index(torch.full((3,), 20.0).numpy().tobytes())
    data[offset + 1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_tensor_loads_with_torch_but_fails_its_digest_and_is_set_aside(tmp_path):
    for step in (10, 20):
        checkpoint.save_checkpoint(tmp_path, step, state(step), keep=3)
    newest = checkpoint.checkpoint_path(tmp_path, 20)
    damage_a_tensor(newest)
    assert torch.load(newest, weights_only=True)["step"] == 20  # torch alone does not notice

    with pytest.raises(checkpoint.DamagedCheckpoint, match=f"checkpoint {newest} is damaged: its content has sha256"):
        checkpoint.load_checkpoint(newest)
    warnings = []
    loaded = checkpoint.load_latest_checkpoint(tmp_path, warn=warnings.append, set_aside=True, host="node-1")
    assert loaded["step"] == 10
    [warning] = warnings
    assert re.fullmatch(f"checkpoint ckpt-00000020.pt of step 20 on node-1 is unusable \\(DamagedCheckpoint: "
                        f"checkpoint {re.escape(str(newest))} is damaged: its content has sha256 [0-9a-f]{{12}}, it "
                        "was written with [0-9a-f]{12}\\); set aside as ckpt-00000020.pt.damaged, falling back to "
                        "the previous one", warning), warning
    assert sorted(path.name for path in newest.parent.iterdir()) == ["ckpt-00000010.pt", "ckpt-00000020.pt.damaged"]


def test_set_aside_checkpoints_still_refuse_a_silent_fresh_start(tmp_path):
    checkpoint.save_checkpoint(tmp_path, 20, state(20), keep=3)
    damage_a_tensor(checkpoint.checkpoint_path(tmp_path, 20))
    with pytest.raises(checkpoint.UnreadableCheckpoints):
        checkpoint.load_latest_checkpoint(tmp_path, warn=lambda text: None, set_aside=True)
    # The next start finds only the file set aside: still no fresh start from step 0.
    with pytest.raises(checkpoint.UnreadableCheckpoints, match=r"ckpt-00000020.pt.damaged \(set aside earlier\)"):
        checkpoint.load_latest_checkpoint(tmp_path, warn=pytest.fail)


def test_a_checkpoint_without_a_digest_loads_with_a_warning(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    checkpoint.atomic_save_torch(checkpoint.checkpoint_path(tmp_path, 10), state(10))
    warnings = []
    assert checkpoint.load_latest_checkpoint(tmp_path, warn=warnings.append)["step"] == 10
    assert warnings == [f"checkpoint {checkpoint.checkpoint_path(tmp_path, 10)} carries no digest (written by an "
                        "earlier version): it cannot be verified"]


def test_the_digest_sees_every_value_and_not_the_storage():
    from chargpt import tensor_tree

    base = state(20)
    assert tensor_tree.digest(base) == tensor_tree.digest(tensor_tree.unpack(tensor_tree.pack(base)))
    for changed in ({**base, "step": 21}, {**base, "model": {"w": torch.full((3,), 20.0, dtype=torch.float64)}},
                    {**base, "model": {"w": torch.full((1, 3), 20.0)}}, {**base, "vocab": ["b"]}):
        assert tensor_tree.digest(changed) != tensor_tree.digest(base)
