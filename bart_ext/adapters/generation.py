"""fairseq's n-gram blocking, fixed and without its per-step host copies (``bart_ext.ngram_block``).

Installed when ``--user-dir user_dir`` is imported. ``NGramRepeatBlock`` keeps its CUDA
extension when that is built and usable; otherwise fairseq runs a Python loop that copies
every hypothesis to the host at every step, and that loop blocks nothing in generation:
``SequenceGenerator`` hands it the whole token buffer, pad-filled beyond ``step``, and the loop
compares the buffer's last ``n - 1`` entries, which are padding (fairseq issues #5206, #4709;
its CUDA kernel uses ``step`` and is right). ``BART_EXT_NGRAM_BLOCK`` chooses what runs instead:

    bart_ext       (default) ``block_repeated_ngrams`` on the generated prefix ``tokens[:, :step + 1]``
    fairseq_loop   fairseq's own loop on that prefix: the reference, for equality tests and benchmarks
    fairseq_stock  fairseq unchanged (blocks nothing on a CPU or without the extension)
"""
from __future__ import annotations

import os

from bart_ext.ngram_block import block_repeated_ngrams

CHOICES = ("bart_ext", "fairseq_loop", "fairseq_stock")


def install(mode: str | None = None) -> None:
    from fairseq import ngram_repeat_block

    mode = mode or os.environ.get("BART_EXT_NGRAM_BLOCK", "") or "bart_ext"
    if mode not in CHOICES:
        raise ValueError(f"BART_EXT_NGRAM_BLOCK={mode!r}: expected one of {', '.join(CHOICES)}")
    cls = ngram_repeat_block.NGramRepeatBlock
    if not hasattr(cls, "_fairseq_no_repeat_ngram"):
        cls._fairseq_no_repeat_ngram = cls._no_repeat_ngram  # kept for the equality tests
    original = cls._fairseq_no_repeat_ngram

    def bart_ext(self, tokens, lprobs, bsz: int, beam_size: int, step: int):
        return block_repeated_ngrams(tokens[:, : step + 1], lprobs, self.no_repeat_ngram_size)

    def fairseq_loop(self, tokens, lprobs, bsz: int, beam_size: int, step: int):
        return original(self, tokens[:, : step + 1], lprobs, bsz, beam_size, step)

    cls._no_repeat_ngram = {"bart_ext": bart_ext, "fairseq_loop": fairseq_loop, "fairseq_stock": original}[mode]
    cls._bart_ext_mode = mode


install()
