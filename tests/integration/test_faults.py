"""A rank dies mid-run: the job ends non-zero with a clear message, and resumes on 1 or 2 ranks."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import ROOT
from tests.integration.conftest import lddl_args
from tests.integration.fairseq_run import fairseq_train, run, train_losses

BOUND_S = 60  # the job must end this long after the kill


def torchrun_cmd(port: int, *args: str) -> list[str]:
    # ports of this file's own: make test runs test files two at a time, and test_distributed.py's
    # 29531-29561 taken at the same moment failed a run with EADDRINUSE
    exe = os.path.join(os.path.dirname(sys.executable), "torchrun")
    return [exe if os.path.exists(exe) else "torchrun", "--nproc-per-node", "2", "--master-port", str(port),
            os.path.join(os.path.dirname(sys.executable), "fairseq-train"), *args]


def wait_for(path, pattern: str, proc, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if re.search(pattern, path.read_text(errors="replace")):
            return
        if proc.poll() is not None:
            raise AssertionError(f"ended before {pattern!r}:\n{path.read_text()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"no {pattern!r} within {timeout} s")


@pytest.fixture(scope="module")
def killed_run(shards, cli_env, tmp_path_factory):
    """2 ranks on LDDL shards, checkpoints every 2 updates; rank 1 is SIGKILLed after update 4's checkpoint."""
    tmp = tmp_path_factory.mktemp("fault")
    log = tmp / "log.txt"
    args = lddl_args(shards, tmp / "ck", 1000, "--save-interval-updates", "2", "--keep-interval-updates", "2",
                     "--dropout", "0")
    with open(log, "w") as out:
        proc = subprocess.Popen(torchrun_cmd(29571, *args), stdout=out, stderr=subprocess.STDOUT, env=cli_env,
                                cwd=ROOT)
        try:
            wait_for(log, r"Saved checkpoint .*\(epoch 1 @ 4 updates", proc, 300)
            victim = next(p for p in psutil.Process(proc.pid).children(recursive=True)
                          if p.environ().get("RANK") == "1" and "fairseq-train" in " ".join(p.cmdline()))
            victim.send_signal(signal.SIGKILL)
            killed = time.time()
            code = proc.wait(timeout=BOUND_S + 30)
            elapsed = time.time() - killed
        finally:
            if proc.poll() is None:
                proc.kill()
    return code, elapsed, log.read_text(errors="replace"), tmp / "ck", args


def test_killing_one_rank_ends_the_job_with_a_clear_error(killed_run):
    code, elapsed, log, _, _ = killed_run
    assert code != 0
    assert elapsed < BOUND_S, f"took {elapsed:.0f} s to end after the kill"
    assert "ChildFailedError" in log and re.search(r"exitcode\s*:\s*-9", log), log[-3000:]


@pytest.mark.parametrize("ranks", [1, 2])
def test_resume_after_the_kill(killed_run, cli_env, tmp_path, ranks):
    _, _, _, ck, args = killed_run
    save = tmp_path / "ck"
    shutil.copytree(ck, save)
    last = max(int(m) for m in re.findall(r"checkpoint_1_(\d+)\.pt", " ".join(os.listdir(save))) or [4])
    resumed_args = [save.as_posix() if a == ck.as_posix() else a for a in args]
    resumed_args[resumed_args.index("--max-update") + 1] = str(last + 2)
    if ranks == 1:
        log = fairseq_train(resumed_args, cli_env)
        assert "checkpoint written by 2 ranks, resuming on 1" in log
    else:
        log = run(torchrun_cmd(29581, *resumed_args), cli_env)
        assert f"resuming epoch 1 of the LDDL shards at batch {last}" in log
    assert "Loaded checkpoint" in log
    assert sorted(train_losses(log)) == [last + 1, last + 2]
