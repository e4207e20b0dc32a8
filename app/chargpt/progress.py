"""This host's progress file, <run dir>/progress.json: what `playbooks/status.yml` reads on every
host instead of the logs. The first process of each host writes it at every step line and when
training ends; `starts` counts the times training started on this host in this run directory (a
restart after a fault or a planned change adds one)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from . import checkpoint

PROGRESS_FILE = "progress.json"


def previous_starts(run_dir: Path) -> int:
    """How often training started here before, by the progress file (0 without a readable one)."""
    try:
        starts = json.loads((run_dir / PROGRESS_FILE).read_text()).get("starts", 0)
    except (OSError, ValueError, AttributeError):
        return 0
    return starts if isinstance(starts, int) and starts >= 0 else 0


def write_progress(run_dir: Path, state: str, step: int, max_steps: int, loss: float, tokens_per_s: float,
                   eta_s: float, world_size: int, starts: int) -> None:
    """state is "training", "stopped", "diverged" or "finished"; checkpoint is the newest on this host, if any."""
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = checkpoint.list_checkpoints(run_dir)
    record = {"state": state, "step": step, "max_steps": max_steps,
              "loss": round(loss, 4) if math.isfinite(loss) else None, "tokens_per_s": round(tokens_per_s, 1),
              "eta_s": round(eta_s, 1), "world_size": world_size, "starts": starts,
              "checkpoint": checkpoints[-1][1].name if checkpoints else None, "updated_at": round(time.time(), 1)}
    checkpoint.atomic_write_json(run_dir / PROGRESS_FILE, record)
