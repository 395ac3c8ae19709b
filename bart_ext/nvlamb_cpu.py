"""NVLAMB's CPU passes (``csrc/nvlamb_cpu.c``), compiled on first use and cached.

PyTorch has no fused LAMB kernel, and its multi-tensor CPU operations make one
pass over memory each; see ``csrc/nvlamb_cpu.c`` for the three passes that
replace them. The C file is compiled with the system C compiler (``$CC`` or
``cc``) into ``$BART_EXT_CACHE`` (default ``~/.cache/bart_ext``), keyed by the
source, the compiler and the CPU, so it compiles once per machine (well under
a second) and never again. Without a compiler, or with
``BART_EXT_NO_CPU_KERNEL=1``, ``load()`` returns None and NVLAMB uses its
multi-tensor path, which computes the same step.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from bart_ext import switches

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "nvlamb_cpu.c"
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-shared", "-fPIC"]
_loaded: dict[str, ctypes.CDLL | None] = {}


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bart_ext"
    return Path(switches.CACHE.get() or default)


def _cpu_signature() -> str:
    try:
        flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def _compile(cc: str, out: Path) -> None:
    """Compile to a temporary file, then rename: concurrent ranks never see a half-written library."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        for openmp in (["-fopenmp"], []):  # without OpenMP: same results, one thread
            cmd = [cc, *FLAGS, *openmp, str(SOURCE), "-o", tmp, "-lm"]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if proc.returncode == 0:
                os.replace(tmp, out)
                return
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.strip()}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    ptr, i64, f32, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    lib.sumsq.argtypes = [ptr, i64, i32]
    lib.sumsq.restype = ctypes.c_double
    lib.lamb_moments.argtypes = [ptr, ptr, ptr, ptr, i64] + [f32] * 7 + [ptr, i32]
    lib.lamb_moments.restype = None
    lib.lamb_apply.argtypes = [ptr, ptr, ptr, i64] + [f32] * 5 + [i32]
    lib.lamb_apply.restype = None
    return lib


def load() -> ctypes.CDLL | None:
    """The compiled library, or None when disabled or when no compiler works (logged once)."""
    if switches.NO_CPU_KERNEL.get() == "1":
        return None
    cc = os.environ.get("CC", "cc")
    if cc in _loaded:
        return _loaded[cc]
    lib = None
    path = shutil.which(cc)
    if path is None:
        logger.warning("NVLAMB: no C compiler (%s) found; using the multi-tensor path", cc)
    else:
        version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
        key = hashlib.sha256("\0".join([SOURCE.read_text(), version, " ".join(FLAGS), _cpu_signature()])
                             .encode()).hexdigest()[:16]
        out = cache_dir() / f"nvlamb_cpu-{key}.so"
        try:
            if not out.exists():
                logger.info("NVLAMB: compiling %s -> %s", SOURCE.name, out)
                _compile(path, out)
            lib = _bind(ctypes.CDLL(str(out)))
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            logger.warning("NVLAMB: could not build the CPU kernel (%s); using the multi-tensor path", e)
    _loaded[cc] = lib
    return lib
