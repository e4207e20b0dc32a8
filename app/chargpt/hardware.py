"""What the trainer makes of the machine it runs on: CPU threads per rank and the compute precision."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from .config import TrainConfig
from .distributed import DistEnv

# CPU flags of native bfloat16 matrix instructions (x86: AVX512-BF16, AMX). Without them oneDNN
# emulates bfloat16 and a step runs slower than in float32.
BFLOAT16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_threads(config: TrainConfig, env: DistEnv) -> int:
    if config.num_threads:
        return config.num_threads
    return max(1, len(os.sched_getaffinity(0)) // max(1, env.local_world_size))


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The flags the kernel reports for the first CPU; none where it does not say (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    return frozenset(line.partition(":")[2].split())


def compute_dtype(config: TrainConfig, device: torch.device, flags: frozenset[str] | None = None) -> torch.dtype:
    """The dtype of the matrix multiplies: bfloat16 autocast where the hardware does bfloat16
    natively (CUDA, or a CPU with BFLOAT16_CPU_FLAGS) unless the config says float32."""
    if config.dtype != "auto":
        return torch.bfloat16 if config.dtype == "bfloat16" else torch.float32
    if device.type == "cuda":
        return torch.bfloat16
    native = BFLOAT16_CPU_FLAGS & (cpu_flags() if flags is None else flags)
    return torch.bfloat16 if native else torch.float32


def autocast_context(dtype: torch.dtype, device: torch.device):
    if dtype == torch.bfloat16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def configure_torch(config: TrainConfig, env: DistEnv, device: torch.device) -> None:
    torch.set_num_threads(cpu_threads(config, env))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
