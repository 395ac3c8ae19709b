"""fairseq's own Python API on our models: ``BARTModel.from_pretrained`` (patch 10 of ``fairseq_patches``).

fairseq's BART README loads a model with

    from fairseq.models.bart import BARTModel
    bart = BARTModel.from_pretrained(FOLDER, checkpoint_file="checkpoint_best.pt", data_name_or_path=DATA)

and on one of our checkpoints (the plugin imported, or ``user_dir=`` given) that loaded the model but
tokenized its text as fairseq's released BART was trained: GPT-2 BPE without a space before a text's
first word, with BPE files downloaded from fairseq's server. Our data preparation gives every text that
space (" Handling" is one GPT-2 token, "Handling" two) and keeps the BPE files it encoded with beside
the binarized data (the demo's GPT-2 BPE is cut to 4,000 merges: the downloaded files are another
tokenizer). So the model read a first word it had rarely seen, offline the load stopped on the download,
and the demo's summarizer began its summary of a paper on terminology with " Aachine" where
``bart_ext.load`` gave "Handling".

For a ``bart_*_preln`` model, ``BARTHubInterface(cfg, task, model)`` now builds a ``BartExtHubInterface``
(a ``BARTHubInterface``, with fairseq's methods), whose tokenizer is the one the model was trained with:

- GPT-2 BPE from the data folder's ``encoder.json`` / ``vocab.bpe`` where the config still names fairseq's
  download addresses (files given as ``gpt2_encoder_json=`` / ``gpt2_vocab_bpe=`` are kept), or
  fairseq's ``sentencepiece`` BPE with its ``sentencepiece.model`` for a model trained on sentencepiece
  data (the folder has that and no GPT-2 files);
- the space before the first word (``--bpe bart_gpt2``) where the model learnt it:
  ``bart_ext.summarization_data.text_has_leading_space``, as ``bart_ext.load`` decides, from what the
  checkpoint's loader saw (``remember_text_convention``). ``from_pretrained(..., prefix_space=False)``
  keeps fairseq's ``gpt2`` (a model fine-tuned on data binarized with fairseq's own tools);
- ``fill_mask`` gives that space to the text before the first ``<mask>`` only; the text after a mask
  keeps what it starts with, as ``bart_ext.load(...).fill_mask`` encodes it.

Other models get fairseq's ``BARTHubInterface`` unchanged.
"""
from __future__ import annotations

import functools
import logging
import os
import weakref
from pathlib import Path

from fairseq.data.encoders.gpt2_bpe import DEFAULT_ENCODER_JSON, DEFAULT_VOCAB_BPE, GPT2BPE
from fairseq.models.bart.hub_interface import BARTHubInterface
from omegaconf import OmegaConf, open_dict

from bart_ext.adapters.fairseq_bpe import RunningTextGPT2BPE
from bart_ext.bpe import SENTENCEPIECE_MODEL
from bart_ext.summarization_data import text_has_leading_space

logger = logging.getLogger(__name__)

# A loaded checkpoint's config -> what its extra_state says about its text, and the prefix_space given to
# the load (fairseq passes from_pretrained's keyword arguments to the loader as overrides).
_TEXT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def remember_text_convention(state: dict, arg_overrides: dict | None) -> None:
    """Called by the checkpoint loader (patch 1) with each state it read."""
    cfg = state.get("cfg") if isinstance(state, dict) else None
    if cfg is None:
        return
    extra = state.get("extra_state") or {}
    try:
        _TEXT[cfg] = {"imported_from": extra.get("imported_from"),
                      "text_leading_space": extra.get("text_leading_space", False),
                      "prefix_space": (arg_overrides or {}).get("prefix_space")}
    except TypeError:  # a config that cannot be weakly referenced: the defaults below apply
        pass


def is_ours(model) -> bool:
    from bart_ext.adapters.fairseq_model import BartEncoderDecoder

    return isinstance(model, BartEncoderDecoder)


def choose_tokenizer(cfg) -> str | None:
    """Point ``cfg.bpe`` (fairseq's ``gpt2`` or our ``bart_gpt2``) at the model's own tokenizer; return a
    description of the choice, or None where the config names another BPE (left as it is).

    Raises:
        ValueError: ``prefix_space`` was given as something other than True, False or None.
    """
    bpe = cfg.get("bpe")
    if bpe is None or bpe.get("_name") not in ("gpt2", "bart_gpt2"):
        return None
    seen = _TEXT.get(cfg, {})
    prefix_space = seen.get("prefix_space")
    if prefix_space is not None and not isinstance(prefix_space, bool):
        raise ValueError(f"from_pretrained(prefix_space={prefix_space!r}): expected True, False or None (the "
                         "default: as the model was trained)")
    folder = Path(str(cfg.task.data).split(os.pathsep)[0])
    downloads = bpe.get("gpt2_encoder_json") == DEFAULT_ENCODER_JSON and bpe.get("gpt2_vocab_bpe") == DEFAULT_VOCAB_BPE
    gpt2_files = (folder / "encoder.json").is_file() and (folder / "vocab.bpe").is_file()
    with open_dict(cfg):
        if downloads and not gpt2_files and (folder / SENTENCEPIECE_MODEL).is_file():
            cfg.bpe = OmegaConf.create({"_name": "sentencepiece", "sentencepiece_model": str(folder / SENTENCEPIECE_MODEL),
                                        "sentencepiece_enable_sampling": False, "sentencepiece_alpha": None})
            return f"sentencepiece with {folder / SENTENCEPIECE_MODEL}"
        if downloads and gpt2_files:
            bpe.gpt2_encoder_json, bpe.gpt2_vocab_bpe = str(folder / "encoder.json"), str(folder / "vocab.bpe")
        elif downloads:
            logger.warning("%s holds no encoder.json and vocab.bpe: fairseq's GPT-2 files are downloaded, which "
                           "are this model's only if its data was encoded with GPT-2's whole BPE (pass "
                           "gpt2_encoder_json= and gpt2_vocab_bpe= the files it was encoded with)", folder)
        spaced = text_has_leading_space({"extra_state": seen}, prefix_space)
        bpe._name = "bart_gpt2" if spaced else "gpt2"
    if spaced:
        return (f"bart_gpt2 with {bpe.gpt2_encoder_json}: a space before a text's first word, as the model was "
                "trained (prefix_space=False: fairseq's gpt2 without it)")
    return f"gpt2 with {bpe.gpt2_encoder_json}" + (" (prefix_space=False)" if prefix_space is False else "")


class BartExtHubInterface(BARTHubInterface):
    """fairseq's BART hub interface with a ``bart_*_preln`` model's own tokenizer (module docstring)."""

    def __init__(self, cfg, task, model):
        chosen = choose_tokenizer(cfg)
        super().__init__(cfg, task, model)
        if chosen:
            logger.info("bart_ext: BARTHubInterface of a %s model: BPE %s", type(model).__name__, chosen)

    def fill_mask(self, masked_inputs, topk: int = 5, match_source_len: bool = True, **generate_kwargs):
        if not isinstance(self.bpe, RunningTextGPT2BPE):
            return super().fill_mask(masked_inputs, topk=topk, match_source_len=match_source_len, **generate_kwargs)
        # fairseq's fill_mask BPE-encodes the text on either side of each <mask> alone; bart_gpt2 would give
        # every one of them a space ("(<mask>)" -> " )"). The first word gets it here, the rest as written.
        texts = [" " + text.lstrip() if isinstance(text, str) else text for text in masked_inputs]
        self.bpe.encode = functools.partial(GPT2BPE.encode, self.bpe)
        try:
            return super().fill_mask(texts, topk=topk, match_source_len=match_source_len, **generate_kwargs)
        finally:
            del self.bpe.encode


def hub_for_our_models(hub_class):
    """Patch 10: ``hub_class(cfg, task, model)`` is a ``BartExtHubInterface`` for our models."""

    def __new__(cls, *args, **kwargs):
        model = args[2] if len(args) > 2 else kwargs.get("model")
        if cls is hub_class and is_ours(model):
            cls = BartExtHubInterface
        return object.__new__(cls)

    __new__.bart_ext_patched = True
    return staticmethod(__new__)
