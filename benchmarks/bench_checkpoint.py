"""What keeping the run on every host costs per checkpoint (not a test: it prints figures).

N processes of the `cpu` preset form a Gloo group over 127.0.0.1, each with a run directory of its
own (N hosts with their own disks, sharing this machine's disk: a worst case for parallel writes).
Two layouts alternate, in one run:
- "one host writes": only rank 0 is its host's first process (LOCAL_RANK 0), so only it writes,
  which is what the trainer did before every host kept the run;
- "every host writes": every rank is its host's first process and writes its own copy.
Per checkpoint, rank 0 logs the time from the start of the save (the RNG states and metrics
gathered from the ranks included) to its file being renamed into place; the other ranks wait for
it at the next step's all-reduce, so it is what one checkpoint adds to the run.

    python benchmarks/bench_checkpoint.py --data data/input.txt [--hosts 2 3] [--trials 3]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_LINE = re.compile(r"checkpoint ckpt-\d+\.pt written on this host in ([0-9.]+) s")
STEPS, CHECKPOINT_INTERVAL = 60, 10
OVERRIDES = {"max_steps": STEPS, "checkpoint_interval": CHECKPOINT_INTERVAL, "eval_interval": STEPS,
             "eval_batches": 1, "log_interval": STEPS, "keep_checkpoints": 2, "num_threads": 1, "sample_chars": 1}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def trial(data: Path, hosts: int, every_host_writes: bool, root: Path) -> list[float]:
    """Seconds of each checkpoint as rank 0 logged them."""
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
    return [float(match) for match in CHECKPOINT_LINE.findall(logs[0])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "data" / "input.txt")
    parser.add_argument("--hosts", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    layouts = {"one host writes": False, "every host writes": True}
    print(f"cpu preset, {STEPS} steps, a checkpoint every {CHECKPOINT_INTERVAL}; seconds per checkpoint on rank 0")
    for hosts in args.hosts:
        seconds: dict[str, list[float]] = {name: [] for name in layouts}
        for number in range(args.trials):
            for name, every_host_writes in layouts.items():
                with tempfile.TemporaryDirectory() as root:
                    measured = trial(args.data, hosts, every_host_writes, Path(root))
                seconds[name] += measured
                print(f"  {hosts} hosts, trial {number + 1}, {name}: "
                      + ", ".join(f"{value:.3f}" for value in measured), flush=True)
        medians = {name: statistics.median(values) for name, values in seconds.items()}
        print(f"{hosts} hosts: one host writes {medians['one host writes']:.3f} s, every host writes "
              f"{medians['every host writes']:.3f} s per checkpoint "
              f"({medians['every host writes'] / medians['one host writes']:.2f}x)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
