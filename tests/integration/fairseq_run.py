"""Run fairseq's command-line tools on the default data and read their JSON logs."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from tests import launcher
from tests.conftest import ROOT

USER_DIR = str(ROOT / "user_dir")

# BART's noise (the task's defaults) at the tiny scale of the tests.
DENOISING = ["--task", "bart_denoising", "--tokens-per-sample", "64"]


def train_args(data: Path, save_dir: Path, updates: int, *extra: str) -> list[str]:
    return [str(data / "bin"), "--user-dir", USER_DIR, "--arch", "bart_tiny_preln", "--cpu", *DENOISING,
            "--criterion", "cross_entropy", "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", "2e-3",
            "--lr-scheduler", "polynomial_decay", "--warmup-updates", "10", "--total-num-update", "200",
            "--max-tokens", "1024", "--max-update", str(updates), "--seed", "7", "--num-workers", "0",
            "--log-format", "json", "--log-interval", "1", "--save-dir", str(save_dir), "--no-epoch-checkpoints",
            "--disable-validation", *extra]


def run(cmd: list[str], env: dict[str, str], timeout: int = 600) -> str:
    """Run ``cmd`` in the repository (from a preloaded interpreter where it is a Python command:
    tests/launcher.py) and return its stdout and stderr; a failure raises with both."""
    out = launcher.run(cmd, env, ROOT, timeout)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[:3])} ... failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout + out.stderr


def fairseq_train(args: list[str], env: dict[str, str], exact: bool = False) -> str:
    if exact:
        return run([sys.executable, str(ROOT / "tests" / "integration" / "fairseq_train_exact.py"), *args], env)
    return run(["fairseq-train", *args], env)


def train_losses(log: str) -> dict[int, float]:
    """{update: loss} from fairseq's `train_inner` JSON lines."""
    losses = {}
    for line in log.splitlines():
        m = re.search(r"train_inner\W.*?(\{.*\})\s*$", line)
        if m:
            rec = json.loads(m.group(1))
            losses[int(rec["num_updates"])] = float(rec["loss"])
    return losses


def resume_runs(make_args, tmp_path: Path, n: int, env: dict[str, str]) -> tuple[dict, dict, str]:
    """2n updates straight, and n updates then a resume to 2n (exact logging both times).

    Args:
        make_args: ``(save_dir, updates) -> fairseq-train arguments``.

    Returns:
        the straight run's losses, the first half's losses, and the resumed run's log.
    """
    straight = train_losses(fairseq_train(make_args(tmp_path / "a", 2 * n), env, exact=True))
    first = train_losses(fairseq_train(make_args(tmp_path / "b", n), env, exact=True))
    return straight, first, fairseq_train(make_args(tmp_path / "b", 2 * n), env, exact=True)
