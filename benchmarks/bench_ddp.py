"""What DDP across hosts costs (not a test: it prints figures): the same two ranks of the `cpu`
preset, on one host (`torchrun --standalone --nproc-per-node 2` on this machine) and on two lab hosts
over the overlay (deployed by site.yml), alternately, in one run. Each trial trains --steps steps;
tokens/s is the median of the windows after step 50 as metrics.jsonl records them (evaluations
excluded). Target: the two hosts at >= 0.85x the one host.

The lab must be up with two hosts (`LAB_NAME=bench lab/lab up --hosts 2`); its inventory gives
each host's trainer a core of its own (trainer_cpuset), as the single host's two ranks get one each.

    python benchmarks/bench_ddp.py --inventory inventory/bench [--trials 3] [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 50
# Evaluations every 25 steps on 2 batches: metrics.jsonl then holds the tokens/s of every 25 steps.
OVERRIDES = {"eval_interval": 25, "eval_batches": 2, "log_interval": 25}


def median_tokens_per_s(metrics: Path) -> float:
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    return statistics.median(record["tokens_per_s"] for record in records if record["step"] > WARMUP_STEPS)


def one_host(data: Path, steps: int, run_dir: Path) -> float:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "chargpt",
               "train", "--data", str(data), "--preset", "cpu", "--run-dir", str(run_dir)]
    for key, value in {**OVERRIDES, "max_steps": steps, "checkpoint_interval": steps}.items():
        command += ["--set", f"{key}={value}"]
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHARGPT_")}
    env["PYTHONPATH"] = str(REPO_ROOT / "app")
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return median_tokens_per_s(run_dir / "metrics.jsonl")


def two_hosts(inventory: Path, steps: int, run_id: str, settings: dict | None = None, *args: str) -> float:
    """Deploy the cpu preset with site.yml (settings and args added), wait for it, read its tokens/s."""
    extra = {"trainer_preset": "cpu", "trainer_run_id": run_id, "trainer_wait": True,
             "trainer_overrides": {**OVERRIDES, "max_steps": steps, "checkpoint_interval": steps}, **(settings or {})}
    playbook = subprocess.run(["ansible-playbook", "site.yml", "-i", str(inventory), "-e", json.dumps(extra), *args],
                              cwd=REPO_ROOT, capture_output=True, text=True)
    if playbook.returncode:
        sys.exit(f"site.yml failed for {run_id}:\n{playbook.stdout[-4000:]}")
    return median_tokens_per_s(REPO_ROOT / "artifacts" / run_id / "metrics.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inventory", type=Path, required=True, help="a lab inventory of two hosts")
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "data" / "input.txt",
                        help="the corpus of the one-host runs (the lab trains on trainer_corpus_path)")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    tag = os.urandom(3).hex()
    print(f"== two ranks of the cpu preset, {args.steps} steps a trial, {args.trials} alternating trials, "
          f"median tokens/s of the 25-step windows after step {WARMUP_STEPS}")
    local, lab = [], []
    with tempfile.TemporaryDirectory(prefix="chargpt-ddp-") as scratch:
        for trial in range(1, args.trials + 1):
            local.append(one_host(args.data.resolve(), args.steps, Path(scratch) / f"trial{trial}"))
            lab.append(two_hosts(args.inventory.resolve(), args.steps, f"bench-ddp-{tag}-{trial}"))
            print(f"trial {trial}: one host {local[-1]:,.0f} tokens/s, two lab hosts {lab[-1]:,.0f} tokens/s",
                  flush=True)
    print(f"median: one host {statistics.median(local):,.0f}, two lab hosts {statistics.median(lab):,.0f} tokens/s: "
          f"**{statistics.median(lab) / statistics.median(local):.2f}x** (target >= 0.85x)")


if __name__ == "__main__":
    main()
