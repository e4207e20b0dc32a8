"""The training loop: DDP over the ranks, evaluation, checkpoints, metrics and final outputs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from . import checkpoint, distributed, tensor_tree
from .attempts import CONFIG_FILE, record_attempt, record_stop
from .check import check_inputs
from .config import TrainConfig
from .divergence import Diverged, NonFiniteStep, divergence_message, record_divergence
from .data import Corpus, sample_batch
from .distributed import DistEnv
from .faults import CheckpointPause, NonFiniteLoss, checkpoint_pause, nonfinite_loss
from .hardware import autocast_context, compute_dtype, configure_torch
from .liveness import watch_peers
from .model import GPT
from .model_config import model_args
from .outputs import METRICS_FILE, parse_metrics, plot_losses, read_metrics, write_final_model
from .progress import previous_starts, write_progress
from .replicas import agree_on_resume, describe_ranks
from .resume import Resume, experiment_id, find_resume_state
from .sample import sample_text
from .stopping import PEER_STOPPED_EXIT, PeerStopped, StoppedOnRequest, StopVote


def log(message: str) -> None:
    print(f"[chargpt] {message}", flush=True)


def warn(message: str) -> None:
    log(f"warning: {message}")


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warmup, then cosine decay to min_lr at max_steps (or constant).

    step is the index of the step, from 0; the log and the metrics number the steps from 1."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / (config.warmup_steps + 1)
    if config.lr_schedule == "constant":
        return config.lr
    span = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - config.min_lr)


def build_optimizer(model: GPT, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; matrices decay, biases, norms and embeddings' 1-d params do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), fused=True)


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


def train_step(model, optimizer, config: TrainConfig, step: int, batches: list[tuple[torch.Tensor, torch.Tensor]],
               world_size: int, device: torch.device, autocast, poisoned: bool = False) -> torch.Tensor:
    """One optimizer step over this rank's micro-batches (inputs, targets). Returns this rank's part of
    the global batch's mean loss: the mean over the ranks is that mean.

    NonFiniteStep, with no change to the weights, when the gradients hold a NaN or an infinity: DDP
    has averaged them, so every rank finds the same (a non-finite loss on any rank makes them so).
    Checking costs the gradients' norm, which clipping computes anyway, and one synchronisation on a
    GPU; the loss itself stays a tensor. poisoned (fault injection) makes this rank's loss NaN."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(config, step)
    ddp = getattr(model, "_orig_mod", model)  # the DDP module, also under torch.compile's wrapper
    total = torch.zeros((), device=device)
    for index, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        # Only the last micro-batch all-reduces the gradients, so ranks may run different numbers of them.
        sync = index == len(batches) - 1 or not isinstance(ddp, DistributedDataParallel)
        with contextlib.nullcontext() if sync else ddp.no_sync():
            with autocast:
                _, loss = model(x, y)
            weighted = loss / config.loss_divisor(len(x), world_size)
            if poisoned:
                weighted = weighted * math.nan
            weighted.backward()
        total += weighted.detach()
    params = [param for param in model.parameters() if param.grad is not None]
    norm = torch.nn.utils.get_total_norm([param.grad for param in params])
    if not torch.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteStep(step + 1, total)
    if config.grad_clip:
        torch.nn.utils.clip_grads_with_norm_(params, config.grad_clip, norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def sample_micro_batches(corpus: Corpus, config: TrainConfig, sizes: list[int],
                         generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's training batches for one step, one per micro-batch size."""
    return [sample_batch(corpus.train, size, config.block_size, generator) for size in sizes]


@torch.inference_mode()
def estimate_loss(model: GPT, corpus: Corpus, config: TrainConfig, env: DistEnv, step: int,
                  batch: int, device: torch.device, autocast) -> tuple[float, float]:
    """Mean loss on both splits; the eval batches are shared among the ranks and averaged."""
    model.eval()
    batches = max(1, math.ceil(config.eval_batches / env.world_size))
    # Its own generator: evaluating must not change the training batches.
    generator = torch.Generator().manual_seed(config.seed + 104729 * (env.rank + 1) + step)
    losses = torch.zeros(2, device=device)
    for index, split in enumerate((corpus.train, corpus.val)):
        for _ in range(batches):
            x, y = sample_batch(split, batch, config.block_size, generator)
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


def is_due(step: int, interval: int, config: TrainConfig) -> bool:
    """Every interval steps, and at the last step whatever the interval."""
    return step % interval == 0 or step == config.max_steps


class ProgressLogger:
    """The step lines: loss, tokens/s and ETA over the window of steps since the previous line; the
    same figures in each host's progress file (progress.py) when given its run directory."""

    def __init__(self, config: TrainConfig, env: DistEnv, device: torch.device, start_step: int,
                 started: float, run_dir: Path | None = None):
        self.config, self.env, self.device = config, env, device
        self.start_step, self.started = start_step, started
        self.progress_dir = run_dir if env.local_rank == 0 else None
        self.starts = previous_starts(run_dir) + 1 if self.progress_dir is not None else 0
        self.train_loss = math.nan  # of the latest window
        self.tokens_per_s = 0.0  # of the latest window, for the metrics
        self._open_window(started)

    def restart(self, step: int) -> None:
        """Training goes on from step (after a rollback): the ETA and the window count from now."""
        self.start_step, self.started = step, time.perf_counter()
        self._open_window(self.started)

    def _open_window(self, now: float) -> None:
        self.window_started, self.window_steps = now, 0
        self.window_loss = torch.zeros((), device=self.device)

    def record(self, loss: torch.Tensor) -> None:
        """One step's loss, kept a tensor so that a GPU need not synchronise every step."""
        self.window_loss += loss
        self.window_steps += 1

    def should_log(self, step: int) -> bool:
        # The first step of every start: a deployment sees that every rank trained (the loss is
        # all-reduced). Also at every evaluation, so that its metrics carry the tokens/s of the
        # steps before it.
        return (step == self.start_step + 1
                or is_due(step, self.config.log_interval, self.config)
                or is_due(step, self.config.eval_interval, self.config))

    def log(self, step: int) -> None:
        """Every rank takes part: the window's loss is averaged over them."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()  # the window's time must include the work queued on the GPU
        now = time.perf_counter()
        tokens = self.config.batch_size * self.config.block_size * self.window_steps
        self.tokens_per_s = tokens / (now - self.window_started)
        elapsed = now - self.started
        eta = elapsed / (step - self.start_step) * (self.config.max_steps - step)
        train_loss = distributed.all_reduce_mean((self.window_loss / self.window_steps).reshape(1)).item()
        self.train_loss = train_loss
        if self.env.is_main:
            log(f"step {step}/{self.config.max_steps} | loss {train_loss:.4f} | "
                f"lr {learning_rate(self.config, step - 1):.2e} | {self.tokens_per_s:,.0f} tokens/s | "
                f"elapsed {format_duration(elapsed)} | eta {format_duration(eta)}")
        self.write(step, "training", eta)
        self._open_window(time.perf_counter())

    def write(self, step: int, state: str, eta: float = 0.0) -> None:
        """This host's progress file (its first process only)."""
        if self.progress_dir is not None:
            write_progress(self.progress_dir, state, step, self.config.max_steps, self.train_loss,
                           self.tokens_per_s, eta, self.env.world_size, self.starts)

    def leave_out(self, seconds: float) -> None:
        """Seconds spent on something other than training, which tokens/s must not count."""
        self.window_started += seconds


@dataclass
class Evaluator:
    """The loss on both splits at eval_interval and the last step; rank 0 appends it to metrics.jsonl."""
    model: GPT
    corpus: Corpus
    config: TrainConfig
    env: DistEnv
    eval_batch: int  # sequences per forward pass, the same on every rank
    device: torch.device
    autocast: contextlib.AbstractContextManager
    metrics_path: Path
    started: float  # time.perf_counter() when training started: elapsed_s counts from it
    val_loss: float | None = None  # the latest
    eval_seconds: float = 0.0  # the part of elapsed_s spent evaluating

    def should_evaluate(self, step: int) -> bool:
        return is_due(step, self.config.eval_interval, self.config)

    def evaluate(self, step: int, tokens_per_s: float) -> float:
        """Evaluate and record the result; returns the seconds it took, the metrics write included."""
        began = time.perf_counter()
        train_loss, self.val_loss = estimate_loss(self.model, self.corpus, self.config, self.env, step,
                                                  self.eval_batch, self.device, self.autocast)
        took = time.perf_counter() - began
        self.eval_seconds += took
        if self.env.is_main:
            self._record(step, train_loss, tokens_per_s, took)
        return time.perf_counter() - began

    def _record(self, step: int, train_loss: float, tokens_per_s: float, took: float) -> None:
        record = {"step": step, "train_loss": round(train_loss, 5), "val_loss": round(self.val_loss, 5),
                  "lr": learning_rate(self.config, step - 1), "tokens_per_s": round(tokens_per_s, 1),
                  "elapsed_s": round(time.perf_counter() - self.started, 3),
                  "eval_s": round(self.eval_seconds, 3)}
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        log(f"eval step {step}: train loss {train_loss:.4f}, val loss {self.val_loss:.4f} ({took:.1f}s)")

    def final_val_loss(self) -> float | None:
        """Rank 0: the latest val loss, from metrics.jsonl when the run resumed at its last step."""
        if self.val_loss is not None:
            return self.val_loss
        history = read_metrics(self.metrics_path)
        return history[-1]["val_loss"] if history else None


@dataclass
class Checkpointer:
    """Checkpoints at checkpoint_interval, the last step and a planned stop. Each host's first process
    writes the same complete checkpoint (every rank's RNG state, rank 0's metrics history) to its
    own host's run directory, all hosts at once."""
    run_dir: Path
    model: GPT
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    corpus: Corpus
    generator: torch.Generator
    env: DistEnv
    device: torch.device
    pause: CheckpointPause | None  # fault injection: a pause halfway through writing one checkpoint

    def should_save(self, step: int) -> bool:
        return is_due(step, self.config.checkpoint_interval, self.config)

    def save(self, step: int) -> None:
        """NonFiniteStep instead of a checkpoint when a weight or an optimizer value is not finite
        (the same on every rank: DDP keeps them equal)."""
        began = time.perf_counter()
        if not all_finite([self.model.state_dict(), self.optimizer.state_dict()["state"]]):
            raise NonFiniteStep(step, torch.zeros(()))
        packed = distributed.all_gather_bytes(tensor_tree.pack(rng_state(self.generator, self.device)))
        metrics_path = self.run_dir / METRICS_FILE
        metrics = distributed.broadcast_bytes(
            metrics_path.read_bytes() if self.env.is_main and metrics_path.exists() else b"", src=0)
        if self.env.local_rank != 0:
            return
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": step,
                 "config": self.config.to_dict(), "model_args": self.model.config.__dict__,
                 "vocab": self.corpus.tokenizer.chars, "corpus_sha256": self.corpus.sha256,
                 "rng": [tensor_tree.unpack(data) for data in packed], "world_size": self.env.world_size,
                 "metrics": metrics.decode("utf-8")}
        digest_began = time.perf_counter()
        state = checkpoint.with_digest(state)
        digest_seconds = time.perf_counter() - digest_began
        path = checkpoint.save_checkpoint(self.run_dir, step, state, self.config.keep_checkpoints,
                                          self._halfway(step))
        log(f"checkpoint {path.name} written on this host in {time.perf_counter() - began:.2f} s "
            f"(its digest {digest_seconds:.3f} s)")

    def _halfway(self, step: int) -> Callable[[Path], None] | None:
        if self.pause is None or self.pause.step != step or not self.env.is_main:
            return None
        return lambda path: self.pause.hold(path, log)


def new_model(config: TrainConfig, vocab_size: int) -> GPT:
    torch.manual_seed(config.seed)  # the same initial weights for every world size
    return GPT(model_args(config, vocab_size))


def all_finite(trees: list) -> bool:
    """Whether every floating-point tensor in the nested dicts is free of NaN and infinity."""
    stack = list(trees)
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, torch.Tensor) and item.is_floating_point() and not torch.isfinite(item).all():
            return False
    return True


def host_label() -> str:
    """This host as the deployment names its node (NODE_ADDR), else its host name."""
    return os.environ.get("NODE_ADDR") or socket.gethostname()


@dataclass
class Rollback:
    """After a step that was not finite: back to the newest checkpoint that verifies (divergence.py)."""
    run_dir: Path
    model: GPT
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    config: TrainConfig
    corpus: Corpus
    env: DistEnv
    device: torch.device
    target: int | None = None  # the step the latest rollback went back to

    def go_back(self, failure: NonFiniteStep) -> int:
        """The step training goes on after; Diverged when it went back there already."""
        flags = distributed.all_gather_ints(int(not bool(torch.isfinite(failure.local_loss))))
        bad = [rank for rank, flag in enumerate(flags) if flag]
        where = (f"the loss on rank(s) {describe_ranks(bad)}" if bad
                 else "its gradients or weights, with a finite loss on every rank")
        if self.env.is_main:
            warn(f"step {failure.step} is not finite ({where}): it is not applied; going back to the newest "
                 "checkpoint that verifies")
        resume = find_resume_state(self.run_dir, self.config, self.corpus, warn, self.env.local_rank == 0,
                                   host_label())
        state = agree_on_resume(resume, self.env, self.run_dir, self.config, self.corpus, log, warn)
        target = 0 if state is None else state["step"]
        if target == self.target:
            message = divergence_message(failure.step, where, target)
            if self.env.local_rank == 0:
                record_divergence(self.run_dir, experiment_id(self.config, self.corpus.sha256), message)
            raise Diverged(message)
        self.target = target
        if state is None:  # no checkpoint yet: the initial weights, an empty optimizer
            self.model.load_state_dict(new_model(self.config, self.corpus.tokenizer.vocab_size).state_dict())
            self.optimizer.state.clear()
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        resume_random_streams(state, self.config, self.env, self.generator, self.device)
        if self.env.is_main:
            restore_metrics(self.run_dir / METRICS_FILE, target, None if state is None else state.get("metrics"))
            log(f"went back to step {target}; training goes on from there")
        return target


def build_training_state(config: TrainConfig, vocab_size: int, env: DistEnv, device: torch.device,
                         state: dict | None) -> tuple[GPT, torch.optim.AdamW, torch.Generator]:
    """The model, its optimizer and this rank's batch generator: from the checkpoint state, or new."""
    model = new_model(config, vocab_size)
    if state is not None:
        model.load_state_dict(state["model"])
    model.to(device)
    optimizer = build_optimizer(model, config)
    generator = torch.Generator()
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    resume_random_streams(state, config, env, generator, device)
    return model, optimizer, generator


def resume_random_streams(state: dict | None, config: TrainConfig, env: DistEnv, generator: torch.Generator,
                          device: torch.device) -> None:
    if state is None:
        torch.manual_seed(rank_seed(config, env))
        generator.manual_seed(rank_seed(config, env))
    elif len(state["rng"]) == env.world_size:
        restore_rng_state(state["rng"][env.rank], generator, device)
    else:  # another world size: fresh streams, still different per rank
        torch.manual_seed(rank_seed(config, env, state["step"]))
        generator.manual_seed(rank_seed(config, env, state["step"]))


def parallelize(model: GPT, config: TrainConfig, env: DistEnv, device: torch.device) -> torch.nn.Module:
    """The model as the training step calls it: DDP over the ranks, compiled when asked."""
    if env.is_distributed:
        # Gradients as views of the all-reduce buckets: no copy into and out of them every step.
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                        gradient_as_bucket_view=True)
    if config.compile:
        model = torch.compile(model)
    return model


def prepare_run_dir(run_dir: Path, config: TrainConfig, env: DistEnv, device: torch.device, dtype: torch.dtype,
                    model: GPT, state: dict | None, corpus_sha256: str) -> None:
    """Rank 0: the run directory ready for this run, and the lines that open its log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").unlink(missing_ok=True)  # it marks a finished run: not this one yet
    start_step = 0 if state is None else state["step"]
    record_attempt(run_dir, config, env.world_size, start_step or None, corpus_sha256, warn)
    most, least = config.rank_batch(env.world_size, 0), config.rank_batch(env.world_size, env.world_size - 1)
    shares = str(most) if most == least else f"{most} or {least}"
    log(f"world_size={env.world_size} device={device} dtype={str(dtype).removeprefix('torch.')} "
        f"threads/rank={torch.get_num_threads()} "
        f"params={model.num_parameters():,} vocab={model.config.vocab_size} "
        f"global batch={config.batch_size} ({shares} per rank x {env.world_size} ranks, "
        f"micro-batches of at most {config.micro_batches(env.world_size, 0)[0]}) context={config.block_size}")
    if start_step:
        log(f"resumed from step {start_step}")
        restore_metrics(run_dir / METRICS_FILE, start_step, state.get("metrics"))
    else:
        (run_dir / METRICS_FILE).unlink(missing_ok=True)


def restore_metrics(path: Path, step: int, saved: str | None) -> None:
    """metrics.jsonl as it was at the checkpoint resumed from: from the history the checkpoint carries
    (this host may not have been the master when it was written), else from the file, without the
    records that a killed run logged after that checkpoint."""
    records = read_metrics(path) if saved is None else parse_metrics(saved)
    kept = [record for record in records if record["step"] <= step]
    checkpoint.atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in kept))


def run(config: TrainConfig, corpus: Corpus, run_dir: Path, env: DistEnv, resume: Resume,
        device: torch.device, pause: CheckpointPause | None = None, poison: NonFiniteLoss | None = None) -> GPT:
    """Train from the resume state (or from scratch); rank 0 writes everything in run_dir.

    Fault injection (faults.py): pause, a pause halfway through writing one checkpoint; poison, a NaN loss."""
    run_dir = Path(run_dir)
    configure_torch(config, env, device)
    if env.local_rank == 0:
        checkpoint.remove_stale_temp_files(run_dir)
    state = agree_on_resume(resume, env, run_dir, config, corpus, log, warn)
    start_step = 0 if state is None else state["step"]
    model, optimizer, generator = build_training_state(config, corpus.tokenizer.vocab_size, env, device,
                                                       state)
    wrapped = parallelize(model, config, env, device)
    dtype = compute_dtype(config, device)
    autocast = autocast_context(dtype, device)
    micro_batches = config.micro_batches(env.world_size, env.rank)
    # Evaluation batches of one size on every rank, so that the mean over the ranks is exact.
    eval_batch = config.micro_batches(env.world_size, 0)[0]
    if env.is_main:
        prepare_run_dir(run_dir, config, env, device, dtype, model, state, corpus.sha256)
    del state  # the checkpoint resumed from: not needed while training

    started = time.perf_counter()
    progress = ProgressLogger(config, env, device, start_step, started, run_dir)
    evaluator = Evaluator(model, corpus, config, env, eval_batch, device, autocast,
                          run_dir / METRICS_FILE, started)
    checkpointer = Checkpointer(run_dir, model, optimizer, config, corpus, generator, env, device, pause)
    rollback = Rollback(run_dir, model, optimizer, generator, config, corpus, env, device)
    vote = StopVote()
    step = start_step
    try:
        while step < config.max_steps:
            step += 1
            vote.start()
            batches = sample_micro_batches(corpus, config, micro_batches, generator)
            try:
                poisoned = poison is not None and poison.poisons(step, env.rank)
                progress.record(train_step(wrapped, optimizer, config, step - 1, batches, env.world_size, device,
                                           autocast, poisoned))
                stopping = vote.agreed() and step < config.max_steps
                if progress.should_log(step) or stopping:
                    progress.log(step)
                if evaluator.should_evaluate(step) and not stopping:
                    progress.leave_out(evaluator.evaluate(step, progress.tokens_per_s))
                if checkpointer.should_save(step) or stopping:
                    checkpointer.save(step)
            except NonFiniteStep as failure:
                vote.agreed()  # its collective ends before the rollback's begin
                try:
                    step = rollback.go_back(failure)
                except Diverged:
                    progress.write(failure.step, "diverged")
                    raise
                progress.restart(step)
                continue
            if stopping:
                progress.write(step, "stopped")
                stop(vote.requested, env, run_dir, step)
    finally:
        vote.close()
    progress.write(config.max_steps, "finished")

    if env.is_main:
        finish(run_dir, model, config, corpus, env, device, start_step, evaluator.final_val_loss(),
               time.perf_counter() - started)
    return model


def stop(requested_here: bool, env: DistEnv, run_dir: Path, step: int) -> None:
    """Leave after the planned stop's checkpoint: the rank that got SIGTERM as stopped, the others so
    that torchrun restarts them (they resume from this step once the group forms again)."""
    if env.is_main:
        record_stop(run_dir, step, warn)
    if requested_here:
        if env.local_rank == 0:
            log(f"stopped on SIGTERM after step {step}; its checkpoint is written, the run resumes from it")
        raise StoppedOnRequest(step)
    raise PeerStopped(f"rank {env.rank}: another rank was asked to stop; the checkpoint of step {step} is "
                      f"written. Exiting ({PEER_STOPPED_EXIT}) so that torchrun restarts the group.")


# What a finished run leaves beside summary.json, whose "sha256" holds their digests.
FINAL_FILES = ("model.pt", "sample.txt", "loss.svg", METRICS_FILE, CONFIG_FILE)


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def finish(run_dir: Path, model: GPT, config: TrainConfig, corpus: Corpus, env: DistEnv,
           device: torch.device, start_step: int, val_loss: float | None, train_seconds: float) -> None:
    """The final model, a sample, the loss chart, and summary.json last."""
    tokenizer = corpus.tokenizer
    write_final_model(run_dir / "model.pt", model, tokenizer)
    start = "\n" if "\n" in tokenizer.index else tokenizer.chars[0]
    text = sample_text(model, tokenizer, start, config.sample_chars, config.sample_temperature,
                       config.sample_top_k, config.seed, device)
    checkpoint.atomic_write_text(run_dir / "sample.txt", text)
    log(f"sample ({config.sample_chars} characters):\n{text}")
    plot_losses(run_dir / METRICS_FILE, run_dir / "loss.svg")
    # The deployment checks the files it fetches against these (install_artifacts.py).
    digests = {name: file_sha256(run_dir / name) for name in FINAL_FILES}
    summary = {"status": "complete", "final_step": config.max_steps, "world_size": env.world_size,
               "final_val_loss": val_loss, "resumed_from_step": start_step or None,
               "train_seconds": round(train_seconds, 3), "corpus_sha256": corpus.sha256,
               "config": config.to_dict(), "experiment": experiment_id(config, corpus.sha256),
               "sha256": digests}
    checkpoint.atomic_write_json(run_dir / "summary.json", summary)
    log(f"done: final val loss {val_loss if val_loss is None else round(val_loss, 4)}; outputs in {run_dir}")


def train(data: Path, preset: str, run_dir: Path, assignments: list[str]) -> GPT | None:
    """Check every input, then join the process group and train. Returns this rank's model, or None
    when it stopped on SIGTERM before the last step."""
    distributed.check_node_rank()
    env = distributed.read_env()
    pause, poison = checkpoint_pause(), nonfinite_loss()
    # Every rank checks what its host's run directory holds before anyone joins the group.
    inputs = check_inputs(data, preset, assignments, env.world_size, None, warn)
    config, corpus = inputs.config, inputs.corpus
    # Each host's first process sets aside the checkpoints that do not load or verify.
    resume = find_resume_state(Path(run_dir), config, corpus, warn, env.local_rank == 0, host_label())
    corpus.ids  # the corpus as tensors now, not within the first step's time
    device = distributed.choose_device(config.device, env)
    distributed.init_process_group(env, device, config.dist_timeout_s,
                                   log=log if env.local_rank == 0 else (lambda message: None))
    watch = None
    try:
        watch = watch_peers(env, config.dead_peer_timeout_s)
        model = run(config, corpus, Path(run_dir), env, resume, device, pause, poison)
        # Rank 0 wrote the outputs meanwhile: every rank leaves the group at the same time.
        distributed.barrier()
        return model
    except StoppedOnRequest:
        return None
    except RuntimeError as error:
        failure = distributed.peer_failure(error, env.rank, config.dist_timeout_s)
        if failure is None:
            raise
        raise failure from error
    finally:
        if watch:
            watch.stop()
        distributed.shutdown()
