"""scripts/gpu_check.sh: its usage and missing-input errors, and the `cuda` marker it selects tests by.

The full rehearsal (prepare, then run on a machine without CUDA: install from the carried files,
CUDA tests skipping, toy benchmark and generation) builds fairseq and takes minutes; it is run by
hand (README, "GPUs")."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def run(*args, **env):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


def test_usage_and_missing_carry_are_clear_errors(tmp_path):
    proc = run()
    assert proc.returncode == 2 and "usage: bash scripts/gpu_check.sh prepare|run" in proc.stderr
    proc = run("run", GPU_CHECK_CARRY=str(tmp_path / "none"), GPU_CHECK_VENV=str(tmp_path / "venv"))
    assert proc.returncode == 1
    assert "no gpu_carry/: run 'bash scripts/gpu_check.sh prepare'" in proc.stderr
    assert not (tmp_path / "venv").exists(), "nothing is created before the inputs are checked"


def test_cuda_marked_tests_are_what_the_check_runs():
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py") if "mark.cuda" in p.read_text())
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "--collect-only", "-p", "no:cacheprovider",
                           *files], capture_output=True, text=True, cwd=ROOT, timeout=300)
    names = [line for line in proc.stdout.splitlines() if "::" in line]
    assert any("flash_attention_on_cuda" in n for n in names)
    assert any("fused_path_on_cuda" in n for n in names)
    assert any("amp_unscales_gradients_once_on_cuda" in n for n in names)
    if not torch.cuda.is_available():
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                              *sorted({n.split("::")[0] for n in names})], capture_output=True, text=True, cwd=ROOT,
                             timeout=300).stdout
        assert f"{len(names)} skipped" in out and "failed" not in out
