"""Writing files that a rerun skips when they exist: whole or not at all.

Set-up steps (``make data``, the demo's vocabulary) skip a file that is there, so a file cut short
by Ctrl-C or a crash would be taken as done and used. These write ``NAME.tmp`` beside the file and
rename it into place, which is atomic on one file system."""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def write_atomic(path: Path | str, data: str | bytes, encoding: str = "utf-8") -> Path:
    """Write ``data`` (text or bytes) to ``path`` through ``path.tmp`` and a rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data, encoding=encoding)
    os.replace(tmp, path)
    return path


def copy_atomic(src: Path | str, dst: Path | str) -> Path:
    """Copy ``src`` to ``dst`` through ``dst.tmp`` and a rename."""
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst


class InputError(ValueError):
    """Input data that cannot be used as it is; the message names the file (and line) and what to fix."""


class InUseError(RuntimeError):
    """A run folder another process is working in; the message names the folder and that process."""


@contextlib.contextmanager
def exclusive(lock: Path, what: str) -> Iterator[None]:
    """Hold ``lock`` (a file lock) while the body runs. Another process asking for it meanwhile is
    refused at once with an ``InUseError`` naming ``what`` and the holder's pid: two demos or two
    sweeps in one folder would resume the same runs at once and write the same checkpoints. The
    kernel lets go of the lock when its holder ends, however it ends (SIGKILL included), so a lock
    file left behind never blocks a later run."""
    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by the commands a run starts
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise InUseError(f"{what} is in use by another process (pid {holder}, holding {lock}): wait for it "
                             "to end or stop it, or choose another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def read_lines(path: Path | str) -> list[str]:
    """The lines of UTF-8 text file ``path``, without their ends, as fairseq-preprocess reads them: Python's
    universal newlines, so ``\\n``, ``\\r\\n`` or a lone ``\\r`` ends a line, and nothing else does.

    ``str.splitlines`` also ends a line at U+2028, U+2029, U+0085 and ``\\x0b``, ``\\x0c``, ``\\x1c``-``\\x1e``,
    which news text (CNN-DM, XSum) carries inside a document: one-document-per-line files then had more
    "lines" than ``wc -l`` and fairseq count, a document and its summary no longer had the same line
    number, and where both files held such a character the pairs after it were silently shifted."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines
