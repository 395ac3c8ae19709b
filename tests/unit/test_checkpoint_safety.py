"""Checkpoints load with torch's weights-only unpickler on; anything else is refused clearly."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
import torch
from fairseq import checkpoint_utils

import user_dir  # noqa: F401  (installs the safe loader, as --user-dir does)
from bart_ext.adapters.fairseq_patches import UntrustedCheckpointError
from bart_ext.switches import TRUSTED_CHECKPOINTS

TRUST_ENV = TRUSTED_CHECKPOINTS.name
from tests.conftest import ROOT


class Payload:
    """Stands for any non-weight object; unpickling it runs this module's code."""

    def __init__(self):
        self.ran = False

    def __setstate__(self, state):
        state["ran"] = True
        self.__dict__.update(state)


def write_checkpoint(path, extra=None):
    state = {"model": {"w": torch.ones(2)}, "cfg": {"model": {"_name": "bart_preln"}}, "args": None,
             "optimizer_history": [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "FairseqAdam",
                                   "lr_scheduler_state": {"best": None}, "num_updates": 0}], "extra_state": {"train_iterator": {"epoch": 1}}, "last_optimizer_state": {}}
    if extra is not None:
        state["extra_state"]["payload"] = extra
    torch.save(state, path)


def test_plain_checkpoint_loads_weights_only(tmp_path):
    write_checkpoint(tmp_path / "ok.pt")
    state = checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "ok.pt"))
    torch.testing.assert_close(state["model"]["w"], torch.ones(2))


def test_checkpoint_with_arbitrary_object_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    path = tmp_path / "evil.pt"
    write_checkpoint(path, Payload())
    with pytest.raises(UntrustedCheckpointError) as err:
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    msg = str(err.value)
    assert str(path) in msg and "Payload" in msg and TRUST_ENV in msg
    assert isinstance(err.value, pickle.UnpicklingError)


def test_trusted_file_loads_deliberately_and_only_that_file(tmp_path, monkeypatch):
    trusted, other = tmp_path / "trusted.pt", tmp_path / "other.pt"
    write_checkpoint(trusted, Payload())
    write_checkpoint(other, Payload())
    monkeypatch.setenv(TRUST_ENV, str(trusted))
    state = checkpoint_utils.load_checkpoint_to_cpu(str(trusted))
    assert state["extra_state"]["payload"].ran
    with pytest.raises(UntrustedCheckpointError):
        checkpoint_utils.load_checkpoint_to_cpu(str(other))
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ


def test_importing_the_plugin_leaves_torch_load_safe_elsewhere(tmp_path):
    path = tmp_path / "evil.pt"
    write_checkpoint(path, Payload())
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)  # torch's own default is untouched
    # In a fresh interpreter: torch's allowlist and environment are the same before and after the import.
    code = (
        "import os, torch; before = list(torch.serialization.get_safe_globals()); env = dict(os.environ)\n"
        "import user_dir\n"
        "assert list(torch.serialization.get_safe_globals()) == before\n"
        "assert dict(os.environ) == env\n"
        "print('unchanged')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "unchanged" in out.stdout, out.stderr[-2000:]
