"""Shared fixtures of the integration tests: LDDL shards of the default data."""
from __future__ import annotations

import re
import sys

import pytest

from tests.conftest import ROOT
from tests.integration.fairseq_run import USER_DIR, run

LENGTH = 128


def preprocess(out, cli_env, *extra):
    return run([sys.executable, str(ROOT / "scripts" / "lddl_preprocess.py"), "--aclsum", "--out", str(out),
                "--target-seq-length", str(LENGTH), "--workers", "2", *extra], cli_env)


@pytest.fixture(scope="session")
def shards(data_dir, cli_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("lddl") / "aclsum"
    log = preprocess(out, cli_env, "--num-shards", "4")
    # 250 papers less the 100 of the summarization test split (held out), less 10 for validation
    assert re.search(r"train: 140 documents \(0 empty dropped, 0 with invalid UTF-8\) -> \d+ samples", log), log
    return out


def lddl_args(data, save_dir, updates, *extra):
    return [str(data), "--user-dir", USER_DIR, "--arch", "bart_tiny_preln", "--cpu", "--task", "bart_denoising",
            "--tokens-per-sample", str(LENGTH), "--criterion", "cross_entropy", "--optimizer", "nvlamb", "--lr",
            "0.03", "--lr-scheduler", "polynomial_decay", "--warmup-updates", "5", "--total-num-update", "100",
            "--batch-size", "8", "--max-update", str(updates), "--seed", "7", "--num-workers", "1",
            "--log-format", "json", "--log-interval", "1", "--save-dir", str(save_dir), "--no-epoch-checkpoints",
            "--disable-validation", *extra]
