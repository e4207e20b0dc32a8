"""Fault injection for reliability tests, set through environment variables.

TRAIN_FAULT_CHECKPOINT_PAUSE="STEP:SECONDS": global rank 0 writes the first half of checkpoint
STEP's temp file, flushes and fsyncs it, pauses SECONDS and then finishes the write: a window in
which a test can kill it mid-write. Only the first attempt of a torchrun agent pauses
(TORCHELASTIC_RESTART_COUNT unset or 0), so the run that resumes after the kill does not pause again.

TRAIN_FAULT_NONFINITE_LOSS="STEP:RANK": the loss of global rank RANK is NaN in step STEP (numbered
from 1), the first time this process runs that step: a test sees the step set aside and the run go
back to its newest checkpoint, after which step STEP runs clean.

TRAIN_FAULT_REFUSE_CHECK="TEXT": `chargpt check` fails as bad input (exit 2) with TEXT in its
message, standing in for a bad setting that only the trainer can see.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

CHECKPOINT_PAUSE_VARIABLE = "TRAIN_FAULT_CHECKPOINT_PAUSE"
REFUSE_CHECK_VARIABLE = "TRAIN_FAULT_REFUSE_CHECK"
NONFINITE_LOSS_VARIABLE = "TRAIN_FAULT_NONFINITE_LOSS"


class FaultInjectionError(ValueError):
    """A fault-injection variable does not parse (the message shows the expected form), or asks
    for a refusal."""


@dataclass(frozen=True)
class CheckpointPause:
    step: int
    seconds: float

    def hold(self, path: Path, log: Callable[[str], None]) -> None:
        log(f"fault injection: pausing {self.seconds:g} s halfway through writing {path.name}")
        time.sleep(self.seconds)


def checkpoint_pause(environ: Mapping[str, str] | None = None) -> CheckpointPause | None:
    """The pause to inject, or None. A bad value raises even when no pause would happen."""
    environ = os.environ if environ is None else environ
    raw = environ.get(CHECKPOINT_PAUSE_VARIABLE, "").strip()
    if not raw:
        return None
    step_text, _, seconds_text = raw.partition(":")
    try:
        step, seconds = int(step_text), float(seconds_text)
    except ValueError:
        step, seconds = 0, 0.0
    if step < 1 or not (0 < seconds < math.inf):
        raise FaultInjectionError(
            f"{CHECKPOINT_PAUSE_VARIABLE}='{raw}' is not STEP:SECONDS with a step of at least 1 and "
            f"a positive number of seconds; write e.g. {CHECKPOINT_PAUSE_VARIABLE}=40:30 or unset it")
    if environ.get("TORCHELASTIC_RESTART_COUNT", "0").strip() not in ("", "0"):
        return None  # a restarted attempt resumes; it must not pause again
    return CheckpointPause(step, seconds)


@dataclass
class NonFiniteLoss:
    step: int
    rank: int
    done: bool = False

    def poisons(self, step: int, rank: int) -> bool:
        """Whether this rank's loss of step is to be NaN (once)."""
        if self.done or (step, rank) != (self.step, self.rank):
            return False
        self.done = True
        return True


def nonfinite_loss(environ: Mapping[str, str] | None = None) -> NonFiniteLoss | None:
    environ = os.environ if environ is None else environ
    raw = environ.get(NONFINITE_LOSS_VARIABLE, "").strip()
    if not raw:
        return None
    step_text, _, rank_text = raw.partition(":")
    if not (step_text.isdigit() and rank_text.isdigit() and int(step_text) >= 1):
        raise FaultInjectionError(f"{NONFINITE_LOSS_VARIABLE}='{raw}' is not STEP:RANK with a step of at least 1 "
                                  f"and a rank; write e.g. {NONFINITE_LOSS_VARIABLE}=30:1 or unset it")
    return NonFiniteLoss(int(step_text), int(rank_text))


def refuse_check(environ: Mapping[str, str] | None = None) -> None:
    """Raise, as bad input, when TRAIN_FAULT_REFUSE_CHECK is set."""
    environ = os.environ if environ is None else environ
    text = environ.get(REFUSE_CHECK_VARIABLE, "").strip()
    if text:
        raise FaultInjectionError(f"{text} (fault injection: {REFUSE_CHECK_VARIABLE} is set; unset it "
                                  "to run the real check)")
