"""What this machine's CPU can do in bf16, for the precision choice (``--bf16-autocast``).

bf16 autocast pays on CPUs whose bf16 matrix units outrun fp32: with AMX, a 1,024-square matmul
ran at 1,045-1,310 GFLOP/s in bf16 against 266-320 in fp32 (a 2-core Xeon, 2026-12-06). The flags
alone do not say that: on a Xeon whose hypervisor showed AVX512-BF16 but not AMX, the same matmul
ran at 164-167 GFLOP/s in bf16 against 318-321 in fp32 (oneDNN's AVX512-BF16 kernel against MKL's
fp32 one), and a mid-size bf16 training step was 1.7x slower than fp32's. The instructions say
why (``scripts/bench_isa.py``): there AVX512-BF16's ``vdpbf16ps`` issued at a quarter of the fp32
FMA's rate, so its 64 FLOP per instruction gave half the fp32 peak (85 against 174 GFLOP/s per
core). Without any bf16
instruction PyTorch emulates bf16 matmuls, many times slower again (an AVX2-only AMD EPYC: 0.27
GFLOP/s in bf16 against 96 in fp32, a bart_small_preln step 25x slower). So where the flags
promise bf16, ``bf16_and_fp32_gflops`` measures it.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU's feature flags, or None where they cannot be read (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def cpu_bf16_matmul(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """True where the CPU has bf16 matrix instructions, False where it lacks them, None if unknown."""
    flags = cpu_flags(cpuinfo)
    return None if flags is None else any(f in flags for f in BF16_FLAGS)


def bf16_emulated() -> bool:
    """True where bf16 matmuls would run emulated: on a CPU (no CUDA) whose flags lack every bf16
    instruction. Benchmarks of bf16 leave such runs out unless asked: an emulated product is
    hundreds of times slower than fp32's and says nothing about what they measure."""
    return not torch.cuda.is_available() and cpu_bf16_matmul() is False


EMULATED_BF16 = (f"this CPU has no bf16 matrix instructions ({' / '.join(BF16_FLAGS)}), where PyTorch emulates bf16 "
                 "matmuls (0.27 GFLOP/s against 96 in fp32 on an AVX2 AMD EPYC)")


def matmul_gflops(dtype: torch.dtype, n: int = 1024, reps: int = 5) -> float:
    """The best of ``reps`` timings of an ``n`` x ``n`` matmul in ``dtype`` on the CPU, in GFLOP/s
    (after one untimed warm-up call)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def bf16_and_fp32_gflops(n: int = 1024, reps: int = 3) -> tuple[float, float]:
    """(bf16, fp32) GFLOP/s of an ``n``-square matmul on this CPU: under 0.1 s where bf16 has
    matrix instructions. Call it only where ``cpu_bf16_matmul()`` is not False: emulated bf16 takes
    about 8 s per 1,024-square product. (At 512 the Xeon without AMX gave 160 against 177: too close
    to call.)"""
    return matmul_gflops(torch.bfloat16, n, reps), matmul_gflops(torch.float32, n, reps)


def bf16_slower_than_fp32() -> str | None:
    """Why bf16 matmuls are slower than fp32's on this CPU (for a log line), or None where they are
    not, or where the flags cannot be read. Measures (``bf16_and_fp32_gflops``) only where the flags
    promise bf16."""
    native = cpu_bf16_matmul()
    if native is False:
        return EMULATED_BF16
    if native:
        bf16, fp32 = bf16_and_fp32_gflops()
        if bf16 < fp32:
            return (f"on this CPU a 1,024-square matmul ran at {bf16:.0f} GFLOP/s in bf16 against {fp32:.0f} in "
                    "fp32 (bf16 instructions without matrix units that outrun fp32's, e.g. AVX512-BF16 without AMX)")
    return None
