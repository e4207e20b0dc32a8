"""GPU benchmark (not a test, and no CI machine has a GPU): the `original` preset's model (10.8M
parameters) trained by the real CLI on one GPU to val loss <= 1.47 on tiny-shakespeare. Prints, per
variant: the step and time at which the val loss first reached the target (evaluations included),
tokens/s, and model FLOP utilisation against the GPU's dense bfloat16 peak.

Variants: `shipped` is the preset as it is (the original demo's constant lr 3e-4); `cosine` adds the
optimiser settings nanoGPT's shakespeare_char recipe uses at this size (lr 1e-3 with warmup and
cosine decay to 1e-4, beta2 0.99, weight decay 0.1, clipping at 1.0), which is the figure to set
beside nanoGPT's (about 3 minutes on an A100 to 1.47, by its README).

    python benchmarks/bench_gpu.py [--data PATH] [--variant shipped|cosine ...] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_VAL_LOSS = 1.47
VARIANTS = {
    "shipped": [],
    "cosine": ["lr=1e-3", "min_lr=1e-4", "lr_schedule=cosine", "warmup_steps=100", "beta2=0.99",
               "weight_decay=0.1", "grad_clip=1.0"],
}
# Every run: compiled, evaluated every 250 steps on 50 batches a split (0.8M tokens: the val loss's
# noise is far below the differences that matter here).
COMMON = ["compile=true", "eval_interval=250", "eval_batches=50", "log_interval=250", "checkpoint_interval=5000"]
# Dense bfloat16 tensor-core peaks from the vendors' datasheets, TFLOP/s, by a word of the GPU's name.
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L4": 121.0, "A10": 125.0}


def flops_per_token(config: dict, parameters: int) -> float:
    """Training FLOPs per token: 6 per weight, plus attention's (the PaLM paper's estimate)."""
    attention = 12 * config["n_layer"] * config["n_embd"] * config["block_size"]
    return 6 * parameters + attention


def parameters_of(log_text: str) -> int:
    line = next(line for line in log_text.splitlines() if "params=" in line)
    return int(line.split("params=")[1].split()[0].replace(",", ""))


def run_variant(name: str, data: Path, assignments: list[str], scratch: Path, peak: float | None) -> None:
    run_dir = scratch / name
    command = [sys.executable, "-m", "chargpt", "train", "--data", str(data), "--preset", "original",
               "--run-dir", str(run_dir)]
    for assignment in [*COMMON, *VARIANTS[name], *assignments]:
        command += ["--set", assignment]
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHARGPT_")}
    env["PYTHONPATH"] = str(REPO_ROOT / "app")
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode:
        print(f"{name}: the trainer exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((run_dir / "summary.json").read_text())["config"]
    rate = statistics.median(record["tokens_per_s"] for record in records[1:] or records)
    model_flops = flops_per_token(config, parameters_of(result.stdout)) * rate
    utilisation = f", MFU {model_flops / (peak * 1e12):.1%} of {peak:.0f} TFLOP/s" if peak else ""
    hit = next((record for record in records if record["val_loss"] <= TARGET_VAL_LOSS), None)
    reached = (f"val {hit['val_loss']:.4f} <= {TARGET_VAL_LOSS} at step {hit['step']}, {hit['elapsed_s']:.1f} s "
               f"after the first step ({hit['eval_s']:.1f} s of it evaluating)") if hit else \
        f"never reached {TARGET_VAL_LOSS}"
    final = records[-1]
    print(f"{name}: {reached}; final val {final['val_loss']:.4f} at step {final['step']} after "
          f"{final['elapsed_s']:.1f} s; median {rate:,.0f} tokens/s ({model_flops / 1e12:.1f} TFLOP/s of model "
          f"FLOPs{utilisation}); {wall:.1f} s wall with start-up and compilation", flush=True)
    for record in records:
        print(f"  step {record['step']}: val {record['val_loss']:.4f} at {record['elapsed_s']:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "data" / "input.txt")
    parser.add_argument("--variant", dest="variants", action="append", choices=list(VARIANTS))
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py: no CUDA device here; this benchmark needs one GPU")
    gpu = torch.cuda.get_device_name()
    peak = next((value for word, value in PEAK_TFLOPS.items() if word in gpu), None)
    print(f"torch {torch.__version__}, {gpu}, bfloat16 autocast, torch.compile", flush=True)
    with tempfile.TemporaryDirectory(prefix="chargpt-gpu-") as scratch:
        for name in args.variants or list(VARIANTS):
            run_variant(name, args.data, args.assignments, Path(scratch), peak)


if __name__ == "__main__":
    main()
