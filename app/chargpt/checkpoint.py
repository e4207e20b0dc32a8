"""Atomic files and checkpoints: write to a temp file in the same folder, fsync, rename.

torch is imported only where a checkpoint is saved or loaded, so that `chargpt check` runs without it."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Callable

CHECKPOINT_DIR = "checkpoints"
_CHECKPOINT_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")
_TEMP_SUFFIX = ".tmp"
REQUIRED_KEYS = ("model", "optimizer", "step", "config", "model_args", "vocab", "rng")


class UnreadableCheckpoints(ValueError):
    """The run directory has checkpoint files and none of them loads."""


def atomic_write_bytes(path: Path, data: bytes, halfway: Callable[[], None] | None = None) -> None:
    """Replace path with data so that readers see the old or the new file, never a part.

    halfway (fault injection) runs once the first half of data is on disk in the temp file."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}{_TEMP_SUFFIX}")
    try:
        with open(temp, "wb") as handle:
            if halfway is not None:
                middle = len(data) // 2
                handle.write(data[:middle])
                handle.flush()
                os.fsync(handle.fileno())
                halfway()
                data = data[middle:]
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_save_torch(path: Path, obj, halfway: Callable[[], None] | None = None) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getbuffer(), halfway)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"ckpt-{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoints in run_dir, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _CHECKPOINT_NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(run_dir: Path, step: int, state: dict, keep: int,
                    halfway: Callable[[Path], None] | None = None) -> Path:
    """Write the checkpoint for step atomically, then delete the oldest so that keep remain.

    The new file is always kept, even when older attempts left files of later steps.
    halfway(path), for fault injection, runs when half of the checkpoint is written."""
    path = checkpoint_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_torch(path, state, None if halfway is None else lambda: halfway(path))
    others = [old for _, old in list_checkpoints(run_dir) if old != path]
    for old in others[:max(0, len(others) - (keep - 1))]:
        old.unlink(missing_ok=True)
    return path


def remove_stale_temp_files(run_dir: Path) -> None:
    """Temp files left by a writer that was killed mid-write."""
    for folder in (Path(run_dir), Path(run_dir) / CHECKPOINT_DIR):
        if folder.is_dir():
            for path in folder.glob(f".*{_TEMP_SUFFIX}"):
                path.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    return state


def load_latest_checkpoint(run_dir: Path, warn: Callable[[str], None]) -> dict | None:
    """The newest checkpoint that loads; unreadable (torn) ones are skipped with a warning.

    None when there is no checkpoint file; UnreadableCheckpoints when there are some and none
    loads, since starting again from step 0 would silently throw the run away."""
    failures = []
    for step, path in reversed(list_checkpoints(run_dir)):
        try:
            state = load_checkpoint(path)
        except Exception as error:  # a torn or foreign file must not stop the resume
            failures.append(f"{path.name} ({_describe(error)})")
            warn(f"checkpoint {path} is unreadable ({_describe(error)}); falling back to the previous one")
            continue
        return state
    if failures:
        raise UnreadableCheckpoints(
            f"run directory {run_dir} has checkpoints but none loads: {'; '.join(failures)}; move them "
            f"out of {Path(run_dir) / CHECKPOINT_DIR} to start again from step 0, or restore a good one")
    return None


def _describe(error: Exception) -> str:
    """The error on one line: torch.load's messages can run over several."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"
