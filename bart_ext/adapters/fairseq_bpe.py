"""``--bpe bart_gpt2``: fairseq's GPT-2 BPE as bart_ext's data preparation applies it.

Every text bart_ext trains on has a space before its first word, as a sentence in running text
has (``bart_ext.summarization_data.encode_lines``, ``scripts/prepare_data.py``, LDDL, ``bart_ext.load``):
" Handling" is one GPT-2 token where "Handling" alone is two. fairseq's ``gpt2`` BPE encodes a line
as it is, so ``fairseq-interactive --bpe gpt2`` gives our models a first word they rarely saw at the
start; ``bart_gpt2`` gives it the leading space. Decoding takes that one space off again: until stop
59 it was ``gpt2``'s, and ``fairseq-interactive``'s detokenized lines began with the space.
"""
from __future__ import annotations

from fairseq.data.encoders.gpt2_bpe import GPT2BPE

MASK = "<mask>"


class RunningTextGPT2BPE(GPT2BPE):
    def encode(self, x: str) -> str:
        if MASK not in x:
            return super().encode(" " + x.lstrip()) if x.strip() else ""  # a blank text is no tokens, not "Ġ"
        # fairseq-interactive with a pretrained model: "<mask>" is the dictionary's mask symbol, not the
        # characters < mask >. Spans are encoded as fairseq's BART fill_mask encodes them (each without its
        # trailing space, which the mask takes); only the first gets the first word's space.
        spans = x.lstrip().split(MASK)
        out = [super(RunningTextGPT2BPE, self).encode((" " if i == 0 else "") + span.rstrip()) if span.strip() else ""
               for i, span in enumerate(spans)]
        return f" {MASK} ".join(out).strip().replace("  ", " ")

    def decode(self, x: str) -> str:
        text = super().decode(x)
        return text[1:] if text.startswith(" ") else text
