"""fairseq's console scripts and our scripts, started from a preloaded interpreter.

Most of the suite's time is processes starting: every fairseq command first imports torch,
scikit-learn (fairseq's sentence_prediction criterion), scipy, pandas, hydra, ... here 3.8 of the
4.9 s its imports take, before it does anything, and the suite starts about 130 of them. A
"zygote" per pytest worker imports those third-party modules once and forks a child per command.
The child then runs the command as a fresh interpreter would: its argv, environment, working
directory, ``sys.path[0]`` (the script's folder), stdin from /dev/null, stdout and stderr at file
descriptors 1 and 2, its exit status (``SystemExit`` as Python maps it, a traceback and 1 for an
uncaught exception, atexit handlers run).

What is not preloaded is imported by the child itself, so its import-time behaviour is a fresh
process's: fairseq (``fairseq_cli.train`` sets up logging *before* it imports fairseq, and one of
fairseq's own modules calls ``logging.basicConfig`` at import), the plugin, and bart_ext, whose
switches read the environment at import. The preloaded modules configure no logging and start no
thread (``test_launcher.py`` checks both); a command whose environment differs from the zygote's
in what they may read when they load (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``TORCH_*``, ...)
gets a zygote of its own.

``BART_EXT_TEST_FRESH=1`` runs every command in a fresh interpreter instead, as before.

Run as a script, this file is the zygote: one JSON request per line on stdin, answered with the
child's pid and then its exit status on stdout.
"""
from __future__ import annotations

import atexit
import importlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Third-party modules that fairseq imports and that configure nothing at import time.
PRELOAD = ("numpy", "torch", "scipy.stats", "sklearn.metrics", "pandas", "pyarrow", "omegaconf", "hydra",
           "tensorboardX", "sacrebleu")
# Environment variables that the preloaded modules may read when they load: a command whose
# environment sets any of them differently gets a zygote of its own.
IMPORT_TIME_PREFIXES = ("OMP_", "MKL_", "KMP_", "OPENBLAS_", "TORCH", "PYTORCH_", "CUDA_", "LD_", "PYTHON")


def _exit_code(code) -> int:
    """A ``SystemExit`` code as the interpreter turns it into an exit status."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _child(request: dict, closing: list[int]) -> None:
    """The forked child: become the command and never return."""
    code = 1
    try:
        for fd in closing:
            os.close(fd)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        script = request["argv"][0]
        sys.argv = list(request["argv"])
        if not os.path.isfile(script):  # as `python MISSING.py` ends
            print(f"{sys.executable}: can't open file {os.path.abspath(script)!r}: [Errno 2] No such file or directory",
                  file=sys.stderr)
            raise SystemExit(2)
        sys.path[0] = os.path.dirname(os.path.realpath(script))  # as `python SCRIPT` sets it
        import runpy

        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as e:
        code = _exit_code(e.code)
    except BaseException:  # noqa: BLE001 - reported as the interpreter reports it
        sys.excepthook(*sys.exc_info())
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> None:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    answers = os.fdopen(os.dup(1), "w")
    requests = sys.stdin.buffer
    while True:
        line = requests.readline()
        if not line:
            return
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request, [answers.fileno()])
        answers.write(json.dumps({"pid": pid}) + "\n")
        answers.flush()
        _, status = os.waitpid(pid, 0)
        answers.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n")
        answers.flush()


class Zygote:
    """One preloaded interpreter (see the module's docstring); commands run one at a time."""

    def __init__(self, env: dict[str, str]):
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, cwd=Path(__file__).parent, text=True)
        self.pending = b""  # answers read but not yet taken

    def _answer(self, timeout: float | None) -> dict | None:
        """The zygote's next answer, or None after ``timeout`` seconds without one."""
        fd = self.proc.stdout.fileno()
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                return None
            data = os.read(fd, 4096)
            if not data:
                raise RuntimeError(f"the test launcher's zygote (pid {self.proc.pid}) exited ({self.proc.poll()})")
            self.pending += data
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def run(self, argv: list[str], env: dict[str, str], cwd: str, timeout: float | None) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory(prefix="launch") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            request = {"argv": argv, "env": env, "cwd": str(cwd), "stdout": str(out), "stderr": str(err)}
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            pid = self._answer(60)["pid"]
            done = self._answer(timeout)
            if done is None:
                os.kill(pid, signal.SIGKILL)
                self._answer(60)
                raise subprocess.TimeoutExpired(argv, timeout, out.read_bytes(), err.read_bytes())
            read = lambda p: p.read_bytes().decode("utf-8", errors="replace")  # noqa: E731
            return subprocess.CompletedProcess(argv, done["rc"], read(out), read(err))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


_zygotes: dict[tuple, Zygote] = {}


def _script(cmd: list[str], env: dict[str, str]) -> str | None:
    """The Python file that ``cmd`` would run in this interpreter, or None: ``sys.executable FILE.py
    ...`` or one of fairseq's console scripts (a ``fairseq-*`` file on the command's PATH whose
    first line starts this interpreter)."""
    if cmd[0] == sys.executable and len(cmd) > 1 and cmd[1].endswith(".py"):
        return cmd[1]
    if cmd[0].startswith("fairseq-") and os.sep not in cmd[0]:
        found = shutil.which(cmd[0], path=env.get("PATH"))
        if found:
            with open(found, "rb") as f:
                if f.readline().strip() == b"#!" + os.fsencode(sys.executable):
                    return found
    return None


def run(cmd: list[str], env: dict[str, str] | None = None, cwd=None, timeout: float | None = None
        ) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, env=env, cwd=cwd, timeout=timeout, capture_output=True, text=True)``,
    from a preloaded interpreter where ``cmd`` runs a Python file in this interpreter."""
    env = dict(os.environ) if env is None else env
    cwd = os.getcwd() if cwd is None else cwd
    script = None if env.get("BART_EXT_TEST_FRESH") == "1" or os.name != "posix" else _script(cmd, env)
    if script is None:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    key = tuple(sorted((k, v) for k, v in env.items() if k.startswith(IMPORT_TIME_PREFIXES)))
    if key not in _zygotes:
        _zygotes[key] = Zygote(env)
    argv = [script, *cmd[1:]] if cmd[0] != sys.executable else cmd[1:]
    return _zygotes[key].run(argv, env, cwd, timeout)


@atexit.register
def close_all() -> None:
    while _zygotes:
        _zygotes.popitem()[1].close()


if __name__ == "__main__":
    serve()
