"""What this machine's CPU can do in bf16, for the precision choice (``--bf16-autocast``).

bf16 autocast pays on CPUs with bf16 matrix instructions (AVX512-BF16, AMX); on others PyTorch
emulates bf16 matmuls, and a bf16 step is many times slower than fp32 (on an AVX2-only AMD EPYC:
a 2,048 x 2,048 matmul ran at 0.27 GFLOP/s in bf16 against 96 in fp32, and a training step of
bart_small_preln 25x slower).
"""
from __future__ import annotations

from pathlib import Path

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
