"""Safe checkpoint loading for fairseq with torch >= 2.6 (weights-only unpickling kept on).

fairseq reads every checkpoint through ``fairseq.checkpoint_utils.load_checkpoint_to_cpu``
(resume, ``fairseq-generate --path``, ``load_model_ensemble_and_task``, hub
``from_pretrained``). This module wraps that one function so that

* torch's weights-only unpickler stays on, extended only by ``ALLOWED_GLOBALS``
  and only for the duration of that call (nothing global changes for other
  ``torch.load`` users);
* a file that needs any other pickled object is refused with an error naming
  the file and the object, instead of torch's generic hint to turn safety off;
* a file the user trusts is loaded deliberately by naming it in the
  environment variable ``BART_EXT_TRUSTED_CHECKPOINTS`` (paths separated by
  ``os.pathsep``), and only that file.

The checkpoints fairseq 0.12 writes for this project (training, resume,
validation, hydra) hold dicts, ``collections.OrderedDict``, tensors and plain
Python values: all inside torch's own allowlist. ``tests/unit/test_checkpoint_safety.py``
scans real checkpoints to keep that true.
"""
from __future__ import annotations

import functools
import os
import pickle
import re
from pathlib import Path

import torch

TRUST_ENV = "BART_EXT_TRUSTED_CHECKPOINTS"

# Types our checkpoints may hold beyond torch's default weights-only allowlist.
# Empty on purpose: every checkpoint this project writes loads without extras.
ALLOWED_GLOBALS: list = []


class UntrustedCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds a pickled object outside the allowlist."""


def trusted_paths() -> set[Path]:
    return {Path(p).resolve() for p in os.environ.get(TRUST_ENV, "").split(os.pathsep) if p}


def _refusal(path: str, err: Exception) -> UntrustedCheckpointError:
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    what = f"a pickled `{found.group(1)}`" if found else "a pickled object outside the weights-only allowlist"
    return UntrustedCheckpointError(
        f"{path}: refused to load: the file holds {what}, which bart_ext checkpoints never contain "
        "(they hold only tensors, dicts, lists and plain values). Unpickling arbitrary objects can run "
        "code from the file. If you trust this file, load it deliberately: "
        f"{TRUST_ENV}={Path(path).resolve()} (the variable names trusted files, separated by '{os.pathsep}')."
    )


class _WeightsOnlyOff:
    """Let torch.load unpickle everything, for one explicitly trusted file."""

    def __enter__(self):
        self.old = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
        os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"

    def __exit__(self, *exc):
        if self.old is None:
            del os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = self.old


def safe(load_checkpoint_to_cpu):
    """Wrap fairseq's ``load_checkpoint_to_cpu`` with the policy above."""

    @functools.wraps(load_checkpoint_to_cpu)
    def load(path, arg_overrides=None, load_on_all_ranks=False):
        if Path(path).resolve() in trusted_paths():
            with _WeightsOnlyOff():
                return load_checkpoint_to_cpu(path, arg_overrides, load_on_all_ranks)
        try:
            with torch.serialization.safe_globals(ALLOWED_GLOBALS):
                return load_checkpoint_to_cpu(path, arg_overrides, load_on_all_ranks)
        except pickle.UnpicklingError as e:
            raise _refusal(str(path), e) from None

    load.bart_ext_safe = True
    return load


def intra_job(broadcast_object_slow):
    """Wrap fairseq's rank-to-rank object broadcast so that the receiving ranks can unpickle it.

    Resuming on several ranks, rank 0 reads the checkpoint (through ``safe``) and
    sends the state to the others with ``torch.save``; they ``torch.load`` it, which
    torch >= 2.6 does weights-only and which then fails on fairseq's ``DictConfig``.
    Those bytes are not a file from outside: rank 0 of the same job pickled them
    from what it had already loaded under the policy above, so they are unpickled
    in full. Nothing else changes.
    """

    @functools.wraps(broadcast_object_slow)
    def broadcast(obj, src_rank, group, dist_device):
        with _WeightsOnlyOff():
            return broadcast_object_slow(obj, src_rank, group, dist_device)

    broadcast.bart_ext_safe = True
    return broadcast


def install() -> None:
    """Route fairseq's checkpoint reads through ``safe``, and its rank-to-rank state broadcast
    through ``intra_job`` (idempotent)."""
    from fairseq import checkpoint_utils
    from fairseq.distributed import utils as dist_utils

    if not getattr(checkpoint_utils.load_checkpoint_to_cpu, "bart_ext_safe", False):
        checkpoint_utils.load_checkpoint_to_cpu = safe(checkpoint_utils.load_checkpoint_to_cpu)
    if not getattr(dist_utils._broadcast_object_slow, "bart_ext_safe", False):
        dist_utils._broadcast_object_slow = intra_job(dist_utils._broadcast_object_slow)


install()
