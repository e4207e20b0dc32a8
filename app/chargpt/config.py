"""Training configuration: one validated dataclass, named presets, overrides from CLI and env."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, fields
from typing import Mapping

from .model_config import GPTConfig

ENV_PREFIX = "CHARGPT_"
MIN_DEAD_PEER_TIMEOUT_S = 2.0

# Settings that change how a run is watched or executed, not what it learns: a resumed run may
# change them freely, and they are never compared with the checkpoint's.
RUNTIME_KEYS = frozenset({
    "log_interval", "eval_interval", "eval_batches", "checkpoint_interval", "keep_checkpoints",
    "sample_chars", "sample_temperature", "sample_top_k", "device", "compile", "num_threads",
    "dist_timeout_s", "dead_peer_timeout_s", "allow_config_change"})
# The model's shape: a checkpoint cannot load into another one, so these never change within a run.
# Dropout is a GPTConfig field but no shape: its weights load either way.
MODEL_SHAPE_KEYS = frozenset(field.name for field in fields(GPTConfig)) - {"vocab_size", "dropout"}


class ConfigError(ValueError):
    """A bad preset, key or value; the message names it and says how to fix it."""


@dataclass
class TrainConfig:
    # Model shape.
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64  # context length in characters
    dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True  # the LM head shares the token embedding's weights (GPT-2)
    # The MLP's activation: "relu" (the original demo's) or "gelu" (GPT-2's). ReLU by default: with
    # weights initialised at std 0.02 GELU starts out almost linear and learns slower, and ReLU costs
    # less (docs/PERFORMANCE.md).
    activation: str = "relu"
    # Optimisation. batch_size is the global batch: sequences per step over all ranks.
    batch_size: int = 12
    micro_batch_size: int = 0  # sequences per forward pass on one rank; 0 = the rank's whole share
    max_steps: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    lr_schedule: str = "cosine"  # "cosine" (after warmup) or "constant"
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables clipping
    # Evaluation, logging, checkpoints.
    eval_interval: int = 250
    eval_batches: int = 20  # batches per split per evaluation, shared among the ranks
    log_interval: int = 50
    checkpoint_interval: int = 500
    keep_checkpoints: int = 3
    # Data.
    val_fraction: float = 0.1
    seed: int = 1337
    # Sample written at the end of training.
    sample_chars: int = 500
    sample_temperature: float = 1.0
    sample_top_k: int = 0  # 0 = no top-k filtering
    # Runtime.
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"
    # "auto": bfloat16 autocast on CUDA and on CPUs with bfloat16 instructions (AVX512-BF16, AMX), else
    # float32; or "float32" or "bfloat16".
    dtype: str = "auto"
    compile: bool = False
    num_threads: int = 0  # CPU threads per rank; 0 = the machine's cores divided among local ranks
    dist_timeout_s: float = 600.0
    # A rank whose peer (or the group's store, on the master's host) gave no sign of life for this
    # long leaves, so that torchrun restarts the group (liveness.py); a slow step does not count.
    dead_peer_timeout_s: float = 60.0
    # Resuming a run (one run id, one experiment) refuses changed training settings; this lists,
    # comma-separated, the ones whose change it accepts, e.g. "max_steps" to train longer.
    allow_config_change: str = ""

    def __post_init__(self) -> None:
        for field in fields(self):
            _check_type(field.name, getattr(self, field.name), field.type)
            if field.type == "float":
                _check_finite(field.name, getattr(self, field.name))
        positive = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "max_steps",
                    "eval_interval", "eval_batches", "log_interval", "checkpoint_interval",
                    "keep_checkpoints", "sample_chars")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")
        non_negative = ("micro_batch_size", "warmup_steps", "weight_decay", "grad_clip",
                        "sample_top_k", "num_threads", "min_lr", "seed")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must not be negative")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout={self.dropout} must be in [0, 1)")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction={self.val_fraction} must be between 0 and 1")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}={getattr(self, name)} must be in [0, 1)")
        if self.lr <= 0:
            raise ConfigError(f"lr={self.lr} must be positive")
        if self.min_lr > self.lr:
            raise ConfigError(f"min_lr={self.min_lr} must not exceed lr={self.lr}")
        if self.sample_temperature <= 0:
            raise ConfigError(f"sample_temperature={self.sample_temperature} must be positive")
        if self.dist_timeout_s <= 0:
            raise ConfigError(f"dist_timeout_s={self.dist_timeout_s} must be positive")
        if self.dead_peer_timeout_s < MIN_DEAD_PEER_TIMEOUT_S:
            raise ConfigError(f"dead_peer_timeout_s={self.dead_peer_timeout_s} must be at least "
                              f"{MIN_DEAD_PEER_TIMEOUT_S:g} (seconds): a shorter one takes a late answer for a dead peer")
        _check_choice("activation", self.activation, ("gelu", "relu"))
        _check_choice("lr_schedule", self.lr_schedule, ("cosine", "constant"))
        _check_choice("device", self.device, ("auto", "cpu", "cuda"))
        _check_choice("dtype", self.dtype, ("auto", "float32", "bfloat16"))
        self._check_allowed_changes()

    @property
    def allowed_changes(self) -> frozenset[str]:
        """The keys of allow_config_change."""
        return frozenset(key.strip().lower() for key in self.allow_config_change.split(",") if key.strip())

    def _check_allowed_changes(self) -> None:
        unknown = sorted(self.allowed_changes - _FIELD_TYPES.keys())
        if unknown:
            raise ConfigError(f"allow_config_change names unknown key(s) {', '.join(unknown)}; list config "
                              f"keys, comma-separated, e.g. allow_config_change=max_steps; valid keys: "
                              f"{', '.join(_FIELD_TYPES)}")
        shape = sorted(self.allowed_changes & MODEL_SHAPE_KEYS)
        if shape:
            raise ConfigError(f"allow_config_change names {', '.join(shape)}, which set the model's shape: "
                              "a checkpoint cannot load into another shape, so they can never change within "
                              "a run; remove them from allow_config_change and use a new run id (a new "
                              "--run-dir) for another shape")

    def check_world_size(self, world_size: int) -> None:
        """Reject a world in which a rank would get no sequence of the global batch."""
        if world_size < 1:
            raise ConfigError(f"the world size {world_size} must be at least 1 (nodes x processes per node)")
        if self.batch_size < world_size:
            raise ConfigError(
                f"batch_size={self.batch_size} is smaller than the world size {world_size}; "
                f"set batch_size to at least {world_size}")

    def rank_batch(self, world_size: int, rank: int) -> int:
        """Sequences per step on one rank: the global batch split as evenly as it goes, the first
        batch_size % world_size ranks taking one more."""
        share, extra = divmod(self.batch_size, world_size)
        return share + (1 if rank < extra else 0)

    def micro_batches(self, world_size: int, rank: int) -> list[int]:
        """Sequences per forward pass on one rank, in order: micro_batch_size each (0: the whole
        share at once), the last one what is left."""
        share = self.rank_batch(world_size, rank)
        micro = self.micro_batch_size or share
        return [min(micro, share - start) for start in range(0, share, micro)]

    def loss_divisor(self, sequences: int, world_size: int) -> float:
        """What the mean loss of a micro-batch of that many sequences is divided by before its backward
        pass: DDP averages the ranks' gradients, so the step's gradient is then that of the mean loss
        over the global batch, however unevenly the ranks share it. With an even split into equal
        micro-batches this is their number per rank, as in plain gradient accumulation."""
        return self.batch_size / (sequences * world_size)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict] = {
    # The hyperparameters of the demo this project started from (constant lr, AdamW defaults).
    "original": dict(
        n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, batch_size=64,
        max_steps=5000, lr=3e-4, min_lr=3e-4, lr_schedule="constant", warmup_steps=0,
        weight_decay=0.01, beta2=0.999, grad_clip=0.0, eval_interval=500, eval_batches=200,
        log_interval=100, checkpoint_interval=1000),
    # A small model for two CPU cores. Its LM head is untied because that reaches a given val loss
    # in fewer steps (docs/PERFORMANCE.md); 50 evaluation batches per split keep the noise of the
    # val loss well under the differences between such settings.
    "cpu": dict(tie_embeddings=False, eval_batches=50),
    # A few seconds on two CPU cores; its batch of 12 runs on up to 12 ranks.
    "smoke": dict(
        n_layer=2, n_head=4, n_embd=64, block_size=32, batch_size=12, max_steps=80,
        lr=5e-3, min_lr=5e-4, warmup_steps=5, eval_interval=20, eval_batches=4,
        log_interval=10, checkpoint_interval=40, sample_chars=200),
}

_FIELD_TYPES = {field.name: field.type for field in fields(TrainConfig)}
_DEFAULTS = {field.name: field.default for field in fields(TrainConfig)}


def build_config(preset: str, overrides: Mapping[str, str] | None = None,
                 environ: Mapping[str, str] | None = None) -> TrainConfig:
    """Preset, then CHARGPT_<KEY> environment variables, then explicit overrides (strings)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}")
    values: dict = dict(PRESETS[preset])
    environ = os.environ if environ is None else environ
    for env_name, raw in environ.items():
        if env_name.startswith(ENV_PREFIX):
            key = env_name[len(ENV_PREFIX):].lower()
            values[key] = _parse_value(key, raw, source=f"environment variable {env_name}")
    for key, raw in (overrides or {}).items():
        values[key] = _parse_value(key, raw, source=f"--set {key}")
    return TrainConfig(**values)


def parse_assignments(assignments: list[str]) -> dict[str, str]:
    """Turn ["KEY=VALUE", ...] into a dict, rejecting malformed words."""
    parsed = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{assignment}' is not KEY=VALUE; write e.g. --set max_steps=100")
        parsed[key.strip().lower()] = value.strip()
    return parsed


def _parse_value(key: str, raw: str, source: str):
    if key not in _FIELD_TYPES:
        raise ConfigError(f"unknown config key '{key}' (from {source}); "
                          f"valid keys: {', '.join(_FIELD_TYPES)}")
    kind = _FIELD_TYPES[key]
    try:
        value = _convert(raw, kind)
    except ValueError:
        raise ConfigError(f"bad value '{raw}' for {key} (from {source}): expected {kind}") from None
    if kind == "float":
        _check_finite(key, value, source)
    return value


def _convert(raw: str, kind: str):
    if kind == "bool":
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(raw)
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    return raw


def _check_type(name: str, value, kind: str) -> None:
    expected = {"int": int, "float": (int, float), "bool": bool, "str": str}[kind]
    if isinstance(value, bool) and kind != "bool" or not isinstance(value, expected):
        raise ConfigError(f"{name}={value!r} must be of type {kind}")


def _check_finite(name: str, value: float, source: str | None = None) -> None:
    # float() accepts "nan" and "inf", and NaN passes every range check (each comparison is false).
    if not math.isfinite(value):
        where = f" (from {source})" if source else ""
        raise ConfigError(f"{name}={value} is not a finite number{where}; set {name} to a finite number "
                          f"such as {_DEFAULTS[name]}, or remove the override to keep the preset's value")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}='{value}' is not one of: {', '.join(choices)}")
