"""The training loop: DDP over the ranks, evaluation, checkpoints, metrics and final outputs."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from . import checkpoint, distributed
from .config import TrainConfig, build_config, parse_assignments
from .data import CharTokenizer, Corpus, load_corpus, sample_batch
from .distributed import DistEnv
from .faults import CheckpointPause, checkpoint_pause
from .model import GPT, GPTConfig
from .outputs import plot_losses, read_metrics, write_final_model


class ResumeError(ValueError):
    """The run directory holds a checkpoint that this configuration cannot continue."""


def log(message: str) -> None:
    print(f"[chargpt] {message}", flush=True)


@dataclass
class Resume:
    """What rank 0 found in the run directory before the process group existed."""
    state: dict | None


def model_args(config: TrainConfig, vocab_size: int) -> GPTConfig:
    """The model's shape: every GPTConfig field comes from the config of the same name."""
    shape = {field.name: getattr(config, field.name) for field in fields(GPTConfig) if field.name != "vocab_size"}
    return GPTConfig(vocab_size=vocab_size, **shape)


def find_resume_state(run_dir: Path, config: TrainConfig, tokenizer: CharTokenizer) -> Resume:
    """Rank 0, before any distributed setup: the newest valid checkpoint, checked against us."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ResumeError(f"run directory {run_dir} exists and is not a directory; pick another --run-dir")
    state = checkpoint.load_latest_checkpoint(run_dir, warn=lambda text: log(f"warning: {text}"))
    if state is None:
        return Resume(None)
    if state["step"] > config.max_steps:
        raise ResumeError(f"run directory {run_dir} holds a checkpoint of step {state['step']}, past "
                          f"max_steps={config.max_steps}; raise max_steps or use a new --run-dir")
    if state["vocab"] != tokenizer.chars:
        raise ResumeError(f"run directory {run_dir} holds a checkpoint trained on another corpus "
                          "(its vocabulary differs); use a new --run-dir or the same --data")
    expected = model_args(config, tokenizer.vocab_size).__dict__
    # Through GPTConfig, so that a setting the checkpoint predates counts with its old default.
    saved = GPTConfig(**state["model_args"]).__dict__
    for key, value in saved.items():
        if expected.get(key) != value and key != "dropout":
            raise ResumeError(f"run directory {run_dir} holds a checkpoint with {key}={value} but the "
                              f"configuration says {key}={expected.get(key)}; use a new --run-dir or "
                              "the checkpoint's settings")
    return Resume(state)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warmup, then cosine decay to min_lr at max_steps (or constant)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / (config.warmup_steps + 1)
    if config.lr_schedule == "constant":
        return config.lr
    span = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - config.min_lr)


def build_optimizer(model: GPT, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; matrices decay, biases, norms and embeddings' 1-d params do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), fused=True)


def cpu_threads(config: TrainConfig, env: DistEnv) -> int:
    if config.num_threads:
        return config.num_threads
    return max(1, len(os.sched_getaffinity(0)) // max(1, env.local_world_size))


def autocast_context(config: TrainConfig, device: torch.device):
    use_bf16 = config.dtype == "bfloat16" or (config.dtype == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def rank_seed(config: TrainConfig, env: DistEnv, step: int = 0) -> int:
    """Seed of one rank's batches and dropout: different data on every rank."""
    return config.seed + 7919 * env.rank + step


def rng_state(batch_generator: torch.Generator, device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "batches": batch_generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict, batch_generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    batch_generator.set_state(state["batches"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def train_step(model, optimizer, corpus: Corpus, config: TrainConfig, step: int,
               micro_batch: int, accumulation: int, generator: torch.Generator,
               device: torch.device, autocast) -> torch.Tensor:
    """One optimizer step over accumulation micro-batches; returns this rank's mean loss.

    The loss stays a tensor so that a GPU need not synchronise every step."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(config, step)
    total = torch.zeros((), device=device)
    for micro in range(accumulation):
        x, y = sample_batch(corpus.train, micro_batch, config.block_size, generator)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        # Only the last micro-batch all-reduces the gradients.
        sync = micro == accumulation - 1 or not isinstance(model, DistributedDataParallel)
        with contextlib.nullcontext() if sync else model.no_sync():
            with autocast:
                _, loss = model(x, y)
            (loss / accumulation).backward()
        total += loss.detach()
    if config.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total / accumulation


@torch.inference_mode()
def evaluate(model: GPT, corpus: Corpus, config: TrainConfig, env: DistEnv, step: int,
             micro_batch: int, device: torch.device, autocast) -> tuple[float, float]:
    """Mean loss on both splits; the eval batches are shared among the ranks and averaged."""
    model.eval()
    batches = max(1, math.ceil(config.eval_batches / env.world_size))
    # Its own generator: evaluating must not change the training batches.
    generator = torch.Generator().manual_seed(config.seed + 104729 * (env.rank + 1) + step)
    losses = torch.zeros(2, device=device)
    for index, split in enumerate((corpus.train, corpus.val)):
        for _ in range(batches):
            x, y = sample_batch(split, micro_batch, config.block_size, generator)
            with autocast:
                _, loss = model(x.to(device), y.to(device))
            losses[index] += loss.float()
    losses /= batches
    distributed.all_reduce_mean(losses)
    model.train()
    return losses[0].item(), losses[1].item()


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def run(config: TrainConfig, corpus: Corpus, run_dir: Path, env: DistEnv, resume: Resume,
        device: torch.device, pause: CheckpointPause | None = None) -> GPT:
    """Train from the resume state (or from scratch); rank 0 writes everything in run_dir.

    pause: fault injection, a pause halfway through writing one checkpoint (see faults.py)."""
    run_dir = Path(run_dir)
    torch.set_num_threads(cpu_threads(config, env))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    state = distributed.broadcast_object(resume.state, env)
    torch.manual_seed(config.seed)  # the same initial weights for every world size
    model = GPT(model_args(config, corpus.tokenizer.vocab_size))
    start_step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        start_step = state["step"]
    model.to(device)
    optimizer = build_optimizer(model, config, device)
    torch.manual_seed(rank_seed(config, env))
    generator = torch.Generator().manual_seed(rank_seed(config, env))
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if len(state["rng"]) == env.world_size:
            restore_rng_state(state["rng"][env.rank], generator, device)
        else:  # another world size: fresh streams, still different per rank
            torch.manual_seed(rank_seed(config, env, start_step))
            generator.manual_seed(rank_seed(config, env, start_step))
    del state
    trained = model
    if env.is_distributed:
        # Gradients as views of the all-reduce buckets: no copy into and out of them every step.
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                        gradient_as_bucket_view=True)
    if config.compile:
        model = torch.compile(model)
    autocast = autocast_context(config, device)
    micro_batch, accumulation = config.micro_batches(env.world_size)

    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.remove_stale_temp_files(run_dir)
        (run_dir / "summary.json").unlink(missing_ok=True)  # it marks a finished run: not this one yet
        checkpoint.atomic_write_json(run_dir / "config.json", config.to_dict())
        log(f"world_size={env.world_size} device={device} threads/rank={torch.get_num_threads()} "
            f"params={trained.num_parameters():,} vocab={corpus.tokenizer.vocab_size} "
            f"global batch={config.batch_size} ({micro_batch} x {accumulation} accumulation "
            f"x {env.world_size} ranks) context={config.block_size}")
        if start_step:
            log(f"resumed from step {start_step}")
            keep_metrics_until(run_dir, start_step)
        else:
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)

    tokens_per_step = config.batch_size * config.block_size
    started = time.perf_counter()
    window_started, window_steps, window_loss = started, 0, torch.zeros((), device=device)
    tokens_per_s = 0.0
    eval_seconds = 0.0  # of elapsed: evaluating, not training
    val_loss = None
    for step in range(start_step, config.max_steps):
        window_loss += train_step(model, optimizer, corpus, config, step, micro_batch, accumulation,
                                  generator, device, autocast)
        window_steps += 1
        done = step + 1
        last = done == config.max_steps
        if done % config.log_interval == 0 or done % config.eval_interval == 0 or last:
            if device.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            tokens_per_s = tokens_per_step * window_steps / (now - window_started)
            elapsed = now - started
            eta = (now - started) / (done - start_step) * (config.max_steps - done)
            train_loss = distributed.all_reduce_mean((window_loss / window_steps).reshape(1)).item()
            if env.is_main:
                log(f"step {done}/{config.max_steps} | loss {train_loss:.4f} | "
                    f"lr {learning_rate(config, step):.2e} | {tokens_per_s:,.0f} tokens/s | "
                    f"elapsed {format_duration(elapsed)} | eta {format_duration(eta)}")
            window_started, window_steps, window_loss = time.perf_counter(), 0, torch.zeros((), device=device)
        if done % config.eval_interval == 0 or last:
            eval_started = time.perf_counter()
            train_eval, val_loss = evaluate(trained, corpus, config, env, done, micro_batch, device, autocast)
            eval_took = time.perf_counter() - eval_started
            eval_seconds += eval_took
            if env.is_main:
                record = {"step": done, "train_loss": round(train_eval, 5), "val_loss": round(val_loss, 5),
                          "lr": learning_rate(config, step), "tokens_per_s": round(tokens_per_s, 1),
                          "elapsed_s": round(time.perf_counter() - started, 3), "eval_s": round(eval_seconds, 3)}
                with open(run_dir / "metrics.jsonl", "a") as handle:
                    handle.write(json.dumps(record) + "\n")
                log(f"eval step {done}: train loss {train_eval:.4f}, val loss {val_loss:.4f} "
                    f"({eval_took:.1f}s)")
            window_started += time.perf_counter() - eval_started  # the metrics write too
        if done % config.checkpoint_interval == 0 or last:
            save_checkpoint(run_dir, trained, optimizer, config, corpus.tokenizer, done, generator,
                            env, device, pause if pause and pause.step == done else None)

    if val_loss is None and env.is_main:  # resumed at the last step: nothing left to train
        history = read_metrics(run_dir / "metrics.jsonl")
        val_loss = history[-1]["val_loss"] if history else None
    if env.is_main:
        finish(run_dir, trained, config, corpus.tokenizer, env, device, start_step, val_loss,
               time.perf_counter() - started)
    return trained


def save_checkpoint(run_dir: Path, model: GPT, optimizer, config: TrainConfig,
                    tokenizer: CharTokenizer, step: int, generator: torch.Generator,
                    env: DistEnv, device: torch.device, pause: CheckpointPause | None = None) -> None:
    rng_states = distributed.gather_objects(rng_state(generator, device), env)
    if not env.is_main:
        return
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
             "config": config.to_dict(), "model_args": model.config.__dict__,
             "vocab": tokenizer.chars, "rng": rng_states, "world_size": env.world_size}
    halfway = None if pause is None else (lambda path: pause.hold(path, log))
    path = checkpoint.save_checkpoint(run_dir, step, state, config.keep_checkpoints, halfway)
    log(f"checkpoint {path.name} written")


def keep_metrics_until(run_dir: Path, step: int) -> None:
    """Drop metrics a killed run logged after the checkpoint it resumes from."""
    path = run_dir / "metrics.jsonl"
    if path.exists():
        kept = [record for record in read_metrics(path) if record["step"] <= step]
        checkpoint.atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in kept))


def finish(run_dir: Path, model: GPT, config: TrainConfig, tokenizer: CharTokenizer, env: DistEnv,
           device: torch.device, start_step: int, val_loss: float | None, train_seconds: float) -> None:
    """The final model, a sample, the loss plot, and summary.json last."""
    write_final_model(run_dir / "model.pt", model, tokenizer)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    start = "\n" if "\n" in tokenizer.index else tokenizer.chars[0]
    context = torch.tensor([tokenizer.encode(start)], device=device)
    model.eval()
    text = tokenizer.decode(model.generate(context, config.sample_chars, config.sample_temperature,
                                           config.sample_top_k or None, generator)[0].tolist())
    checkpoint.atomic_write_text(run_dir / "sample.txt", text)
    log(f"sample ({config.sample_chars} characters):\n{text}")
    plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png")
    summary = {"status": "complete", "final_step": config.max_steps, "world_size": env.world_size,
               "final_val_loss": val_loss, "resumed_from_step": start_step or None,
               "train_seconds": round(train_seconds, 3)}
    checkpoint.atomic_write_json(run_dir / "summary.json", summary)
    log(f"done: final val loss {val_loss if val_loss is None else round(val_loss, 4)}; outputs in {run_dir}")



def train(data: Path, preset: str, run_dir: Path, assignments: list[str]) -> GPT:
    """Check every input, then join the process group and train. Returns this rank's model."""
    distributed.check_node_rank()
    env = distributed.read_env()
    config = build_config(preset, parse_assignments(assignments))
    config.check_world_size(env.world_size)
    pause = checkpoint_pause()
    corpus = load_corpus(data, config.block_size, config.val_fraction)
    # Only rank 0's host has the run directory; it checks it before anyone joins the group.
    resume = find_resume_state(Path(run_dir), config, corpus.tokenizer) if env.is_main else Resume(None)
    device = distributed.choose_device(config.device, env)
    distributed.init_process_group(env, device, config.dist_timeout_s,
                                   log=log if env.local_rank == 0 else (lambda message: None))
    try:
        return run(config, corpus, Path(run_dir), env, resume, device, pause)
    except RuntimeError as error:
        failure = distributed.peer_failure(error, env.rank, config.dist_timeout_s)
        if failure is None:
            raise
        raise failure from error
    finally:
        distributed.shutdown()
