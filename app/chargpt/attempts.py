"""config.json: the history of a run's attempts, one entry appended at every start or resume.

{"attempts": [{"started_at", "world_size", "resumed_from_step", "corpus_sha256", "config"}, ...]}; an
attempt that stopped on purpose (SIGTERM) also has "stopped_at_step", the step its checkpoint holds.
A config.json of the older format (the resolved config alone) becomes the first attempt.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .checkpoint import atomic_write_json
from .config import TrainConfig

CONFIG_FILE = "config.json"


def record_attempt(run_dir: Path, config: TrainConfig, world_size: int, resumed_from_step: int | None,
                   corpus_sha256: str, warn: Callable[[str], None]) -> None:
    """Append this start to run_dir/config.json (atomically: the old history or the new, never a part)."""
    path = Path(run_dir) / CONFIG_FILE
    attempts = read_attempts(path, warn)
    attempts.append(attempt(datetime.now(timezone.utc).isoformat(timespec="seconds"), world_size,
                            resumed_from_step, corpus_sha256, config.to_dict()))
    atomic_write_json(path, {"attempts": attempts})


def record_stop(run_dir: Path, step: int, warn: Callable[[str], None]) -> None:
    """Mark the latest attempt as stopped on purpose after step (its checkpoint is written)."""
    path = Path(run_dir) / CONFIG_FILE
    attempts = read_attempts(path, warn)
    if attempts:
        attempts[-1]["stopped_at_step"] = step
        atomic_write_json(path, {"attempts": attempts})


def attempt(started_at: str | None, world_size: int | None, resumed_from_step: int | None,
            corpus_sha256: str | None, config: dict) -> dict:
    return {"started_at": started_at, "world_size": world_size, "resumed_from_step": resumed_from_step,
            "corpus_sha256": corpus_sha256, "config": config}


def read_attempts(path: Path, warn: Callable[[str], None]) -> list[dict]:
    """The attempts recorded in path, oldest first; [] when there is none."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        warn(f"{path} is unreadable ({error}); starting a new history of attempts")
        return []
    if isinstance(content, dict) and isinstance(content.get("attempts"), list):
        return content["attempts"]
    if isinstance(content, dict):  # the older format: the config of the one attempt it knew
        return [attempt(None, None, None, None, content)]
    warn(f"{path} holds no history of attempts; starting a new one")
    return []
