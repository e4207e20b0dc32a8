"""Benchmark of the chargpt trainer against nanoGPT on this machine (not a test: it prints figures).

Both trainers run through their own command lines, one process each, alternately, at nanoGPT's CPU
recipe shapes (4 layers, 4 heads, 128 wide, context 64, batch 12, dropout 0) with the same number
of threads:

1. Speed: ms per training step and tokens/s, evaluations excluded, median of the trials: nanoGPT's
   train.py, chargpt as shipped (its default precision for this CPU), and chargpt in float32
   (nanoGPT's precision on a CPU). Both trainers print a step line every LOG_INTERVAL steps and are
   timed alike, by this process's clock as their lines arrive: a trial's ms a step is the median,
   over the windows between step lines after the first 50 steps, of a window's time over its steps
   (each trainer's own logging included). Tokens per step come from the config each run used:
   chargpt's config.json, nanoGPT's "tokens per iteration" line. The headline is the ratio
   chargpt / nanoGPT in tokens/s (target >= 1.3x).
2. Time to val loss <= 1.89 with the `cpu` preset, evaluations included, per seed and the median
   (target < 50 s), with nanoGPT's recipe beside it (its seed is fixed, so one run of it is shown
   per seed of ours).

3. With --profile: where one chargpt step spends its time, by operator (torch.profiler, 50 steps
   after 30), in this process, with the --set overrides (e.g. dtype=float32).

Without --nanogpt only chargpt's figures are printed. With it, DIR is a checkout of
karpathy/nanoGPT; its data/shakespeare_char is prepared from --data with its own prepare.py
unless it already holds that corpus.

    python benchmarks/bench_trainer.py [--nanogpt DIR] [--data PATH] [--threads N] [--trials 3]
        [--steps 300] [--runs 3] [--set KEY=VALUE ...] [--skip-speed] [--skip-convergence] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_VAL_LOSS = 1.89
WARMUP_STEPS = 50  # steps of each trial left out of its median
LOG_INTERVAL = 10  # steps between the step lines of both trainers, which time their steps
# nanoGPT's README command for a CPU, less the steps, the evaluation cadence, which each part sets, and
# the log interval (LOG_INTERVAL).
NANOGPT_CPU_RECIPE = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                      "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
                      "--lr_decay_iters=2000", "--dropout=0.0"]
NANOGPT_TOKENS = re.compile(r"^tokens per iteration will be: ([\d,]+)")
NANOGPT_ITER = re.compile(r"^iter (\d+): loss [\d.]+, time [\d.]+ms")
NANOGPT_EVAL = re.compile(r"^step (\d+): train loss [\d.]+, val loss ([\d.]+)")
CHARGPT_STEP = re.compile(r"^\[chargpt\] step (\d+)/\d+ ")


@dataclass
class Contender:
    name: str
    command: list[str]
    cwd: Path
    env: dict[str, str]
    out_dir: Path  # its run directory


def chargpt(data: Path, threads: int, run_dir: Path, assignments: list[str]) -> Contender:
    command = [sys.executable, "-m", "chargpt", "train", "--data", str(data), "--preset", "cpu",
               "--run-dir", str(run_dir), "--set", f"num_threads={threads}",
               "--set", f"log_interval={LOG_INTERVAL}"]
    for assignment in assignments:
        command += ["--set", assignment]
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHARGPT_")}
    env["PYTHONPATH"] = str(REPO_ROOT / "app")
    return Contender("chargpt", command, REPO_ROOT, env, run_dir)


def nanogpt(checkout: Path, threads: int, out_dir: Path, arguments: list[str]) -> Contender:
    command = [sys.executable, "train.py", *NANOGPT_CPU_RECIPE, f"--log_interval={LOG_INTERVAL}",
               f"--out_dir={out_dir}", *arguments]
    # nanoGPT leaves the thread count to torch, which takes OMP_NUM_THREADS.
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    return Contender("nanoGPT", command, checkout, env, out_dir)


def run_timed(contender: Contender) -> list[tuple[float, str]]:
    """Run to the end; each output line with the seconds since start at which it arrived."""
    started = time.perf_counter()
    lines = []
    with subprocess.Popen(contender.command, cwd=contender.cwd, env=contender.env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            lines.append((time.perf_counter() - started, line.rstrip("\n")))
    if process.returncode:
        tail = "\n".join(line for _, line in lines[-30:])
        sys.exit(f"{contender.name} exited {process.returncode}: {' '.join(contender.command)}\n{tail}")
    return lines


def steps_done(contender: Contender, line: str) -> int | None:
    """The steps finished when the trainer printed this step line; None for any other line."""
    if contender.name == "nanoGPT":
        match = NANOGPT_ITER.match(line)
        return int(match[1]) + 1 if match else None  # its iterations count from 0
    match = CHARGPT_STEP.match(line)
    return int(match[1]) if match else None


def ms_per_step(contender: Contender, lines: list[tuple[float, str]]) -> float:
    """Median ms a step over the windows between step lines after the first WARMUP_STEPS, by the arrival
    of the lines: the same clock for both trainers."""
    marks = [(steps, at) for at, line in lines if (steps := steps_done(contender, line)) is not None]
    times = [(at - since) * 1000 / (steps - done) for (done, since), (steps, at) in zip(marks, marks[1:])
             if done >= WARMUP_STEPS]
    if not times:
        sys.exit(f"{contender.name} printed no step lines after step {WARMUP_STEPS}")
    return statistics.median(times)


def tokens_per_step(contender: Contender, lines: list[tuple[float, str]]) -> int:
    """Tokens of one optimizer step, from the config the run used: nanoGPT prints them (batch_size x
    block_size x gradient_accumulation_steps x processes), chargpt's config.json holds its global batch."""
    if contender.name == "nanoGPT":
        stated = next((match[1] for _, line in lines if (match := NANOGPT_TOKENS.match(line))), None)
        if stated is None:
            sys.exit("nanoGPT printed no 'tokens per iteration will be' line")
        return int(stated.replace(",", ""))
    config = json.loads((contender.out_dir / "config.json").read_text())["attempts"][-1]["config"]
    return config["batch_size"] * config["block_size"]


def prepare_nanogpt_data(checkout: Path, data: Path) -> None:
    """nanoGPT's shakespeare_char data from our corpus, by its own prepare.py, unless it is there."""
    folder = checkout / "data" / "shakespeare_char"
    if not (checkout / "train.py").is_file() or not (folder / "prepare.py").is_file():
        sys.exit(f"--nanogpt {checkout} is not a nanoGPT checkout (no train.py or data/shakespeare_char/prepare.py)")
    source = folder / "input.txt"
    prepared = all((folder / name).is_file() for name in ("train.bin", "val.bin", "meta.pkl"))
    if prepared and source.is_file() and source.read_bytes() == data.read_bytes():
        return
    shutil.copyfile(data, source)
    subprocess.run([sys.executable, "prepare.py"], cwd=folder, check=True, stdout=subprocess.DEVNULL)
    print(f"prepared {folder} from {data}")


def speed(args: argparse.Namespace, scratch: Path) -> None:
    contenders = {"chargpt (as shipped)": [], "chargpt (float32)": []}
    if args.nanogpt:
        contenders = {"nanoGPT train.py": [], **contenders}
    print(f"== speed: {args.steps} steps a trial, {args.trials} alternating trials, one process of "
          f"{args.threads} threads each, a step line every {LOG_INTERVAL} steps, median ms a step after step "
          f"{WARMUP_STEPS} as the lines arrived, evaluations excluded")
    for trial in range(1, args.trials + 1):
        figures = []
        for index, (name, results) in enumerate(contenders.items()):
            folder = scratch / f"speed-{trial}-{index}"
            if name.startswith("nanoGPT"):
                contender = nanogpt(args.nanogpt, args.threads, folder,
                                    [f"--max_iters={args.steps}", f"--eval_interval={args.steps + 1}"])
            else:
                dtype = ["dtype=float32"] if "float32" in name else []
                contender = chargpt(args.data, args.threads, folder,
                                    [f"max_steps={args.steps}", f"eval_interval={args.steps}",
                                     f"checkpoint_interval={args.steps}", *dtype, *args.assignments])
            lines = run_timed(contender)
            ms, tokens = ms_per_step(contender, lines), tokens_per_step(contender, lines)
            results.append((ms, tokens * 1000 / ms))
            figures.append(f"{name} {ms:.1f} ms, {tokens} tokens a step")
        print(f"trial {trial}: " + ", ".join(figures), flush=True)
    medians = {name: (statistics.median(ms for ms, _ in results), statistics.median(rate for _, rate in results))
               for name, results in contenders.items()}
    print("| | ms/step | tokens/s |\n| --- | --- | --- |")
    for name, (ms, tokens_per_s) in medians.items():
        print(f"| {name} | {ms:.1f} | {tokens_per_s:,.0f} |")
    if args.nanogpt:
        reference = medians["nanoGPT train.py"][1]
        for name in ("chargpt (as shipped)", "chargpt (float32)"):
            print(f"| ratio {name} / nanoGPT, tokens/s | **{medians[name][1] / reference:.2f}x** | |")
        print("(target: chargpt as shipped >= 1.3x nanoGPT)")


def chargpt_time_to_target(args: argparse.Namespace, run_dir: Path, seed: int) -> tuple[float | None, str]:
    contender = chargpt(args.data, args.threads, run_dir, [f"seed={seed}", "eval_interval=100", *args.assignments])
    wall = run_timed(contender)[-1][0]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    hit = next((record for record in records if record["val_loss"] <= TARGET_VAL_LOSS), None)
    final = records[-1]
    ending = f"; final val {final['val_loss']:.4f} at step {final['step']}, {wall:.1f} s wall with start-up"
    if not hit:
        return None, "never reached" + ending
    return hit["elapsed_s"], (f"val {hit['val_loss']:.4f} at step {hit['step']} after {hit['elapsed_s']:.1f} s "
                              f"({hit['eval_s']:.1f} s of it evaluating)" + ending)


def nanogpt_time_to_target(args: argparse.Namespace, out_dir: Path) -> tuple[float | None, str]:
    """From its first step to the evaluation that first reached the target, as the lines arrived."""
    contender = nanogpt(args.nanogpt, args.threads, out_dir, ["--max_iters=2000", "--eval_interval=100"])
    lines = run_timed(contender)
    first = next(at for at, line in lines if NANOGPT_ITER.match(line))
    evaluations = [(at, int(match[1]), float(match[2])) for at, line in lines if (match := NANOGPT_EVAL.match(line))]
    hit = next(((at, step, loss) for at, step, loss in evaluations if loss <= TARGET_VAL_LOSS), None)
    ending = f"; final val {evaluations[-1][2]:.4f} at step {evaluations[-1][1]}, {lines[-1][0]:.1f} s wall"
    if not hit:
        return None, "never reached" + ending
    return hit[0] - first, f"val {hit[2]:.4f} at step {hit[1]} after {hit[0] - first:.1f} s" + ending


def convergence(args: argparse.Namespace, scratch: Path) -> None:
    print(f"== time to val loss <= {TARGET_VAL_LOSS}: the cpu preset by the real CLI, one process of "
          f"{args.threads} threads, evaluated every 100 steps, {args.runs} seeds"
          + ("; nanoGPT's CPU recipe (2000 iterations) evaluated every 100 steps" if args.nanogpt else ""))
    ours, theirs = [], []
    for run in range(args.runs):
        seed = 1337 + run
        reached, outcome = chargpt_time_to_target(args, scratch / f"converge-{run}", seed)
        ours.append(reached)
        print(f"chargpt seed {seed}: {outcome}", flush=True)
        if args.nanogpt:
            reached, outcome = nanogpt_time_to_target(args, scratch / f"converge-nanogpt-{run}")
            theirs.append(reached)
            print(f"nanoGPT (its seed 1337): {outcome}", flush=True)
    for name, times in (("chargpt", ours), ("nanoGPT", theirs)):
        if not times:
            continue
        if None in times:
            print(f"{name}: {times.count(None)} of {len(times)} runs never reached {TARGET_VAL_LOSS}")
        else:
            print(f"{name}: median time to val loss <= {TARGET_VAL_LOSS}: {statistics.median(times):.1f} s"
                  + (" (target < 50 s)" if name == "chargpt" else ""))


def profile(args: argparse.Namespace) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile as profiler

    sys.path.insert(0, str(REPO_ROOT / "app"))
    from chargpt.config import build_config, parse_assignments
    from chargpt.data import load_corpus
    from chargpt.hardware import autocast_context, compute_dtype
    from chargpt.model import GPT
    from chargpt.model_config import model_args
    from chargpt.train import build_optimizer, sample_micro_batches, train_step

    config = build_config("cpu", parse_assignments([f"num_threads={args.threads}", *args.assignments]), environ={})
    corpus = load_corpus(args.data, config.block_size, config.val_fraction)
    torch.set_num_threads(config.num_threads)
    device = torch.device("cpu")
    dtype = compute_dtype(config, device)
    torch.manual_seed(config.seed)
    model = GPT(model_args(config, corpus.tokenizer.vocab_size))
    optimizer = build_optimizer(model, config)
    generator = torch.Generator().manual_seed(config.seed)

    def step(index: int) -> None:
        batches = sample_micro_batches(corpus, config, config.micro_batches(1, 0), generator)
        train_step(model, optimizer, config, index, batches, 1, device, autocast_context(dtype, device))

    for index in range(30):
        step(index)
    with profiler(activities=[ProfilerActivity.CPU]) as recorded:
        for index in range(30, 80):
            step(index)
    print(f"== profile of 50 chargpt steps, cpu preset, {dtype}, {args.threads} threads (self CPU time; "
          "divide by 50 for a step)")
    print(recorded.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=50))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", type=Path, metavar="DIR", help="a checkout of karpathy/nanoGPT")
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare.txt")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="threads of each trainer (default: every usable core)")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300, help="steps of each speed trial")
    parser.add_argument("--runs", type=int, default=3, help="seeds of the time-to-target runs")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="chargpt config override for every chargpt run (repeatable)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-convergence", action="store_true")
    parser.add_argument("--profile", action="store_true", help="print a profile of chargpt's step first")
    args = parser.parse_args()
    args.data = args.data.resolve()
    if args.nanogpt:
        args.nanogpt = args.nanogpt.resolve()
        prepare_nanogpt_data(args.nanogpt, args.data)
    import torch  # only for the versions line: each trainer runs in a process of its own
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}, load average {os.getloadavg()[0]:.2f} at start")
    if args.profile:
        profile(args)
    with tempfile.TemporaryDirectory(prefix="chargpt-bench-") as scratch:
        if not args.skip_speed:
            speed(args, Path(scratch))
        if not args.skip_convergence:
            convergence(args, Path(scratch))
    print(f"load average {os.getloadavg()[0]:.2f} at the end (other work on this machine skews timings)")


if __name__ == "__main__":
    main()
