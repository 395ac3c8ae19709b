"""Does a pretrained BART reconstruct noised text it never read? (the demo's step 2)

Held-out documents are cut into pretraining-sized samples (whole sentences, each BPE-encoded with
its leading space as the pretraining data is) and noised with BART's noise (``bart_ext.noising``).
The model is scored teacher-forced: the share of target tokens whose argmax prediction is right,
separately over the tokens a noise span covered (``masked``: the model has to infer them) and the
tokens the noise left in the source (``unmasked``: the model has to copy them, from wherever
sentence permutation put them). ``<s>`` and ``</s>`` are not counted.

The copy baseline is the best a pure copier can do teacher-forced: for each target token it
predicts the source token that follows the first occurrence of the previous target token in the
source (nothing where that token is absent). It gets masked tokens right only by accident, and
unmasked tokens wrong where a sentence starts or a mask intervenes.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bart_ext.denoising_data import word_starts
from bart_ext.noising import Noised, NoiseConfig, Specials, noise


@dataclass
class Scores:
    """Teacher-forced accuracies over a set of noised samples."""

    masked_accuracy: float
    unmasked_accuracy: float
    masked_tokens: int
    unmasked_tokens: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def samples_from_sentences(
    documents: Sequence[Sequence[np.ndarray]],
    word_start: np.ndarray,
    cfg: NoiseConfig,
    sp: Specials,
    max_tokens: int,
    seed: int = 0,
) -> list[Noised]:
    """One noised sample per document: its first whole sentences that fit ``max_tokens`` (with
    ``<s>`` and ``</s>``; a first sentence longer than that is cut).

    Args:
        documents: per document, its sentences as dictionary indices.
        word_start: the dictionary's word-start table (``bart_denoising``'s ``word_start``).
        cfg: the noise.
        sp: the dictionary's special indices.
        max_tokens: the pretraining sample length.
        seed: the noise's random generator.
    """
    rng = np.random.default_rng(seed)
    out = []
    for sentences in documents:
        kept, room = [], max_tokens - 2
        for s in sentences:
            if len(s) == 0:
                continue
            if len(s) > room:
                if not kept:
                    kept.append(np.asarray(s[:room]))
                break
            kept.append(np.asarray(s))
            room -= len(s)
        if not kept:
            continue
        tokens = np.concatenate(kept).astype(np.int64)
        lengths = np.array([len(s) for s in kept])
        out.append(noise(tokens, lengths, word_starts(word_start, tokens, lengths), cfg, sp, rng))
    return out


def copy_predictions(sample: Noised) -> np.ndarray:
    """The copy baseline's prediction for every target position (-1 where it has none)."""
    first = {}
    for pos, tok in enumerate(sample.source.tolist()):
        first.setdefault(tok, pos)
    pred = np.full(len(sample.target), -1, dtype=np.int64)
    for t in range(1, len(sample.target)):
        pos = first.get(int(sample.target[t - 1]))
        if pos is not None and pos + 1 < len(sample.source):
            pred[t] = sample.source[pos + 1]
    return pred


@torch.no_grad()
def model_predictions(model: torch.nn.Module, sample: Noised, eos: int) -> np.ndarray:
    """A fairseq encoder-decoder's teacher-forced argmax for every target position."""
    device = next(model.parameters()).device
    src = torch.as_tensor(sample.source, device=device).unsqueeze(0)
    tgt = torch.as_tensor(sample.target, device=device)
    prev = torch.cat([tgt.new_tensor([eos]), tgt[:-1]]).unsqueeze(0)  # fairseq's shifted target
    logits = model(src_tokens=src, src_lengths=torch.tensor([src.size(1)], device=device),
                   prev_output_tokens=prev)[0]
    return logits[0].argmax(-1).cpu().numpy()


def score(predictions: Sequence[np.ndarray], samples: Sequence[Noised]) -> Scores:
    """Accuracy on masked and on unmasked target tokens (``<s>`` and ``</s>`` left out)."""
    right = {True: 0, False: 0}
    total = {True: 0, False: 0}
    for pred, s in zip(predictions, samples):
        if s.masked is None:
            raise ValueError("samples need the noise's `masked` flags (bart_ext.noising.noise sets them)")
        inner = slice(1, len(s.target) - 1)
        hit = pred[inner] == s.target[inner]
        for flag in (True, False):
            sel = s.masked[inner] == flag
            right[flag] += int(hit[sel].sum())
            total[flag] += int(sel.sum())
    return Scores(right[True] / max(1, total[True]), right[False] / max(1, total[False]), total[True], total[False])
