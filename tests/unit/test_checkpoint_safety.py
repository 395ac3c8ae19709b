"""Checkpoints load with torch's weights-only unpickler on; anything else is refused clearly."""
from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys

import pytest
import torch
from fairseq import checkpoint_utils

import user_dir  # noqa: F401  (installs the safe loader, as --user-dir does)
from bart_ext.adapters.fairseq_patches import UnreadableCheckpointError, UntrustedCheckpointError
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


# ---- files that are not (whole) checkpoints: fairseq's loader names the file and what is wrong

def _bad_file(kind: str, tmp_path):
    path = tmp_path / f"{kind}.pt"
    if kind in ("truncated", "truncated_legacy"):
        whole = tmp_path / "whole.pt"
        write_checkpoint(whole)
        if kind == "truncated_legacy":  # torch.save's format before 1.6, as fairseq's released BART files are
            torch.save(torch.load(whole, weights_only=False), whole, _use_new_zipfile_serialization=False)
        path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("dict.txt was copied here by mistake\n")
    elif kind == "bare_state_dict":  # what transformers' pytorch_model.bin or a model.state_dict() holds
        torch.save({"model.encoder.embed_tokens.weight": torch.ones(2, 2), "lm_head.weight": torch.ones(2, 2)}, path)
    elif kind == "list":
        torch.save([torch.ones(2)], path)
    return path


@pytest.mark.parametrize("kind,reason", [
    ("truncated", r"a zip archive without its directory \(\d[\d,]* bytes\): truncated"),
    ("truncated_legacy", r"torch.load failed on it: truncated, corrupt or not torch's \(EOFError\)"),
    ("empty", r"the file is empty"),
    ("text", r"not a file torch.save writes \(36 bytes starting b'dict.txt'\)"),
    ("bare_state_dict", r"it holds a bare state dict of 2 tensors \('model.encoder.embed_tokens.weight', 'lm_head.weight'\)"
                        r".*convert.py from-hf"),
    ("list", r"it holds a list, not fairseq's dict with a 'model' entry"),
])
def test_unreadable_files_are_named_with_what_is_wrong(tmp_path, monkeypatch, kind, reason):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    path = _bad_file(kind, tmp_path)
    with pytest.raises(UnreadableCheckpointError, match=rf"^{re.escape(str(path))}: not a readable fairseq checkpoint: "
                                                        rf"{reason}.*Nothing was loaded"):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))


def test_a_trusted_truncated_file_is_named_too(tmp_path, monkeypatch):
    path = _bad_file("truncated_legacy", tmp_path)
    monkeypatch.setenv(TRUST_ENV, str(path))
    with pytest.raises(UnreadableCheckpointError, match=rf"^{re.escape(str(path))}: .*truncated"):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))


def test_legacy_format_checkpoints_load(tmp_path):
    path = tmp_path / "legacy.pt"
    write_checkpoint(tmp_path / "zip.pt")
    torch.save(torch.load(tmp_path / "zip.pt", weights_only=False), path, _use_new_zipfile_serialization=False)
    torch.testing.assert_close(checkpoint_utils.load_checkpoint_to_cpu(str(path))["model"]["w"], torch.ones(2))


def test_an_interrupted_copy_leaves_the_last_checkpoint_whole(tmp_path, monkeypatch):
    """fairseq saves checkpoint_N.pt atomically, then copies it onto checkpoint_last.pt: a crash
    during that copy used to leave a truncated checkpoint_last.pt, which the resume then met."""
    from fairseq.file_io import PathManager as fairseq_path_manager

    new, last = tmp_path / "checkpoint_2_400.pt", tmp_path / "checkpoint_last.pt"
    write_checkpoint(new)
    write_checkpoint(last)
    old_bytes = last.read_bytes()

    def interrupted_copy(src, dst, *args, **kwargs):
        data = open(src, "rb").read()
        open(dst, "wb").write(data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr("shutil.copyfile", interrupted_copy)
    with pytest.raises(KeyboardInterrupt):
        checkpoint_utils.PathManager.copy(str(new), str(last), overwrite=True)  # what save_checkpoint calls
    assert last.read_bytes() == old_bytes and sorted(p.name for p in tmp_path.iterdir()) == [new.name, last.name]
    torch.testing.assert_close(checkpoint_utils.load_checkpoint_to_cpu(str(last))["model"]["w"], torch.ones(2))
    with pytest.raises(KeyboardInterrupt):  # fairseq's own copy, for comparison: the file is cut
        fairseq_path_manager.copy(str(new), str(last), overwrite=True)
    assert last.stat().st_size < len(old_bytes)
    with pytest.raises(UnreadableCheckpointError, match="checkpoint_last.pt: .*truncated"):
        checkpoint_utils.load_checkpoint_to_cpu(str(last))
    monkeypatch.undo()
    checkpoint_utils.PathManager.copy(str(new), str(last), overwrite=True)
    assert last.read_bytes() == new.read_bytes()



def test_cannot_load_model_parameters_names_its_cause():
    """Patch 9: fairseq's Trainer.load_checkpoint turns any loading error into "Cannot load model
    parameters ...; please ensure that the architectures match."; the plugin appends the cause."""
    import user_dir  # noqa: F401
    from fairseq.trainer import Trainer

    from bart_ext.adapters.fairseq_patches import load_checkpoint_naming_the_cause

    assert Trainer.load_checkpoint.bart_ext_patched

    def fairseqs(self, filename):  # what fairseq's trainer does around load_state_dict
        try:
            raise ValueError("checkpoint has 7 embedding rows")
        except Exception:
            raise Exception(f"Cannot load model parameters from checkpoint {filename}; "
                            "please ensure that the architectures match.")

    with pytest.raises(Exception, match=r"^Cannot load model parameters from checkpoint c.pt; please ensure that "
                       r"the architectures match. The cause: ValueError: checkpoint has 7 embedding rows$") as err:
        load_checkpoint_naming_the_cause(fairseqs)(None, "c.pt")
    assert isinstance(err.value.__cause__, ValueError)

    def other(self, filename):
        raise KeyError("unchanged")

    with pytest.raises(KeyError, match="unchanged"):
        load_checkpoint_naming_the_cause(other)(None, "c.pt")


def test_cannot_load_model_parameters_names_the_architecture_differences(tmp_path):
    """Weights of another shape (fine-tuning the demo's bart_small_preln with a config's bart_tiny_preln):
    torch's error lists every key (18k characters for the demo's model). Patch 9 first names the options
    in which the checkpoint's config and the run's differ, with the overrides that match them, and cuts
    torch's list (it stays whole in the chained cause)."""
    from argparse import Namespace
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from bart_ext.adapters.fairseq_patches import load_checkpoint_naming_the_cause

    path = tmp_path / "pretrained.pt"
    write_checkpoint(path)
    state = torch.load(path, weights_only=False)
    state["cfg"]["model"] = {"_name": "bart_small_preln", "encoder_layers": 3, "encoder_embed_dim": 128,
                             "max_positions": 512, "dropout": 0.0, "post_ln": False}
    torch.save(state, path)

    def fairseqs(self, filename):  # torch's own error, re-raised as fairseq's trainer does
        try:
            torch.nn.Sequential(*[torch.nn.Linear(2, 3)] * 60).load_state_dict(
                torch.nn.Sequential(*[torch.nn.Linear(2, 4)] * 60).state_dict())
        except Exception:
            raise Exception(f"Cannot load model parameters from checkpoint {filename}; "
                            "please ensure that the architectures match.")

    run_cfg = OmegaConf.create({"_name": "bart_tiny_preln", "encoder_layers": 2, "encoder_embed_dim": 36,
                                "max_positions": 512, "dropout": 0.1, "post_ln": True})
    with pytest.raises(Exception) as err:
        load_checkpoint_naming_the_cause(fairseqs)(SimpleNamespace(cfg=SimpleNamespace(model=run_cfg)), str(path))
    said = str(err.value)
    assert said.startswith(
        f"Cannot load model parameters from checkpoint {path}; please ensure that the architectures match. "
        "The checkpoint's model differs from this run's: model._name bart_small_preln (checkpoint) vs "
        "bart_tiny_preln (this run), model.encoder_embed_dim 128 (checkpoint) vs 36 (this run), "
        "model.encoder_layers 3 (checkpoint) vs 2 (this run), model.post_ln False (checkpoint) vs True (this run). "
        "Give the run the checkpoint's values (fairseq-hydra-train: model._name=bart_small_preln "
        "model.encoder_embed_dim=128 model.encoder_layers=3 model.post_ln=False; fairseq-train: --arch "
        "bart_small_preln --encoder-embed-dim 128 --encoder-layers 3 without --post-ln). The cause: RuntimeError: "
        "Error(s) in loading state_dict for Sequential:"), said
    assert "dropout" not in said and "max_positions" not in said  # equal, or not a shape
    assert said.endswith("more characters in the chained error)") and len(said) < 1600, len(said)
    assert len(str(err.value.__cause__)) > 5000 and isinstance(err.value.__cause__, RuntimeError)

    # fairseq-train's argparse namespace: the architecture is `arch`; a checkpoint without a config is
    # reported as before.
    args = Namespace(arch="bart_base_preln", encoder_layers=2, encoder_embed_dim=128, max_source_positions=256)
    with pytest.raises(Exception, match=r"model._name bart_small_preln \(checkpoint\) vs bart_base_preln \(this run\), "
                       r"model.encoder_layers.*fairseq-train: --arch bart_small_preln --encoder-layers 3\)\. The cause"):
        load_checkpoint_naming_the_cause(fairseqs)(SimpleNamespace(cfg=SimpleNamespace(model=args)), str(path))
    with pytest.raises(Exception, match=r"match\. The cause: RuntimeError: Error\(s\) in loading state_dict"):
        load_checkpoint_naming_the_cause(fairseqs)(SimpleNamespace(cfg=SimpleNamespace(model=run_cfg)),
                                                   str(tmp_path / "gone.pt"))


def test_wrong_dictionary_names_the_checkpoints_own(tmp_path):
    """Fine-tuning the demo's pretrained model on data binarized with GPT-2's full dictionary: the error
    names the dictionary the checkpoint was trained with (its task.data still holds it) and the command
    that binarizes data with it; a checkpoint whose data folder is gone gets the error as before."""
    from types import SimpleNamespace

    from bart_ext.adapters.fairseq_patches import load_checkpoint_naming_the_cause
    from bart_ext.convert.fairseq_layouts import DictionarySizeError

    data = tmp_path / "lddl"
    data.mkdir()
    for name in ("dict.txt", "encoder.json", "vocab.bpe"):
        (data / name).write_text("")
    path = tmp_path / "pretrained.pt"
    write_checkpoint(path)
    state = torch.load(path, weights_only=False)
    state["cfg"]["task"] = {"_name": "bart_denoising", "data": str(data)}
    torch.save(state, path)

    def fairseqs(self, filename):
        try:
            raise DictionarySizeError("checkpoint has 4261 embedding rows (encoder.embed_tokens.weight) but ...")
        except Exception:
            raise Exception(f"Cannot load model parameters from checkpoint {filename}; "
                            "please ensure that the architectures match.")

    with pytest.raises(Exception) as err:
        load_checkpoint_naming_the_cause(fairseqs)(SimpleNamespace(cfg=None), str(path))
    assert str(err.value).endswith(
        f"The cause: DictionarySizeError: checkpoint has 4261 embedding rows (encoder.embed_tokens.weight) but ... "
        f"The checkpoint was trained with the dictionary {data / 'dict.txt'}: binarize the data with it "
        f"(scripts/prepare_summarization.py or prepare_roles.py --dict {data / 'dict.txt'} --gpt2 {data})."), str(err.value)
    (data / "vocab.bpe").unlink()  # a dictionary without the BPE files beside it: no --gpt2
    with pytest.raises(Exception, match=r"--dict \S+dict.txt\)\.$"):
        load_checkpoint_naming_the_cause(fairseqs)(SimpleNamespace(cfg=None), str(path))
    (data / "sentencepiece.model").write_text("")  # sentencepiece shards' layout
    with pytest.raises(Exception, match=r"--dict \S+dict.txt --sentencepiece-model \S+/sentencepiece.model\)\.$"):
        load_checkpoint_naming_the_cause(fairseqs)(SimpleNamespace(cfg=None), str(path))
    (data / "dict.txt").unlink()
    with pytest.raises(Exception, match=r"The cause: DictionarySizeError: checkpoint has 4261 embedding rows "
                                        r"\(encoder.embed_tokens.weight\) but \.\.\.$"):
        load_checkpoint_naming_the_cause(fairseqs)(SimpleNamespace(cfg=None), str(path))
