"""tests/launcher.py: a command run from the preloaded interpreter behaves as in a fresh one."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests import launcher
from tests.conftest import ROOT

PROBE = """
import atexit, json, logging, os, sys
atexit.register(lambda: print("atexit ran", flush=True))
if sys.argv[1] == "config-first":  # as fairseq_cli.train does: logging set up before fairseq is imported
    logging.basicConfig(format="%(levelname)s | %(name)s | %(message)s", level="INFO", stream=sys.stdout)
import fairseq  # one of its modules calls logging.basicConfig when imported
import torch
logging.getLogger("fairseq.probe").info("an info line")
logging.getLogger("fairseq.probe").warning("a warning line")
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0], "stdin": sys.stdin.read(),
                  "probe": os.environ.get("PROBE"), "threads": torch.get_num_threads(), "name": __name__,
                  "root_handlers": len(logging.getLogger().handlers)}), flush=True)
print("to stderr", file=sys.stderr)
if sys.argv[2] == "raise":
    raise ValueError("boom")
if sys.argv[2] == "message":
    sys.exit("stopped: a message")
sys.exit(int(sys.argv[2]))
"""


def routed(env: dict[str, str]) -> dict[str, str]:
    """``env`` without ``BART_EXT_TEST_FRESH`` (a suite run with it set still tests the zygote here)."""
    return {k: v for k, v in env.items() if k != "BART_EXT_TEST_FRESH"}


def both(cmd, env, cwd, timeout=120):
    """The command's result in a fresh interpreter and from the zygote."""
    fresh = launcher.run(cmd, {**env, "BART_EXT_TEST_FRESH": "1"}, cwd, timeout)
    forked = launcher.run(cmd, routed(env), cwd, timeout)
    return fresh, forked


@pytest.fixture
def probe(tmp_path) -> Path:
    script = tmp_path / "scripts" / "probe.py"
    script.parent.mkdir()
    script.write_text(PROBE)
    return script


@pytest.mark.parametrize("logging_first,ending", [("config-first", "3"), ("fairseq-first", "0"),
                                                   ("config-first", "raise"), ("fairseq-first", "message")])
def test_a_script_runs_as_in_a_fresh_interpreter(probe, cli_env, tmp_path, logging_first, ending):
    env = {**cli_env, "PROBE": "value", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}  # a zygote of its own
    fresh, forked = both([sys.executable, str(probe), logging_first, ending], env, tmp_path)
    assert launcher._zygotes, "the command did not go through the zygote"
    want_rc = {"0": 0, "3": 3, "raise": 1, "message": 1}[ending]
    assert fresh.returncode == forked.returncode == want_rc
    assert fresh.stdout == forked.stdout
    assert '"probe": "value"' in forked.stdout and '"threads": 2' in forked.stdout
    assert f'"path0": "{probe.parent}"' in forked.stdout and '"name": "__main__"' in forked.stdout
    assert "an info line" in forked.stdout + forked.stderr and forked.stdout.rstrip().endswith("atexit ran")
    assert fresh.stderr.splitlines()[-1] == forked.stderr.splitlines()[-1]
    if ending == "raise":
        assert "Traceback (most recent call last)" in forked.stderr and forked.stderr.endswith("ValueError: boom\n")
    if ending == "message":
        assert forked.stderr.endswith("stopped: a message\n")


def test_fairseqs_console_scripts_go_through_it_and_nothing_else(cli_env, tmp_path):
    fresh, forked = both(["fairseq-train", "--help"], cli_env, tmp_path)
    assert fresh.returncode == forked.returncode == 0 and fresh.stdout == forked.stdout
    assert "--user-dir" in forked.stdout
    assert launcher._script(["fairseq-train"], cli_env) == str(Path(sys.executable).parent / "fairseq-train")
    for cmd in (["torchrun", "x.py"], [sys.executable, "-c", "pass"], ["bash", "x.py"], ["fairseq-nonexistent"]):
        assert launcher._script(cmd, cli_env) is None


def test_a_timeout_kills_the_command_and_the_zygote_goes_on(tmp_path, cli_env):
    script = tmp_path / "sleep.py"
    script.write_text("import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as e:
        launcher.run([sys.executable, str(script)], routed(cli_env), tmp_path, timeout=3)
    assert time.monotonic() - start < 30 and b"started" in e.value.output
    ok = launcher.run([sys.executable, str(script).replace("sleep.py", "ok.py")], routed(cli_env), tmp_path, 60)
    assert ok.returncode == 2 and "No such file" in ok.stderr  # as `python missing.py` ends
    (tmp_path / "ok.py").write_text("print('fine')\n")
    assert launcher.run([sys.executable, str(tmp_path / "ok.py")], routed(cli_env), tmp_path, 60).stdout == "fine\n"


def test_the_preloaded_modules_configure_no_logging_and_start_no_thread(cli_env):
    code = textwrap.dedent(f"""
        import importlib, logging, threading
        for name in {launcher.PRELOAD!r}:
            importlib.import_module(name)
        print(len(logging.getLogger().handlers), logging.getLogger().level, threading.active_count())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "30", "1"]  # no handler, the root logger at WARNING, one thread
