import pytest
import torch

from chargpt.config import build_config
from chargpt.hardware import autocast_context, compute_dtype, cpu_flags

CPU = torch.device("cpu")
ZEN4_FLAGS = frozenset({"avx2", "fma", "avx512f", "avx512_bf16"})
AVX2_FLAGS = frozenset({"avx2", "fma"})


def test_cpu_flags_read_the_kernels_flags_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize("dtype, device, flags, expected", [
    ("auto", "cpu", ZEN4_FLAGS, torch.bfloat16),
    ("auto", "cpu", frozenset({"amx_bf16", "avx512f"}), torch.bfloat16),
    ("auto", "cpu", AVX2_FLAGS, torch.float32),
    ("auto", "cuda", AVX2_FLAGS, torch.bfloat16),
    ("float32", "cpu", ZEN4_FLAGS, torch.float32),
    ("float32", "cuda", ZEN4_FLAGS, torch.float32),
    ("bfloat16", "cpu", AVX2_FLAGS, torch.bfloat16),
])
def test_compute_dtype(dtype, device, flags, expected):
    config = build_config("smoke", {"dtype": dtype}, environ={})
    assert compute_dtype(config, torch.device(device), flags) == expected


def test_autocast_context_runs_matrix_multiplies_in_the_chosen_dtype():
    a, b = torch.randn(4, 8), torch.randn(8, 2)
    with autocast_context(torch.bfloat16, CPU):
        assert (a @ b).dtype == torch.bfloat16
    with autocast_context(torch.float32, CPU):
        assert (a @ b).dtype == torch.float32
