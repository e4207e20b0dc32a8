"""The memory a run needs on each host, from its config alone: `chargpt check` refuses a run that
cannot fit before any host changes. No torch here: the preflight runs it on the control node.

One training process holds, at its peak: the fixed cost of a torch process (the library, Gloo),
the corpus (its text and its int64 ids), the float32 weights, their gradients, AdamW's two float32
states per weight, the bfloat16 copies of the weights that autocast makes when it may run in
bfloat16, DDP's all-reduce buckets with more than one rank, and then the larger of two things that
never coincide: the activations that one micro-batch keeps for its backward pass (with the
transients of that pass), or a checkpoint's serialised copy of the weights and the optimizer
(written after the step, when the activations are gone).
The coefficients were fitted to measured peaks and err on the large side: benchmarks/memory_estimate.py
prints both side by side, and docs/PERFORMANCE.md keeps its figures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from .config import ConfigError, TrainConfig
from .model_config import model_args

GIB = 2**30
# Measured (benchmarks/memory_estimate.py): a process that imported torch, joined its process group and
# trained a tiny model takes 0.30 GiB; torchrun's agent, one per host, 0.21 GiB.
TORCH_PROCESS_BYTES = 384 * 2**20
LAUNCHER_BYTES = 256 * 2**20
# Float32 values per token and channel that a transformer block holds for its backward pass, with
# the transients of that pass: 12 are saved (LayerNorms, q, k and v, the attention's output, the
# MLP's 4C-wide input and activation), the rest is the backward's and the allocator's.
BLOCK_VALUES = 18
# With dropout the CPU's attention runs its math kernel, which keeps the T x T attention weights
# (before and after dropout, and the mask) per head, and the dropout masks beside the residuals.
# Its transient T x T buffers below glibc's largest mmap threshold (32 MiB; 64 MiB here for margin)
# stay in the heap once freed, and fragment it: they then cost more than twice as much (measured on the
# `original` preset with micro-batches of 4 to 64 sequences).
BLOCK_VALUES_WITH_DROPOUT = 20
ATTENTION_VALUES_WITH_DROPOUT = 5
ATTENTION_VALUES_IN_THE_HEAP = 12
HEAP_TENSOR_BYTES = 64 * 2**20
# Per token: the embeddings and the final LayerNorm (per channel); the logits, their log-softmax and
# their gradient (per vocabulary entry).
EDGE_VALUES = 4
LOGIT_VALUES = 4
# A checkpoint in memory before it is written: the weights and AdamW's two moments (12 bytes a weight),
# with the buffer's growth.
CHECKPOINT_BYTES_PER_PARAMETER = 14
# Docker's notation (go-units RAMInBytes): a number, then b, k, m, g, t or p in 1024s.
_DOCKER_SIZE = re.compile(r"^(\d+(?:\.\d+)?) ?([kmgtp])?i?b?$", re.IGNORECASE)


@dataclass(frozen=True)
class MemoryEstimate:
    parts: dict[str, int]  # of one training process, in bytes
    processes: int  # training processes per host
    micro_batch: int  # sequences per forward pass (the largest micro-batch of any rank)
    checkpoint_bytes: int  # a checkpoint in memory, which the activations' room holds after the step
    activations_of: Callable[[int], int] = field(repr=False, compare=False)  # the activations of a micro-batch of so many sequences

    @property
    def process_bytes(self) -> int:
        return sum(self.parts.values())

    @property
    def host_bytes(self) -> int:
        """What one host needs: its training processes and torchrun's agent."""
        return self.processes * self.process_bytes + LAUNCHER_BYTES

    def report(self) -> dict:
        return {"process_bytes": self.process_bytes, "host_bytes": self.host_bytes,
                "processes_per_host": self.processes, "parts": dict(self.parts)}

    def largest_micro_batch(self, limit: int) -> int:
        """The largest micro_batch_size under which the host fits in limit bytes; 0 if none does."""
        fixed = self.host_bytes - self.processes * (self.parts["activations"] + self.parts["checkpoint"])
        room = (limit - fixed) // self.processes  # what the activations, or else a checkpoint, may take
        if room < self.checkpoint_bytes:
            return 0
        return next((size for size in range(self.micro_batch, 0, -1) if self.activations_of(size) <= room), 0)


def estimate(config: TrainConfig, vocab_size: int, corpus_chars: int, text_bytes: int, world_size: int,
             processes: int) -> MemoryEstimate:
    """The peak of one training process of config, and of a host that runs `processes` of them."""
    parameters = model_args(config, vocab_size).parameter_count()
    micro_batch = max(config.micro_batches(world_size, 0))
    may_be_bfloat16 = config.dtype != "float32"  # "auto" depends on the host's CPU: assume it may
    # Weights, gradients, AdamW's two moments; autocast's bfloat16 copies; DDP's buckets.
    weights = (16 + 2 * may_be_bfloat16 + 4 * (world_size > 1)) * parameters
    parts = {
        "torch": TORCH_PROCESS_BYTES,
        # The text, and its ids as a list and as the int64 tensor made from it.
        "corpus": text_bytes + 16 * corpus_chars,
        "model_and_optimizer": weights,
        "activations": activation_bytes(config, vocab_size, micro_batch),
    }
    # A checkpoint is written after the step, when the activations are gone: the larger of the two.
    checkpoint = CHECKPOINT_BYTES_PER_PARAMETER * parameters
    parts["checkpoint"] = max(0, checkpoint - parts["activations"])
    return MemoryEstimate(parts, processes, micro_batch, checkpoint,
                          lambda sequences: activation_bytes(config, vocab_size, sequences))


def activation_bytes(config: TrainConfig, vocab_size: int, sequences: int) -> int:
    """What a micro-batch of that many sequences holds during its forward and backward pass, in bytes."""
    tokens, width = config.block_size, config.n_embd
    per_sequence = EDGE_VALUES * tokens * width + LOGIT_VALUES * tokens * vocab_size
    if not config.dropout:
        return 4 * sequences * (per_sequence + config.n_layer * BLOCK_VALUES * tokens * width)
    per_sequence += config.n_layer * BLOCK_VALUES_WITH_DROPOUT * tokens * width
    attention = config.n_layer * config.n_head * tokens * tokens  # per sequence
    # The larger of: every attention buffer mmapped, or those of the largest micro-batch whose buffers
    # stay in the heap (so that the estimate grows with the micro-batch).
    in_heap = min(sequences, max(1, HEAP_TENSOR_BYTES // (4 * config.n_head * tokens * tokens)))
    return 4 * max(sequences * (per_sequence + ATTENTION_VALUES_WITH_DROPOUT * attention),
                   in_heap * (per_sequence + ATTENTION_VALUES_IN_THE_HEAP * attention))


def parse_size(text: str) -> int:
    """A memory size in Docker's notation ("8g", "512m", "1.5GiB", "1024") in bytes."""
    match = _DOCKER_SIZE.match(text.strip())
    if match is None:
        raise ConfigError(f"memory limit {text!r} is not a size such as 8g, 512m or 1.5g")
    number, unit = match.groups()
    return int(float(number) * 1024 ** ("bkmgtp".index(unit.lower()) if unit else 0))


def check_fits(memory: MemoryEstimate, limit: int, limit_text: str, config: TrainConfig) -> None:
    """Raise ConfigError, naming the estimate, the limit and what to change, when a host would not fit."""
    if memory.host_bytes <= limit:
        return
    need = (f"{memory.processes} processes of {gib(memory.process_bytes)} and torchrun's agent"
            if memory.processes > 1 else f"one process of {gib(memory.process_bytes)} and torchrun's agent")
    refused = (f"this run needs about {gib(memory.host_bytes)} of memory on each host ({need}), more than the "
               f"memory limit of {gib(limit)} ({limit_text})")
    # What the host needs before any model: its torch processes (the library, the corpus) and the agent.
    floor = memory.processes * (memory.parts["torch"] + memory.parts["corpus"]) + LAUNCHER_BYTES
    if limit <= floor:
        raise ConfigError(f"{refused}, which is below the {gib(floor)} its trainers take before any model (each "
                          f"torch process {gib(memory.parts['torch'])} with the corpus, and torchrun's agent): "
                          f"raise the limit above {gib(memory.host_bytes)}"
                          + ("; or run fewer processes per host" if memory.processes > 1 else ""))
    micro = memory.largest_micro_batch(limit)
    fixes = []
    if micro:
        fixes.append(f"set micro_batch_size={micro} or lower (a micro-batch of {memory.micro_batch} sequences "
                     f"holds {gib(memory.parts['activations'])} of activations; the global batch stays "
                     f"batch_size={config.batch_size})")
    else:
        fixes.append(f"make the model smaller (n_layer={config.n_layer}, n_embd={config.n_embd}: weights, "
                     f"gradients and optimizer take {gib(memory.parts['model_and_optimizer'])}) or its "
                     f"micro-batches (micro_batch_size)")
    if memory.processes > 1:
        fixes.append("run fewer processes per host")
    fixes.append(f"give each host more than {gib(memory.host_bytes)}")
    raise ConfigError(f"{refused}: {'; or '.join(fixes)}")


def gib(size: int) -> str:
    return f"{size / GIB:.2f} GiB"
