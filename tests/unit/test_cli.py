"""The scripts' entry point: errors that name their input print one line, anything else keeps its
traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bart_ext.cli import names_its_input, run
from bart_ext.lddl_data import ShardError

ROOT = Path(__file__).resolve().parents[2]


def _raise(err: BaseException):
    def main():
        raise err
    return main


def test_errors_that_name_their_input_become_one_line(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/somewhere/prepare.py"])
    monkeypatch.delenv("BART_EXT_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_:
        run(_raise(FileNotFoundError("data/x/dict.txt not found")))
    assert exit_.value.code == "prepare.py: data/x/dict.txt not found"
    with pytest.raises(SystemExit, match=r"^prepare.py: shard.parquet: bad$"):
        run(_raise(ShardError("shard.parquet: bad")))
    assert not names_its_input(KeyError("x")) and not names_its_input(ValueError("x"))
    with pytest.raises(KeyError):  # not ours and not a missing file: a bug, with its traceback
        run(_raise(KeyError("x")))
    monkeypatch.setenv("BART_EXT_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError):
        run(_raise(FileNotFoundError("kept")))


def test_a_script_prints_one_line_and_exits_1(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "show_noise.py"), "--data", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"show_noise.py: {tmp_path}/dict.txt not found")
