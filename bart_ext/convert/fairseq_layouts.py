"""fairseq's released BART checkpoints, as our model loads them (``BartEncoderDecoder.upgrade_state_dict_named``).

What differs from a checkpoint bart_ext writes (fairseq ``examples/bart``; fairseq issues #2242, #2804):

* ``.version`` buffers of fairseq's ``TransformerEncoder`` / ``Decoder`` (we keep none);
* no ``decoder.output_projection.weight`` in files older than fairseq 0.10 (it is the tied embedding);
* attention as one ``in_proj_weight`` / ``in_proj_bias`` (query, key, value stacked) in files of
  fairseq < 0.9, and ``layer_norms.0`` / ``.1`` for the encoder layers' two LayerNorms;
* embedding rows: ``bart.large`` has 50,265 (its 50,264-entry dictionary plus ``<mask>``),
  ``bart.large.cnn`` and ``bart.large.xsum`` 50,264 (fine-tuned with ``--task translation``, no
  ``<mask>``), ``bart.base`` 51,201 (its ``dict.txt`` runs on to ``madeupword0938``). Our tasks
  always append ``<mask>``: a checkpoint one row short of the dictionary gets a ``<mask>`` row of
  zeros; one row longer and without ``<mask>`` in the dictionary loses its last row (fairseq's BART
  does the same). Any other difference means the wrong ``dict.txt`` and is refused.
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

class DictionarySizeError(ValueError):
    """A checkpoint's embedding rows do not fit the task's dictionary (another ``dict.txt``)."""


EMBEDDING_KEYS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight")


def _split_in_proj(state: dict[str, Tensor], prefix: str) -> None:
    for key in [k for k in state if k.startswith(prefix) and ".in_proj_" in k]:
        base, kind = key.rsplit(".in_proj_", 1)  # kind: "weight" or "bias"
        q, k, v = state.pop(key).chunk(3, dim=0)
        for name, part in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
            state[f"{base}.{name}.{kind}"] = part


def _rename_layer_norms(state: dict[str, Tensor], prefix: str) -> None:
    for key in [k for k in state if k.startswith(prefix + "encoder.layers.") and ".layer_norms." in k]:
        head, tail = key.split(".layer_norms.", 1)
        index, param = tail.split(".", 1)
        name = {"0": "self_attn_layer_norm", "1": "final_layer_norm"}[index]
        state[f"{head}.{name}.{param}"] = state.pop(key)


def _fit_embedding_rows(state: dict[str, Tensor], prefix: str, dictionary: list[str] | None) -> None:
    key = prefix + "encoder.embed_tokens.weight"
    if dictionary is None or key not in state:
        return
    rows, n = state[key].size(0), len(dictionary)
    if rows == n:
        return
    has_mask = "<mask>" in dictionary
    if rows == n - 1 and dictionary[-1] == "<mask>":
        logger.warning("checkpoint has %d embedding rows, no <mask> (a fine-tuned fairseq BART such as "
                       "bart.large.cnn): appended a <mask> row of zeros for the task's dictionary of %d", rows, n)
        fit = lambda w: torch.cat([w, w.new_zeros(1, w.size(1))])  # noqa: E731
    elif rows == n + 1 and not has_mask:
        logger.info("checkpoint has %d embedding rows, the dictionary %d and no <mask>: dropped the last row "
                    "(<mask>), as fairseq's BART does", rows, n)
        fit = lambda w: w[:-1]  # noqa: E731
    else:
        raise DictionarySizeError(
            f"checkpoint has {rows} embedding rows ({key}) but the task's dictionary has {n} entries "
            f"({'with' if has_mask else 'without'} <mask>): use the dict.txt that came with the checkpoint "
            "(fairseq's bart.base ships one of 51,196 lines, bart.large of 50,260).")
    for name in EMBEDDING_KEYS:
        if prefix + name in state:
            state[prefix + name] = fit(state[prefix + name])


def upgrade_released_bart(state: dict[str, Tensor], prefix: str, dictionary: list[str] | None) -> None:
    """Bring a fairseq BART state dict (``prefix``-ed keys) to our model's keys and dictionary size, in place.

    Args:
        state: the checkpoint's ``model`` state dict.
        prefix: ``""`` or a module path ending in ``"."``.
        dictionary: the task dictionary's symbols (None: leave the rows alone).
    """
    for key in [k for k in state if k.startswith(prefix) and k.endswith(".version")]:
        del state[key]
    _split_in_proj(state, prefix)
    _rename_layer_norms(state, prefix)
    out_key = prefix + "decoder.output_projection.weight"
    if out_key not in state and prefix + "decoder.embed_tokens.weight" in state:
        state[out_key] = state[prefix + "decoder.embed_tokens.weight"]
    _fit_embedding_rows(state, prefix, dictionary)
