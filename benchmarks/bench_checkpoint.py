"""What keeping the run on every host costs per checkpoint (not a test: it prints figures).

N processes of the `cpu` preset form a Gloo group over 127.0.0.1, each with a run directory of its
own (N hosts with their own disks, sharing this machine's disk: a worst case for parallel writes).
Two layouts alternate, in one run:
- "one host writes": only rank 0 is its host's first process (LOCAL_RANK 0), so only it writes,
  which is what the trainer did before every host kept the run;
- "every host writes": every rank is its host's first process and writes its own copy.
Per checkpoint, two figures:
- what it costs the run: the step after it less the median step after no checkpoint. Every step
  logs (log_interval 1), and rank 0's step line times the step from the end of the line before, so
  the step after a checkpoint holds rank 0's save and its wait, at that step's all-reduce, for the
  slowest host to finish writing; this is the headline;
- the slowest host's write: the most that any host logged for its save (the RNG states and
  metrics gathered from the ranks included), at the trainer's 10 ms resolution.
The last step's checkpoint is left out: no step follows it.

    python benchmarks/bench_checkpoint.py --data data/input.txt [--hosts 2 3] [--trials 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_LINE = re.compile(r"checkpoint ckpt-(\d+)\.pt written on this host in ([0-9.]+) s")
STEP_LINE = re.compile(r"\[chargpt\] step (\d+)/\d+ .*\| ([\d,]+) tokens/s")
STEPS, CHECKPOINT_INTERVAL = 60, 10
OVERRIDES = {"max_steps": STEPS, "checkpoint_interval": CHECKPOINT_INTERVAL, "eval_interval": STEPS,
             "eval_batches": 1, "log_interval": 1, "keep_checkpoints": 2, "num_threads": 1, "sample_chars": 1}


@dataclass
class Checkpoint:
    cost: float  # seconds the step after it took beyond the median step after no checkpoint
    slowest_write: float  # seconds of the slowest host's save, as that host logged it


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tokens_per_step(run_dir: Path) -> int:
    """The global batch in tokens, from the config the run recorded."""
    config = json.loads((run_dir / "config.json").read_text())["attempts"][-1]["config"]
    return config["batch_size"] * config["block_size"]


def measure(logs: list[str], tokens: int) -> list[Checkpoint]:
    """The checkpoints of one run from every rank's output (rank 0's first) and its tokens per step."""
    # With log_interval 1 each step line's tokens/s covers that one step.
    seconds = {int(step): tokens / float(rate.replace(",", "")) for step, rate in STEP_LINE.findall(logs[0])}
    writes: dict[int, list[float]] = {}
    for log in logs:
        for step, took in CHECKPOINT_LINE.findall(log):
            writes.setdefault(int(step), []).append(float(took))
    ordinary = statistics.median(took for step, took in seconds.items() if step - 1 not in writes)
    return [Checkpoint(seconds[step + 1] - ordinary, max(took)) for step, took in sorted(writes.items())
            if step + 1 in seconds]


def trial(data: Path, hosts: int, every_host_writes: bool, root: Path) -> list[Checkpoint]:
    port = free_port()
    processes = []
    for rank in range(hosts):
        env = {key: value for key, value in os.environ.items() if not key.startswith("CHARGPT_")}
        env.update(RANK=str(rank), WORLD_SIZE=str(hosts), LOCAL_RANK="0" if every_host_writes or rank == 0 else "1",
                   LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   PYTHONPATH=str(REPO_ROOT / "app"))
        env.pop("GLOO_SOCKET_IFNAME", None)
        command = [sys.executable, "-m", "chargpt", "train", "--data", str(data), "--preset", "cpu",
                   "--run-dir", str(root / f"host{rank}")]
        for key, value in OVERRIDES.items():
            command += ["--set", f"{key}={value}"]
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True))
    logs = [process.communicate()[0] for process in processes]
    for rank, (process, log) in enumerate(zip(processes, logs)):
        if process.returncode != 0:
            sys.exit(f"rank {rank} of {hosts} exited {process.returncode}:\n{log[-3000:]}")
    return measure(logs, tokens_per_step(root / "host0"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "data" / "input.txt")
    parser.add_argument("--hosts", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    layouts = {"one host writes": False, "every host writes": True}
    print(f"cpu preset, {STEPS} steps, a checkpoint every {CHECKPOINT_INTERVAL}; per checkpoint, seconds it adds "
          "to the run (the step after it less the median step) and, in brackets, the slowest host's write")
    for hosts in args.hosts:
        measured: dict[str, list[Checkpoint]] = {name: [] for name in layouts}
        for number in range(args.trials):
            for name, every_host_writes in layouts.items():
                with tempfile.TemporaryDirectory() as root:
                    checkpoints = trial(args.data, hosts, every_host_writes, Path(root))
                measured[name] += checkpoints
                print(f"  {hosts} hosts, trial {number + 1}, {name}: "
                      + ", ".join(f"{point.cost:.3f} ({point.slowest_write:.2f})" for point in checkpoints),
                      flush=True)
        figures = [f"{name} {statistics.median(point.cost for point in points):.3f} s "
                   f"(slowest host's write {statistics.median(point.slowest_write for point in points):.2f} s)"
                   for name, points in measured.items()]
        print(f"{hosts} hosts, median per checkpoint: " + "; ".join(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
