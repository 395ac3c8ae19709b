"""NVLAMB's CPU passes (``csrc/nvlamb_cpu.c``), compiled on first use and cached.

PyTorch has no fused LAMB kernel, and its multi-tensor CPU operations make one
pass over memory each; see ``csrc/nvlamb_cpu.c`` for the three passes that
replace them. Built by ``cpu_kernels`` (once per machine, cached in
``$BART_EXT_CACHE``). Without a compiler, or with ``BART_EXT_NO_CPU_KERNEL=1``,
``load()`` returns None and NVLAMB uses its multi-tensor path, which computes
the same step.
"""
from __future__ import annotations

import ctypes

from bart_ext import cpu_kernels

_loaded: dict[str, ctypes.CDLL | None] = {}


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    ptr, i64, f32, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    lib.sumsq.argtypes = [ptr, i64, i32]
    lib.sumsq.restype = ctypes.c_double
    lib.lamb_moments.argtypes = [ptr, ptr, ptr, ptr, i64] + [f32] * 7 + [ptr, i32]
    lib.lamb_moments.restype = None
    lib.lamb_apply.argtypes = [ptr, ptr, ptr, i64] + [f32] * 5 + [i32]
    lib.lamb_apply.restype = None
    return lib


KERNEL = cpu_kernels.Kernel("nvlamb_cpu", _bind, "NVLAMB", "the multi-tensor path")


def load() -> ctypes.CDLL | None:
    """The compiled library, or None when disabled or when no compiler works (logged once)."""
    return cpu_kernels.load(KERNEL, _loaded)
