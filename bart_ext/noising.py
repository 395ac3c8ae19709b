"""BART's denoising noise (Lewis et al. 2019, section 2.2) on whole numpy arrays.

Text infilling: spans whose lengths, in words, are drawn from Poisson(lambda)
until ``ceil(mask * words)`` words are spent, each span replaced by one
``<mask>`` (``replace_length`` 1), deleted (0) or masked token by token (-1);
a zero-length span inserts a ``<mask>``. Sentence permutation shuffles a
share of the sample's sentences. Token insertion and document rotation are
available. The semantics follow fairseq's ``DenoisingDataset`` (the code behind
the published BART models): span starts are distinct random word starts, and
spans may overlap, so the realised masked share is a little under ``mask``.

Unlike fairseq, sentence boundaries are the text's own (passed in as sentence
lengths, never guessed from a "." token), random replacement tokens are never
special symbols, and every draw comes from the generator the caller passes,
so a sample depends only on how that generator was seeded. Word starts are
taken as given; ``bart_ext.denoising_data`` also counts every sentence's first
token as a word start, which GPT-2 BPE alone would not (no leading space there).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NoiseConfig:
    """BART's noise settings; defaults are the paper's pretraining settings.

    Args:
        mask: share of words to mask (the budget is ``ceil(mask * words)``).
        mask_random: share of masks that become a random token instead.
        poisson_lambda: mean span length, in words.
        replace_length: 1 one ``<mask>`` per span; 0 delete the span; -1 one ``<mask>`` per token.
        permute_sentences: share of each sample's sentences that is shuffled.
        rotate: probability of rotating the document to start at a random token.
        insert: share of tokens inserted as ``<mask>`` (or random, by ``mask_random``).
    """

    mask: float = 0.3
    mask_random: float = 0.1
    poisson_lambda: float = 3.5
    replace_length: int = 1
    permute_sentences: float = 1.0
    rotate: float = 0.0
    insert: float = 0.0

    def __post_init__(self) -> None:
        for name in ("mask", "mask_random", "permute_sentences", "rotate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"noise field `{name}` must lie in [0, 1], got {value}")
        if self.insert < 0:
            raise ValueError(f"noise field `insert` must be >= 0, got {self.insert}")
        if self.replace_length not in (-1, 0, 1):
            raise ValueError(f"noise field `replace_length` must be -1, 0 or 1, got {self.replace_length}")
        if self.poisson_lambda <= 0:
            raise ValueError(f"noise field `poisson_lambda` must be > 0, got {self.poisson_lambda}")


@dataclass(frozen=True)
class Specials:
    """Dictionary indices the noise needs; random tokens come from ``[first_regular, size)`` minus ``mask``."""

    bos: int
    eos: int
    mask: int
    size: int
    first_regular: int


@dataclass
class Noised:
    """One noised sample and what the noise did (for tests and statistics)."""

    source: np.ndarray  # <s> noised </s>
    target: np.ndarray  # <s> clean </s>
    num_words: int
    spans: np.ndarray  # span lengths in words, summing to the budget; zeros are insertions
    num_random: int  # masks replaced by random tokens
    order: np.ndarray  # sentence order in the source
    masked: np.ndarray | None = None  # per target token: True where a span covered it in the source


def random_tokens(rng: np.random.Generator, n: int, sp: Specials) -> np.ndarray:
    """``n`` uniform regular tokens: never a special symbol, never ``<mask>``."""
    tok = rng.integers(sp.first_regular, sp.size - 1, size=n)
    return tok + (tok >= sp.mask)


def permute_sentences(lengths: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Sentence order with ``ceil(ratio * n)`` randomly chosen sentences shuffled among their places."""
    n = len(lengths)
    order = np.arange(n)
    k = math.ceil(n * ratio)
    if k > 1:
        chosen = rng.permutation(n)[:k]
        order[chosen] = chosen[rng.permutation(k)]
    return order


def _gather_sentences(lengths: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Token indices that lay the sentences out in ``order`` (no loop over sentences)."""
    starts = np.cumsum(lengths) - lengths
    lens = lengths[order]
    offsets = np.cumsum(lens) - lens
    return np.repeat(starts[order] - offsets, lens) + np.arange(int(lens.sum()))


def span_lengths(num_words: int, cfg: NoiseConfig, rng: np.random.Generator) -> np.ndarray:
    """Poisson span lengths drawn until the budget ``ceil(mask * num_words)`` is spent; the last is cut to fit."""
    budget = math.ceil(num_words * cfg.mask)
    if budget == 0:
        return np.zeros(0, dtype=np.int64)
    lengths = rng.poisson(cfg.poisson_lambda, size=budget)
    while lengths.sum() < budget:
        lengths = np.concatenate([lengths, rng.poisson(cfg.poisson_lambda, size=budget)])
    cum = np.cumsum(lengths)
    last = int(np.searchsorted(cum, budget))  # first span that reaches the budget
    lengths = lengths[: last + 1].copy()
    lengths[last] = budget - (cum[last - 1] if last > 0 else 0)
    return lengths


def _ranges_cover(starts: np.ndarray, ends: np.ndarray, n: int) -> np.ndarray:
    """Boolean (n,) mask of positions inside any half-open range ``[starts[i], ends[i])``."""
    diff = np.zeros(n + 1, dtype=np.int64)
    np.add.at(diff, starts, 1)
    np.add.at(diff, ends, -1)
    return np.cumsum(diff[:n]) > 0


def insert_noise(tokens: np.ndarray, count: int, cfg: NoiseConfig, sp: Specials, rng: np.random.Generator):
    """Insert ``count`` masks (``mask_random`` of them random tokens) between ``<s>`` and ``</s>``."""
    if count <= 0:
        return tokens, 0
    n = len(tokens)
    where = rng.permutation(n + count - 2)[:count] + 1
    out = np.empty(n + count, dtype=tokens.dtype)
    taken = np.zeros(n + count, dtype=bool)
    taken[where] = True
    num_random = math.ceil(count * cfg.mask_random)
    out[where[num_random:]] = sp.mask
    out[where[:num_random]] = random_tokens(rng, num_random, sp)
    out[~taken] = tokens
    return out, num_random


def noise(
    tokens: np.ndarray,
    sentence_lengths: np.ndarray,
    word_start: np.ndarray,
    cfg: NoiseConfig,
    sp: Specials,
    rng: np.random.Generator,
) -> Noised:
    """Noise one sample.

    Args:
        tokens: the sample's tokens, sentences concatenated, no ``<s>``/``</s>``.
        sentence_lengths: tokens per sentence; sums to ``len(tokens)``.
        word_start: boolean per token, True where a word begins (taken as given).
        cfg: the noise settings.
        sp: special symbol indices.
        rng: the only source of randomness.
    """
    sentence_lengths = np.asarray(sentence_lengths, dtype=np.int64)
    if int(sentence_lengths.sum()) != len(tokens):
        raise ValueError(f"sentence lengths sum to {int(sentence_lengths.sum())}, but there are {len(tokens)} tokens")
    sentence_lengths = sentence_lengths[sentence_lengths > 0]
    word_start = np.asarray(word_start, dtype=bool)

    target = np.concatenate([[sp.bos], tokens, [sp.eos]]).astype(np.int64)
    order = permute_sentences(sentence_lengths, cfg.permute_sentences, rng)
    idx = _gather_sentences(sentence_lengths, order)
    source = np.concatenate([[sp.bos], tokens[idx], [sp.eos]]).astype(np.int64)
    ws = np.concatenate([[False], word_start[idx], [False]])

    positions = np.flatnonzero(ws)  # token position of each word start
    num_words = len(positions)
    spans = span_lengths(num_words, cfg, rng) if cfg.mask > 0 else np.zeros(0, dtype=np.int64)
    num_random = 0
    covered = np.zeros(len(source), dtype=bool)  # over the permuted tokens, before any is dropped
    nonzero = spans[spans > 0]
    if len(nonzero):
        m = len(nonzero)
        first_word = rng.permutation(num_words)[:m]  # distinct span starts, as fairseq
        is_random = rng.random(m) < cfg.mask_random
        bounds = np.append(positions, len(source) - 1)  # a span never swallows </s>
        start = positions[first_word]
        end = bounds[np.minimum(first_word + nonzero, num_words)]  # exclusive, a word boundary
        n = len(source)
        covered = _ranges_cover(start, end, n)
        if cfg.replace_length == -1:
            covered_random = _ranges_cover(start[is_random], end[is_random], n)
            source[covered] = sp.mask
            num_random = int(covered_random.sum())
            source[covered_random] = random_tokens(rng, num_random, sp)
        else:
            # Continuation tokens of every span go; a span start survives as its <mask>
            # unless another span's continuation covers it (fairseq's overlap rule).
            keep = ~_ranges_cover(start + 1, end, n)
            if cfg.replace_length == 0:
                keep[start] = False
            else:
                source[start] = sp.mask
                rand_at = start[is_random]
                source[rand_at] = random_tokens(rng, len(rand_at), sp)
                num_random = int(keep[rand_at].sum())
            source = source[keep]
    masked = np.zeros(len(target), dtype=bool)
    masked[1 + idx] = covered[1:-1]  # permuted position 1 + j holds clean token idx[j]
    inserts = int((spans == 0).sum())
    source, extra_random = insert_noise(source, inserts, cfg, sp, rng)
    num_random += extra_random
    if cfg.insert > 0:
        source, extra_random = insert_noise(source, math.ceil((len(source) - 2) * cfg.insert), cfg, sp, rng)
        num_random += extra_random
    if cfg.rotate > 0 and len(source) > 3 and rng.random() < cfg.rotate:
        offset = int(rng.integers(1, len(source) - 1))
        source = np.concatenate([source[:1], source[offset:-1], source[1:offset], source[-1:]])
    return Noised(source, target, num_words, spans, num_random, order, masked)
