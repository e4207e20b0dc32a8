"""A step whose gradients hold a NaN or an infinity is never applied. The group goes back to the
newest checkpoint that verifies (train.py writes none from non-finite weights) and trains on from
there; a second such step before a newer checkpoint exists stops the run for good, since training on
would only repeat it.

That stop is recorded in each host's run directory (DIVERGED_FILE) with the experiment it belongs to,
so that no restart (torchrun's, the supervisor's, a reboot's) trains the same experiment again; a
start with other settings (a lower lr under allow_config_change=lr) is another experiment and goes on.
"""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import atomic_write_json

DIVERGED_FILE = "diverged.json"
EXIT_DIVERGED = 4


class NonFiniteStep(Exception):
    """The gradients of this step (numbered from 1) are not finite; local_loss is this rank's loss."""

    def __init__(self, step: int, local_loss):
        super().__init__(f"step {step} has non-finite gradients")
        self.step, self.local_loss = step, local_loss


class Diverged(Exception):
    """The run stopped for good; the message says where and what to change."""


def divergence_message(step: int, where: str, checkpoint_step: int) -> str:
    if checkpoint_step:
        back, fix = (f"the checkpoint of step {checkpoint_step}",
                     f"and allow the change (allow_config_change=lr) to go on from step {checkpoint_step}, or use "
                     "a new run id")
    else:
        back, fix = "step 0", "and start again: other settings are another experiment, which trains"
    return (f"the run diverged: step {step} was not finite ({where}) again after going back to {back}, so it "
            f"stopped for good (exit {EXIT_DIVERGED}); no checkpoint holds a non-finite value. Lower lr (or raise "
            f"warmup_steps) {fix}")


def record_divergence(run_dir: Path, experiment: str, message: str) -> None:
    atomic_write_json(Path(run_dir) / DIVERGED_FILE, {"experiment": experiment, "message": message})


def check_not_diverged(run_dir: Path, experiment: str) -> None:
    """Diverged when this experiment stopped for good in run_dir."""
    try:
        record = json.loads((Path(run_dir) / DIVERGED_FILE).read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as error:
        raise Diverged(f"{Path(run_dir) / DIVERGED_FILE} is unreadable ({error}); it records a run that "
                       "stopped for good: remove it only to train these settings again") from None
    if record.get("experiment") == experiment:
        raise Diverged(record.get("message", "the run diverged"))
