"""When the step lines are written."""

import torch

from chargpt.config import build_config
from chargpt.distributed import DistEnv
from chargpt.train import ProgressLogger


def logged_steps(start_step: int) -> list[int]:
    config = build_config("smoke", {"max_steps": "45", "log_interval": "10", "eval_interval": "25"}, environ={})
    progress = ProgressLogger(config, DistEnv(), torch.device("cpu"), start_step, started=0.0)
    return [step for step in range(start_step + 1, config.max_steps + 1) if progress.should_log(step)]


def test_the_first_step_of_every_start_is_logged_besides_the_intervals_and_the_last():
    assert logged_steps(0) == [1, 10, 20, 25, 30, 40, 45]
    assert logged_steps(17) == [18, 20, 25, 30, 40, 45]
    assert logged_steps(19) == [20, 25, 30, 40, 45]  # the first step is also due anyway: one line
