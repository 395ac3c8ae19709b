"""ROUGE-1, -2, -L and -Lsum F1 with bootstrap confidence intervals (``scripts/rouge.py``).

Scores come from Google's ``rouge-score`` package (Porter stemming on), the
implementation behind the published BART and PEGASUS numbers. ROUGE-Lsum
splits summaries into sentences at newlines; texts without newlines are split
with ``text.split_sentences`` first, so Lsum is the summary-level score and not
ROUGE-L again. Confidence intervals: percentile bootstrap over documents.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from bart_ext.text import split_sentences

METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def lsum_form(text: str) -> str:
    """One sentence per line, as ROUGE-Lsum expects."""
    if "\n" in text.strip():
        return text.strip()
    return "\n".join(split_sentences(text))


@functools.lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(METRICS), use_stemmer=True)  # logs "Using default tokenizer." once


def per_document(hyps: list[str], refs: list[str]) -> dict[str, np.ndarray]:
    """F1 of every metric for every (hypothesis, reference) pair."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references: the files must align line by line")
    scorer = _scorer()
    out = {m: np.zeros(len(hyps)) for m in METRICS}
    for i, (h, r) in enumerate(zip(hyps, refs)):
        scores = scorer.score(lsum_form(r), lsum_form(h))  # (target, prediction)
        for m in METRICS:
            out[m][i] = scores[m].fmeasure
    return out


@dataclass
class Interval:
    mean: float
    low: float
    high: float


def bootstrap(values: np.ndarray, samples: int = 1000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """The mean and a percentile bootstrap interval, resampling documents with replacement."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(samples, len(values)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    return Interval(float(values.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail)))
