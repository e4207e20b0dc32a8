"""Atomic files and checkpoints: write to a temp file in the same folder, fsync, rename.

Every checkpoint carries the digest of its content (DIGEST_KEY), checked whenever it is loaded or
received from a peer: torch.load reads a file whose tensor bytes were damaged without complaint.
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
# A checkpoint that does not load or verify is renamed to this pattern: kept for a person to look at,
# out of the resume's way.
_SET_ASIDE_GLOB = "ckpt-*.pt.damaged*"
REQUIRED_KEYS = ("model", "optimizer", "step", "config", "model_args", "vocab", "rng")
DIGEST_KEY = "digest"


class UnreadableCheckpoints(ValueError):
    """The run directory has checkpoint files and none of them loads."""


class DamagedCheckpoint(ValueError):
    """A checkpoint whose content does not match the digest it was written with."""


def _content_digest(state: dict) -> str:
    """tensor_tree.digest of everything in state but its digest."""
    from . import tensor_tree

    return tensor_tree.digest({key: value for key, value in state.items() if key != DIGEST_KEY})


def with_digest(state: dict) -> dict:
    """state and, last, the digest of everything else in it."""
    content = {key: value for key, value in state.items() if key != DIGEST_KEY}
    return {**content, DIGEST_KEY: _content_digest(content)}


def verify(state: dict, what: str, warn: Callable[[str], None]) -> dict:
    """state, once its content matches its digest; DamagedCheckpoint names what when it does not.
    A checkpoint written before checkpoints carried digests cannot be checked: warn says so."""
    recorded = state.get(DIGEST_KEY)
    if recorded is None:
        warn(f"{what} carries no digest (written by an earlier version): it cannot be verified")
        return state
    actual = _content_digest(state)
    if actual != recorded:
        raise DamagedCheckpoint(f"{what} is damaged: its content has sha256 {actual[:12]}, it was written with "
                                f"{str(recorded)[:12]}")
    return state


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

    The new file is always kept, even when older attempts left files of later steps. A state that
    carries a digest (a copy received from a peer) is written as it is; otherwise one is added.
    halfway(path), for fault injection, runs when half of the checkpoint is written."""
    path = checkpoint_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    if DIGEST_KEY not in state:
        state = with_digest(state)
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


def load_checkpoint(path: Path, warn: Callable[[str], None] = lambda message: None) -> dict:
    """The checkpoint in path, verified against its digest (DamagedCheckpoint when it does not match)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    return verify(state, f"checkpoint {path}", warn)


def load_latest_checkpoint(run_dir: Path, warn: Callable[[str], None], set_aside: bool = False,
                           host: str = "this host") -> dict | None:
    """The newest checkpoint that loads and verifies; unreadable (torn) and damaged ones are skipped
    with a warning that names host and step, and with set_aside renamed out of the resume's way.

    None when there is no checkpoint file; UnreadableCheckpoints when there are some (set aside ones
    included) and none verifies, since starting again from step 0 would silently throw the run away."""
    failures, moved = [], set()
    for step, path in reversed(list_checkpoints(run_dir)):
        try:
            state = load_checkpoint(path, warn)
        except Exception as error:  # a torn, damaged or foreign file must not stop the resume
            failures.append(f"{path.name} ({_describe(error)})")
            kept = "left in place"
            if set_aside:
                target = _set_aside(path)
                moved.add(target.name)
                kept = f"set aside as {target.name}"
            warn(f"checkpoint {path.name} of step {step} on {host} is unusable ({_describe(error)}); {kept}, "
                 "falling back to the previous one")
            continue
        return state
    folder = Path(run_dir) / CHECKPOINT_DIR
    earlier = [f"{path.name} (set aside earlier)" for path in sorted(folder.glob(_SET_ASIDE_GLOB))
               if path.name not in moved] if folder.is_dir() else []
    if failures or earlier:
        raise UnreadableCheckpoints(
            f"run directory {run_dir} has checkpoints but none loads and verifies: {'; '.join(failures + earlier)}; "
            f"move them out of {folder} to start again from step 0, or restore a good one")
    return None


def _set_aside(path: Path) -> Path:
    """Rename a checkpoint that does not load or verify to ckpt-<step>.pt.damaged (-2, -3 ...)."""
    target, number = path.with_name(f"{path.name}.damaged"), 1
    while target.exists():
        number += 1
        target = path.with_name(f"{path.name}.damaged-{number}")
    try:
        path.rename(target)
    except FileNotFoundError:  # another process of this host set it aside first
        pass
    return target


def _describe(error: Exception) -> str:
    """The error on one line: torch.load's messages can run over several."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"
