"""Small C kernels for the CPU (``bart_ext/csrc/*.c``), compiled on first use and cached.

A kernel's C file is compiled with the system C compiler (``$CC`` or ``cc``) into
``$BART_EXT_CACHE`` (default ``~/.cache/bart_ext``), keyed by the source, the compiler, the flags
and the CPU, so it compiles once per machine (well under a second) and never again; with OpenMP
where the compiler has it, otherwise single-threaded (the same results). Without a compiler, or
with ``BART_EXT_NO_CPU_KERNEL=1``, ``load()`` returns None and the caller takes its PyTorch path.
Users: NVLAMB's passes (``nvlamb_cpu.py``) and dropout (``dropout.py``).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bart_ext import switches

logger = logging.getLogger(__name__)

CSRC = Path(__file__).with_name("csrc")
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-shared", "-fPIC"]


@dataclass(frozen=True)
class Kernel:
    """One C file.

    Args:
        name: the file's stem in ``csrc/`` and the cached library's prefix.
        bind: sets the ctypes signatures of the library's functions; returns the library.
        user: who uses it, for log lines ("NVLAMB").
        fallback: what the user does without it, for log lines.
    """

    name: str
    bind: Callable[[ctypes.CDLL], ctypes.CDLL]
    user: str
    fallback: str

    @property
    def source(self) -> Path:
        return CSRC / f"{self.name}.c"


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bart_ext"
    return Path(switches.CACHE.get() or default)


def _cpu_signature() -> str:
    try:
        flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def _compile(cc: str, source: Path, out: Path) -> None:
    """Compile to a temporary file, then rename: concurrent ranks never see a half-written library."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        for openmp in (["-fopenmp"], []):  # without OpenMP: same results, one thread
            cmd = [cc, *FLAGS, *openmp, str(source), "-o", tmp, "-lm"]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if proc.returncode == 0:
                os.replace(tmp, out)
                return
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.strip()}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(kernel: Kernel, memo: dict[str, ctypes.CDLL | None]) -> ctypes.CDLL | None:
    """The compiled library, or None when disabled or when no compiler works (logged once per
    process and compiler: ``memo``, keyed by the compiler, holds what was found)."""
    if switches.NO_CPU_KERNEL.get() == "1":
        return None
    cc = os.environ.get("CC", "cc")
    if cc in memo:
        return memo[cc]
    lib = None
    path = shutil.which(cc)
    if path is None:
        logger.warning("%s: no C compiler (%s) found; using %s", kernel.user, cc, kernel.fallback)
    else:
        version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
        key = hashlib.sha256("\0".join([kernel.source.read_text(), version, " ".join(FLAGS), _cpu_signature()])
                             .encode()).hexdigest()[:16]
        out = cache_dir() / f"{kernel.name}-{key}.so"
        try:
            if not out.exists():
                logger.info("%s: compiling %s -> %s", kernel.user, kernel.source.name, out)
                _compile(path, kernel.source, out)
            lib = kernel.bind(ctypes.CDLL(str(out)))
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            logger.warning("%s: could not build the CPU kernel (%s); using %s", kernel.user, e, kernel.fallback)
    memo[cc] = lib
    return lib
