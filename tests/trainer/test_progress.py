"""When the step lines are written, and each host's progress file."""

import json
import time

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


def test_the_first_process_of_each_host_writes_its_progress_file(tmp_path):
    config = build_config("smoke", {"max_steps": "45"}, environ={})
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "ckpt-00000040.pt").write_bytes(b"")
    (tmp_path / "checkpoints" / "ckpt-00000020.pt").write_bytes(b"")
    progress = ProgressLogger(config, DistEnv(), torch.device("cpu"), 0, time.perf_counter(), tmp_path)
    for loss in (2.0, 3.0):
        progress.record(torch.tensor(loss))
    progress.log(2)
    written = json.loads((tmp_path / "progress.json").read_text())
    assert written["state"] == "training" and written["step"] == 2 and written["max_steps"] == 45
    assert written["loss"] == 2.5 and written["tokens_per_s"] > 0 and written["eta_s"] >= 0
    assert written["checkpoint"] == "ckpt-00000040.pt" and written["world_size"] == 1
    assert abs(written["updated_at"] - time.time()) < 60
    assert written["starts"] == 1
    progress.write(45, "finished")
    assert json.loads((tmp_path / "progress.json").read_text())["state"] == "finished"
    again = ProgressLogger(config, DistEnv(), torch.device("cpu"), 40, time.perf_counter(), tmp_path)
    again.write(41, "training")
    assert json.loads((tmp_path / "progress.json").read_text())["starts"] == 2, "a restart counts one more start"


def test_other_processes_of_a_host_write_no_progress_file(tmp_path):
    config = build_config("smoke", environ={})
    progress = ProgressLogger(config, DistEnv(rank=1, local_rank=1, world_size=2, local_world_size=2),
                              torch.device("cpu"), 0, time.perf_counter(), tmp_path)
    progress.write(1, "training")
    assert not (tmp_path / "progress.json").exists()
