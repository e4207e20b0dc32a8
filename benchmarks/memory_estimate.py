"""The memory estimate of `chargpt check` against the measured peak (not a test: it prints figures).

Each configuration trains a few steps with the real command line, in a process of its own, with an
evaluation, a checkpoint and the final outputs (sample, model file), as a run does; the peak is the
process's high-water mark (ru_maxrss of a fresh watcher's children). With --ranks 2 one more run of
each configuration trains under `torchrun --standalone --nproc-per-node 2` (Gloo, DDP): its peak is
the largest of the ranks, and the host's is the largest sum of the resident sets of torchrun and
its ranks, sampled every 50 ms. The estimate must stay above every peak, by at most about 1.5x for
the larger configurations.

    python benchmarks/memory_estimate.py [--data PATH] [--dtype float32,bfloat16] [--ranks 2] [--only NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "app"))

from chargpt.config import PRESETS, build_config  # noqa: E402
from chargpt.data import load_corpus  # noqa: E402
from chargpt.memory import estimate, gib  # noqa: E402
from chargpt.model_config import model_args  # noqa: E402

# Every preset, then larger ones: wider and deeper, a long context, a large micro-batch.
CONFIGS: dict[str, tuple[str, dict]] = {
    **{name: (name, {}) for name in PRESETS},
    "wide": ("cpu", {"n_layer": 8, "n_head": 8, "n_embd": 512, "block_size": 256, "batch_size": 16}),
    "long-context": ("cpu", {"n_layer": 4, "n_head": 4, "n_embd": 256, "block_size": 1024, "batch_size": 8}),
    "big-batch": ("cpu", {"batch_size": 512}),
    "micro-batched": ("original", {"micro_batch_size": 8}),
}
# A few steps, one evaluation, one checkpoint, the outputs: every part of a run whose memory counts.
RUN = {"max_steps": 2, "eval_interval": 2, "eval_batches": 1, "log_interval": 1, "checkpoint_interval": 2,
       "sample_chars": 20, "warmup_steps": 0}
# Runs the command given, then prints the high-water mark of its largest process and the largest sum
# of the resident sets of the command's process tree, in bytes.
WATCHER = r"""
import resource, subprocess, sys, time
from pathlib import Path

def tree(pid):
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            pids += [child for text in (task / "children").read_text().split() for child in tree(int(text))]
        except OSError:
            pass
    return pids

def rss(pid):
    try:
        return int(next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                        if line.startswith("VmRSS:")).split()[1]) * 1024
    except (OSError, StopIteration):
        return 0

process = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
total = 0
while process.poll() is None:
    total = max(total, sum(rss(pid) for pid in tree(process.pid)))
    time.sleep(0.05)
if process.returncode:
    sys.exit(process.stderr.read().decode()[-3000:])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, total)
"""


def measure(app: Path, data: Path, preset: str, overrides: dict, ranks: int, run_dir: Path) -> tuple[int, int]:
    """(the largest process's peak, the largest sum over the process tree), in bytes."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
                if ranks > 1 else [sys.executable])
    command = [*launcher, "-m", "chargpt", "train", "--data", str(data), "--preset", preset,
               "--run-dir", str(run_dir)]
    for key, value in {**overrides, **RUN}.items():
        command += ["--set", f"{key}={value}"]
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHARGPT_")}
    env["PYTHONPATH"] = str(app)
    watched = subprocess.run([sys.executable, "-c", WATCHER, *command], env=env, capture_output=True, text=True)
    if watched.returncode:
        sys.exit(f"{preset} {overrides} failed:\n{watched.stderr}")
    process, total = watched.stdout.split()
    return int(process), int(total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "data" / "input.txt")
    parser.add_argument("--app", type=Path, default=REPO_ROOT / "app",
                        help="the trainer package's folder that trains (default: this tree's app/)")
    parser.add_argument("--dtype", default="float32,bfloat16", help="comma-separated dtypes to train in")
    parser.add_argument("--ranks", type=int, default=0, help="also train each configuration on this many ranks")
    parser.add_argument("--only", action="append", choices=list(CONFIGS), help="configurations to run (repeatable)")
    args = parser.parse_args()
    text = args.data.read_text()
    print("| config | dtype | ranks | parameters | estimate | measured peak | estimate / measured |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="chargpt-memory-") as scratch:
        for name in args.only or CONFIGS:
            preset, shape = CONFIGS[name]
            for dtype in args.dtype.split(","):
                overrides = {**shape, "dtype": dtype}
                for ranks in [1] + ([args.ranks] if args.ranks > 1 else []):
                    config = build_config(preset, {key: str(value) for key, value in overrides.items()}, environ={})
                    corpus = load_corpus(args.data, config.block_size, config.val_fraction)
                    memory = estimate(config, corpus.tokenizer.vocab_size, len(text), sys.getsizeof(text),
                                      ranks, processes=ranks)
                    run_dir = Path(scratch) / f"{name}-{dtype}-{ranks}"
                    process, total = measure(args.app.resolve(), args.data.resolve(), preset, overrides, ranks, run_dir)
                    parameters = model_args(config, corpus.tokenizer.vocab_size).parameter_count()
                    rows = [("process", memory.process_bytes, process)]
                    if ranks > 1:
                        rows.append(("host", memory.host_bytes, total))
                    for what, estimated, measured in rows:
                        label = name if what == "process" else f"{name} (host: {ranks} ranks + torchrun)"
                        print(f"| {label} | {dtype} | {ranks} | {parameters / 1e6:.2f}M | {gib(estimated)} | "
                              f"{gib(measured)} | {estimated / measured:.2f} |", flush=True)
                    print(json.dumps({"config": name, "dtype": dtype, "ranks": ranks, "parts": memory.parts}),
                          file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
