"""Shared fixtures: the fairseq plugin on sys.path and the prepared default data."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `import user_dir` as fairseq's --user-dir loader does

# `make test` runs two pytest-xdist workers (--dist loadfile): much of the suite's time is processes
# starting (Python, torch and fairseq imports) one core at a time, which tests/launcher.py shortens.
# Each worker, and every process it starts, then computes on one thread (before torch is imported):
# two 2-thread torch jobs at once on two cores run 3-5x slower than one.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The binarized aclsum corpus (scripts/prepare_data.py; `make test` prepares it first)."""
    out = ROOT / "data" / "aclsum"
    if not (out / "bin" / "dict.txt").exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "prepare_data.py"), "--out", str(out)],
                       check=True, cwd=ROOT)
    return out


@pytest.fixture(scope="session")
def cli_env() -> dict[str, str]:
    """Environment for fairseq's console scripts: the venv's bin first, one thread per process."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("OMP_NUM_THREADS", "2")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one; scripts/gpu_check.sh runs them)")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)
