"""Samples for BART denoising: sentences packed into blocks, noised by (seed, epoch, index).

Input convention (documented in README, "Data"): one sentence per line, a
blank line between documents, as ``scripts/prepare_data.py`` writes it.
Binarized by ``fairseq-preprocess``, every line ends in ``</s>``; here those
line ends become sentence boundaries kept *beside* the tokens, so the model
sees ``<s> sentence sentence ... </s>`` with no ``</s>`` inside, and sentence
permutation moves exactly the text's sentences.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from bart_ext.noising import NoiseConfig, Noised, Specials, noise

# (line_lo, line_hi, tok_lo, tok_hi): lines [line_lo, line_hi), and the token slice
# of their concatenation (without line ends) that the sample takes.
BLOCK_FIELDS = 4


def pack_blocks(line_sizes: np.ndarray, max_tokens: int) -> np.ndarray:
    """Pack consecutive sentences of a document into samples of at most ``max_tokens`` tokens.

    Args:
        line_sizes: tokens per line without its ``</s>``; 0 marks a blank line (a document boundary).
        max_tokens: tokens a sample may hold, ``<s>`` and ``</s>`` not counted.

    Returns:
        ``(n, 4)`` int64 rows ``(line_lo, line_hi, tok_lo, tok_hi)``. A sentence longer than
        ``max_tokens`` is cut into chunks of its own.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    blocks: list[tuple[int, int, int, int]] = []
    lo, used = 0, 0

    def close(hi: int) -> None:
        if used > 0:
            blocks.append((lo, hi, 0, used))

    for i, size in enumerate(np.asarray(line_sizes).tolist()):
        if size == 0:  # document boundary
            close(i)
            lo, used = i + 1, 0
        elif size > max_tokens:
            close(i)
            blocks.extend((i, i + 1, a, min(a + max_tokens, size)) for a in range(0, size, max_tokens))
            lo, used = i + 1, 0
        elif used + size > max_tokens:
            close(i)
            lo, used = i, size
        else:
            used += size
    close(len(line_sizes))
    return np.asarray(blocks, dtype=np.int64).reshape(-1, BLOCK_FIELDS)


class DenoisingSamples:
    """Indexable noised samples over a corpus of lines.

    Args:
        read_lines: ``(lo, hi) -> tokens`` of lines ``[lo, hi)`` concatenated, each ending in ``</s>``.
        line_sizes: tokens per line *including* its ``</s>``.
        max_tokens: tokens a sample may hold besides ``<s>`` and ``</s>``.
        word_start: boolean table over the dictionary, True for tokens that begin a word.
        specials: special symbol indices.
        cfg: the noise settings.
        seed: the run's seed; sample ``i`` of epoch ``e`` is noised by a generator seeded ``(seed, e, i)``.
    """

    def __init__(
        self,
        read_lines: Callable[[int, int], np.ndarray],
        line_sizes: np.ndarray,
        max_tokens: int,
        word_start: np.ndarray,
        specials: Specials,
        cfg: NoiseConfig,
        seed: int,
    ):
        self.read_lines = read_lines
        self.line_sizes = np.asarray(line_sizes, dtype=np.int64) - 1  # without </s>
        if (self.line_sizes < 0).any():
            bad = int(np.flatnonzero(self.line_sizes < 0)[0])
            raise ValueError(f"line {bad} is empty (not even </s>): is this fairseq-preprocess output?")
        self.blocks = pack_blocks(self.line_sizes, max_tokens)
        self.word_start = np.asarray(word_start, dtype=bool)
        self.specials = specials
        self.cfg = cfg
        self.seed = seed
        self.epoch = 1
        self.sizes = (self.blocks[:, 3] - self.blocks[:, 2] + 2).astype(np.int64)  # with <s> and </s>

    def __len__(self) -> int:
        return len(self.blocks)

    def clean(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The sample's clean tokens and its sentence lengths."""
        line_lo, line_hi, tok_lo, tok_hi = (int(v) for v in self.blocks[index])
        raw = np.asarray(self.read_lines(line_lo, line_hi), dtype=np.int64)
        lengths = self.line_sizes[line_lo:line_hi]
        ends = np.cumsum(lengths + 1) - 1  # the </s> closing each line
        keep = np.ones(len(raw), dtype=bool)
        keep[ends] = False
        tokens = raw[keep]
        if tok_lo == 0 and tok_hi == len(tokens):
            return tokens, lengths[lengths > 0]
        return tokens[tok_lo:tok_hi], np.array([tok_hi - tok_lo], dtype=np.int64)  # a chunk of one long line

    def noised(self, index: int, epoch: int | None = None) -> Noised:
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch, index])
        tokens, lengths = self.clean(index)
        return noise(tokens, lengths, self.word_starts(tokens, lengths), self.cfg, self.specials, rng)

    def word_starts(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return word_starts(self.word_start, tokens, lengths)


def word_starts(table: np.ndarray, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Word starts per token: the dictionary's, plus every sentence's first token
    (GPT-2 BPE encodes a sentence-initial word without its leading space)."""
    starts = table[tokens]
    starts[np.cumsum(lengths) - lengths] = True
    return starts


def collate(samples: list[dict], pad: int, eos: int) -> dict:
    """fairseq's seq2seq batch: right-padded sources and targets, decoder input = target shifted right.

    ``prev_output_tokens`` starts with ``</s>`` (fairseq's convention), so the decoder
    sees ``</s> <s> x1 ... xn`` and predicts ``<s> x1 ... xn </s>``.
    """
    if not samples:
        return {}
    samples = sorted(samples, key=lambda s: -len(s["source"]))
    n = len(samples)
    src_len = torch.tensor([len(s["source"]) for s in samples])
    tgt_len = torch.tensor([len(s["target"]) for s in samples])
    src = torch.full((n, int(src_len.max())), pad, dtype=torch.long)
    tgt = torch.full((n, int(tgt_len.max())), pad, dtype=torch.long)
    prev = torch.full_like(tgt, pad)
    for i, s in enumerate(samples):
        src[i, : len(s["source"])] = s["source"]
        tgt[i, : len(s["target"])] = s["target"]
        prev[i, 0] = eos
        prev[i, 1 : len(s["target"])] = s["target"][:-1]
    return {
        "id": torch.tensor([s["id"] for s in samples]),
        "nsentences": n,
        "ntokens": int(tgt_len.sum()),
        "net_input": {"src_tokens": src, "src_lengths": src_len, "prev_output_tokens": prev},
        "target": tgt,
    }
