"""fairseq's n-gram blocking without its per-step host copies (``bart_ext.ngram_block``).

Installed when ``--user-dir user_dir`` is imported: ``NGramRepeatBlock`` keeps its
CUDA extension when that is built and usable, and otherwise runs
``block_repeated_ngrams`` instead of its ``.cpu().tolist()`` loop.
"""
from __future__ import annotations

from bart_ext.ngram_block import block_repeated_ngrams


def install() -> None:
    from fairseq import ngram_repeat_block

    cls = ngram_repeat_block.NGramRepeatBlock
    if getattr(cls, "_bart_ext_patched", False):
        return

    def _no_repeat_ngram(self, tokens, lprobs, bsz: int, beam_size: int, step: int):
        return block_repeated_ngrams(tokens, lprobs, self.no_repeat_ngram_size)

    cls._fairseq_no_repeat_ngram = cls._no_repeat_ngram  # kept for the equality test
    cls._no_repeat_ngram = _no_repeat_ngram
    cls._bart_ext_patched = True


install()
