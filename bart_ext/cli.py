"""What the command-line scripts share at their entry point."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

FILE_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError)
# What `kill PID`, a scheduler's cancel (SLURM's scancel, `timeout`) and a closed terminal send. By
# default they end Python on the spot: no ``finally`` runs, so a script's training or generation
# processes went on as orphans, writing into the run folder that a rerun would then share with them.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
# How long a stopped child gets to exit after SIGTERM before it is killed.
STOP_GRACE_S = 30.0


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread as an interrupt, so that the cleanup a Ctrl-C gets
    (``finally``, ``except KeyboardInterrupt``, subprocess.run's killing of its process) runs for it too."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # the shell's convention for a process ended by a signal


def interrupt_on_stop_signals() -> dict:
    """Turn SIGTERM and SIGHUP into ``Terminated`` in the main thread (elsewhere: nothing). A signal
    the caller ignores (``nohup`` ignores SIGHUP) stays ignored; a second one during the cleanup is
    ignored, so that the cleanup finishes. Returns the handlers replaced, for ``signal.signal``."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def stop(signum, frame):
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        if _deferring:
            _pending.append(signum)
            return
        raise Terminated(signum)

    return {s: signal.signal(s, stop) for s in STOP_SIGNALS if signal.getsignal(s) == signal.SIG_DFL}


_deferring = 0  # depth of stop_signals_deferred blocks in the main thread
_pending: list[int] = []


@contextlib.contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """A stop signal that arrives within the block (in the main thread) is raised as ``Terminated`` when
    the block ends, not in the middle of it. For starting a child and recording it: raised inside
    ``subprocess.Popen`` after the fork, the interrupt left a child that no cleanup knew of, training on
    as an orphan (the demo's side-by-side fine-tunings, SIGTERM as they started, 2026-12-07)."""
    global _deferring
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring and _pending:
        raise Terminated(_pending.pop())


_children: set[subprocess.Popen] = set()
_children_lock = threading.Lock()
_stopping = threading.Event()


def run_child(cmd: list[str], *, capture_output: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, ...)`` whose process ``stop_children`` reaches from any thread: the
    sweep's runs and the demo's generations wait for theirs in worker threads, which an interrupt
    of the main thread does not reach."""
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    with stop_signals_deferred():  # an interrupt comes once the child is where stop_children finds it
        proc = subprocess.Popen(cmd, **kwargs)
        with _children_lock:
            _children.add(proc)
    with proc:
        try:
            if _stopping.is_set():  # started as the others were being stopped
                proc.terminate()
            out, err = proc.communicate()
        except BaseException:
            proc.kill()  # as subprocess.run does
            raise
        finally:
            with _children_lock:
                _children.discard(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def stopping() -> bool:
    """Whether ``stop_children`` has been called: a child that ended since was stopped, it did not fail."""
    return _stopping.is_set()


def stop_children(grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to every process ``run_child`` is waiting for, SIGKILL to those still running after
    ``grace_s``; children started from now on are stopped at once. For a process that is being
    interrupted: it stays in that state."""
    _stopping.set()
    with _children_lock:
        procs = list(_children)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def children_stopped_on_interrupt() -> Iterator[None]:
    """Around a thread pool whose workers run children: on Ctrl-C, SIGTERM or SIGHUP, stop them before
    the pool's exit waits for its workers, which would otherwise wait for the children to finish."""
    try:
        yield
    except KeyboardInterrupt:
        stop_children()
        raise


def names_its_input(err: BaseException) -> bool:
    """Whether ``err``'s message alone tells the user what to fix: a missing file or folder, or one
    of bart_ext's own error types (ShardError, PositionFillError, UnreadableCheckpointError, ...),
    which are raised with the file or field they are about. Anything else is a bug until shown
    otherwise and keeps its traceback."""
    return isinstance(err, FILE_ERRORS) or type(err).__module__.split(".")[0] == "bart_ext"


def run(main: Callable[[], object]) -> None:
    """Run a script's ``main``; an error that names its input is printed as one line
    (``script.py: message``, exit status 1) instead of a traceback. ``BART_EXT_TRACEBACK=1`` keeps
    the traceback. Ctrl-C, SIGTERM and SIGHUP stop it with its child processes and end it with one line
    and the status a shell gives a process ended by that signal (130, 143, 129)."""
    replaced = interrupt_on_stop_signals()
    try:
        main()
    except Terminated as err:
        stop_children()
        print(f"{Path(sys.argv[0]).name}: stopped by {err}", file=sys.stderr, flush=True)
        sys.exit(err.exit_status)
    except KeyboardInterrupt:
        stop_children()  # a Ctrl-C reaches them too, but `kill -INT` reaches only this process
        if os.environ.get("BART_EXT_TRACEBACK"):
            raise
        print(f"{Path(sys.argv[0]).name}: interrupted", file=sys.stderr, flush=True)
        sys.exit(128 + signal.SIGINT)
    except Exception as err:
        if not names_its_input(err) or os.environ.get("BART_EXT_TRACEBACK"):
            raise
        sys.exit(f"{Path(sys.argv[0]).name}: {err}")
    finally:
        for signum, handler in replaced.items():  # as they were, for a caller in the same process
            signal.signal(signum, handler)


def check_at_least(parser, args, **minimums) -> None:
    """argparse's own error (usage, exit status 2) for the first option below its minimum, before the script
    does anything: ``check_at_least(ap, args, updates=1)`` checks ``--updates``; an option left at None
    is not checked."""
    for name, low in minimums.items():
        value = getattr(args, name)
        if value is not None and value < low:
            parser.error(f"--{name.replace('_', '-')} {value}: expected at least {low}")


def progress_bar(total: int, batch_size: int, progress: bool | None, what: str):
    """A tqdm bar over ``total`` texts on standard error (the Python API, scripts/classify.py): shown when
    ``progress`` is True, or by default (None) when the work takes more than one batch and standard error is
    a terminal."""
    from tqdm import tqdm

    show = progress if progress is not None else total > batch_size and sys.stderr.isatty()
    return tqdm(total=total, desc=f"bart_ext {what}", unit=" texts", disable=not show, file=sys.stderr,
                leave=False, dynamic_ncols=True)
