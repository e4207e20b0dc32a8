"""Benchmark of the chargpt trainer on this machine (not a test: it prints figures).

1. Training throughput (tokens/s) of chargpt and of a reference written the way the original demo
   was (one module per attention head, a Python loop over the heads, masked softmax by hand), both
   at the `cpu` preset's shapes with the same thread count; and the ratio (target >= 1.3x).
2. The wall time to val loss <= 1.89 on tiny-shakespeare with the `cpu` preset, as the real CLI
   trains it, median of 3 runs (target: within 2000 steps and under 80 s of training). By default
   the runs are DDP runs of one single-threaded rank per core (`torchrun --nproc-per-node <cores>`),
   the fastest layout on a few CPU cores; `--nproc 1` times one process that uses every core.

    python benchmarks/bench_trainer.py [--data PATH] [--runs 3] [--nproc N] [--set KEY=VALUE ...]
                                       [--skip-throughput] [--skip-convergence]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The same OpenMP setting as the trainer (chargpt/__init__.py) for both contenders; before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "app"))

from chargpt.config import TrainConfig, build_config  # noqa: E402
from chargpt.data import Corpus, load_corpus  # noqa: E402
from chargpt.distributed import DistEnv  # noqa: E402
from chargpt.model import GPT, model_args  # noqa: E402
from chargpt.train import build_optimizer, cpu_threads, train_step  # noqa: E402

TARGET_VAL_LOSS = 1.89


# The reference: the original demo's model, as it was written.
class Head(nn.Module):
    def __init__(self, n_embd, head_size, block_size, dropout):
        super().__init__()
        self.key = nn.Linear(n_embd, head_size, bias=False)
        self.query = nn.Linear(n_embd, head_size, bias=False)
        self.value = nn.Linear(n_embd, head_size, bias=False)
        self.register_buffer("tril", torch.tril(torch.ones(block_size, block_size)))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        _, time_steps, _ = x.shape
        k = self.key(x)
        q = self.query(x)
        wei = q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5
        wei = wei.masked_fill(self.tril[:time_steps, :time_steps] == 0, float("-inf"))
        wei = self.dropout(F.softmax(wei, dim=-1))
        return wei @ self.value(x)


class MultiHeadAttention(nn.Module):
    def __init__(self, n_embd, n_head, block_size, dropout):
        super().__init__()
        self.heads = nn.ModuleList(Head(n_embd, n_embd // n_head, block_size, dropout) for _ in range(n_head))
        self.proj = nn.Linear(n_embd, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        out = torch.cat([head(x) for head in self.heads], dim=-1)
        return self.dropout(self.proj(out))


class FeedForward(nn.Module):
    def __init__(self, n_embd, dropout):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.ReLU(), nn.Linear(4 * n_embd, n_embd),
                                 nn.Dropout(dropout))

    def forward(self, x):
        return self.net(x)


class ReferenceBlock(nn.Module):
    def __init__(self, n_embd, n_head, block_size, dropout):
        super().__init__()
        self.sa = MultiHeadAttention(n_embd, n_head, block_size, dropout)
        self.ffwd = FeedForward(n_embd, dropout)
        self.ln1 = nn.LayerNorm(n_embd)
        self.ln2 = nn.LayerNorm(n_embd)

    def forward(self, x):
        x = x + self.sa(self.ln1(x))
        return x + self.ffwd(self.ln2(x))


class ReferenceLanguageModel(nn.Module):
    def __init__(self, vocab_size, n_embd, n_head, n_layer, block_size, dropout):
        super().__init__()
        self.token_embedding_table = nn.Embedding(vocab_size, n_embd)
        self.position_embedding_table = nn.Embedding(block_size, n_embd)
        self.blocks = nn.Sequential(*[ReferenceBlock(n_embd, n_head, block_size, dropout) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size)

    def forward(self, idx, targets):
        batch, time_steps = idx.shape
        x = self.token_embedding_table(idx) + self.position_embedding_table(torch.arange(time_steps))
        logits = self.lm_head(self.ln_f(self.blocks(x)))
        return logits, F.cross_entropy(logits.view(batch * time_steps, -1), targets.view(batch * time_steps))


def reference_get_batch(data, batch_size, block_size):
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([data[i:i + block_size] for i in ix])
    y = torch.stack([data[i + 1:i + block_size + 1] for i in ix])
    return x, y


def time_steps(step, warmup: int, steps: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for steps steps after warmup ones."""
    for index in range(warmup):
        step(index)
    started, cpu_started = time.perf_counter(), time.process_time()
    for index in range(steps):
        step(warmup + index)
    return time.perf_counter() - started, time.process_time() - cpu_started


def tokens_per_second(config: TrainConfig, steps: int, seconds: tuple[float, float]) -> tuple[float, float]:
    """Tokens per wall second and per CPU second (the latter barely moves when other work shares the cores)."""
    tokens = steps * config.batch_size * config.block_size
    return tokens / seconds[0], tokens / seconds[1]


def reference_tokens_per_s(config: TrainConfig, corpus: Corpus, warmup: int, steps: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = ReferenceLanguageModel(corpus.tokenizer.vocab_size, config.n_embd, config.n_head, config.n_layer,
                                   config.block_size, config.dropout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)

    def step(_):
        xb, yb = reference_get_batch(corpus.train, config.batch_size, config.block_size)
        _, loss = model(xb, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return tokens_per_second(config, steps, time_steps(step, warmup, steps))


def chargpt_tokens_per_s(config: TrainConfig, corpus: Corpus, warmup: int, steps: int) -> tuple[float, float]:
    torch.manual_seed(0)
    device = torch.device("cpu")
    model = GPT(model_args(config, corpus.tokenizer.vocab_size))
    optimizer = build_optimizer(model, config)
    generator = torch.Generator().manual_seed(0)
    micro_batch, accumulation = config.micro_batches(1)

    def step(index):
        train_step(model, optimizer, corpus, config, index, micro_batch, accumulation, generator, device,
                   contextlib.nullcontext())

    return tokens_per_second(config, steps, time_steps(step, warmup, steps))


def throughput(data: Path, trials: int, steps: int) -> None:
    config = build_config("cpu", environ={})
    corpus = load_corpus(data, config.block_size, config.val_fraction)
    torch.set_num_threads(cpu_threads(config, DistEnv()))
    print(f"== throughput at the cpu preset's shapes (batch {config.batch_size} x context {config.block_size}, "
          f"{config.n_layer} layers, {config.n_head} heads, {config.n_embd} wide), "
          f"{torch.get_num_threads()} threads, {steps} timed steps, {trials} interleaved trials")
    ours, reference = [], []
    for trial in range(trials):
        reference.append(reference_tokens_per_s(config, corpus, 20, steps))
        ours.append(chargpt_tokens_per_s(config, corpus, 20, steps))
        print(f"trial {trial + 1}: reference {reference[-1][0]:,.0f} tokens/s ({reference[-1][1]:,.0f} per CPU-second), "
              f"chargpt {ours[-1][0]:,.0f} tokens/s ({ours[-1][1]:,.0f} per CPU-second)")
    for index, unit in ((0, "tokens/s"), (1, "tokens per CPU-second")):
        ours_median = statistics.median(result[index] for result in ours)
        reference_median = statistics.median(result[index] for result in reference)
        print(f"{unit}: reference (per-head modules, loop over heads) {reference_median:,.0f}, chargpt (fused QKV + "
              f"scaled_dot_product_attention) {ours_median:,.0f}, ratio {ours_median / reference_median:.2f}x "
              "(target >= 1.3x)")


def convergence(data: Path, runs: int, nproc: int, assignments: list[str]) -> None:
    layout = "one process" if nproc == 1 else f"torchrun --nproc-per-node {nproc} (Gloo)"
    extra = f" with --set {' '.join(assignments)}" if assignments else ""
    print(f"== time to val loss <= {TARGET_VAL_LOSS} with the cpu preset{extra}, {runs} runs of the real CLI, {layout}")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] \
        if nproc > 1 else [sys.executable]
    reached, reached_training, walls = [], [], []
    with tempfile.TemporaryDirectory(prefix="chargpt-bench-") as scratch:
        for run in range(runs):
            run_dir = Path(scratch) / f"run{run}"
            seed = 1337 + run
            command = [*launcher, "-m", "chargpt", "train", "--data", str(data), "--preset", "cpu",
                       "--run-dir", str(run_dir), "--set", f"seed={seed}"]
            for assignment in assignments:
                command += ["--set", assignment]
            env = {key: value for key, value in os.environ.items() if not key.startswith("CHARGPT_")}
            env["PYTHONPATH"] = str(REPO_ROOT / "app")
            started = time.perf_counter()
            subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
            walls.append(time.perf_counter() - started)
            records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            hit = next((record for record in records if record["val_loss"] <= TARGET_VAL_LOSS), None)
            final = records[-1]
            if hit:
                reached.append(hit["elapsed_s"])
                reached_training.append(hit["elapsed_s"] - hit["eval_s"])
                outcome = (f"val {hit['val_loss']:.4f} at step {hit['step']} after {hit['elapsed_s']:.1f} s of training "
                           f"({hit['eval_s']:.1f} s of it evaluating)")
            else:
                outcome = "never reached"
            print(f"run {run + 1} (seed {seed}): {outcome}; final val {final['val_loss']:.4f} at step "
                  f"{final['step']}, {final['elapsed_s']:.1f} s of training, {walls[-1]:.1f} s wall with start-up")
    if len(reached) == runs:
        print(f"median time to val loss <= {TARGET_VAL_LOSS}: {statistics.median(reached):.1f} s of training "
              f"(target < 80 s), {statistics.median(reached_training):.1f} s without the evaluations; "
              f"median wall time per run with start-up: {statistics.median(walls):.1f} s")
    else:
        print(f"only {len(reached)} of {runs} runs reached val loss <= {TARGET_VAL_LOSS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare.txt")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--nproc", type=int, default=len(os.sched_getaffinity(0)),
                        help="ranks of the convergence runs (default: one per usable core)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for the convergence runs, e.g. eval_interval=50 (repeatable)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-convergence", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    if not args.skip_throughput:
        throughput(args.data, args.trials, args.steps)
    if not args.skip_convergence:
        convergence(args.data, args.runs, args.nproc, args.assignments)
    print(f"load average {os.getloadavg()[0]:.2f} at the end (other work on this machine skews timings)")


if __name__ == "__main__":
    main()
