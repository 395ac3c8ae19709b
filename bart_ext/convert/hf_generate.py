"""fairseq's beam search through transformers' ``generate`` for a ``to-hf`` export (imports transformers).

``generation_config.json`` (``to-hf --preset``) gets transformers as close to ``fairseq-generate`` as its
configuration can: start with ``</s>``, force ``<s>``, the preset's beam, length penalty, lengths and
n-gram blocking. Two of fairseq's rules it cannot state. fairseq scores the forced first ``<s>`` and the
``</s>`` it forces on every live beam at the length limit with the model's log-probabilities;
transformers' ``forced_bos_token_id`` / ``forced_eos_token_id`` give the forced token log-probability 0.
The second one decides outputs: a beam that reaches the limit gains ``-log p(</s>) / length`` over one
that ended on its own, so on a model that rambles (the demo's) transformers ends most summaries at the
limit where fairseq chose a shorter one. ``FairseqForcedTokens`` forces the same tokens but keeps their
log-probabilities; ``generate_like_fairseq`` runs ``generate`` with it in place of the two settings.
"""
from __future__ import annotations

import torch
from transformers import GenerationConfig, LogitsProcessor


class FairseqForcedTokens(LogitsProcessor):
    """Allow only ``bos`` (if not None) as the first generated token and only ``eos`` as the token that reaches
    ``max_length`` (decoder start included), each keeping the log-probability the model gave it.

    Runs on log-probabilities (transformers applies processors after its log-softmax in beam search),
    after the other processors (n-gram blocking and minimum length leave those tokens as they are at
    these two steps, as in fairseq)."""

    def __init__(self, bos: int | None, eos: int, max_length: int):
        self.bos, self.eos, self.max_length = bos, int(eos), int(max_length)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        length = input_ids.shape[-1]
        token = self.eos if length == self.max_length - 1 else self.bos if length == 1 else None
        if token is None:
            return scores
        forced = torch.full_like(scores, -float("inf"))
        forced[:, token] = scores[:, token]
        return forced


def generate_like_fairseq(model, generation_config: GenerationConfig | None = None, **inputs):
    """``model.generate(**inputs)`` with fairseq's scoring of the forced ``<s>`` and of the ``</s>`` forced
    at the length limit (see the module docstring); ``generation_config`` defaults to the model's own
    (``to-hf --preset``'s). Returns what ``generate`` returns."""
    config = GenerationConfig.from_dict((generation_config or model.generation_config).to_dict())
    bos = config.forced_bos_token_id
    eos = config.forced_eos_token_id if config.forced_eos_token_id is not None else config.eos_token_id
    if config.max_new_tokens is not None:
        max_length = 1 + config.max_new_tokens  # the decoder start token + new ones (encoder-decoder)
    else:
        max_length = config.max_length
    config.forced_bos_token_id = config.forced_eos_token_id = None
    processors = list(inputs.pop("logits_processor", None) or [])
    processors.append(FairseqForcedTokens(bos, eos, max_length))
    # generate fills a passed config's unset (None) fields from the model's own config, which would force
    # the two tokens again: run with this config as the model's own
    own = model.generation_config
    model.generation_config = config
    try:
        return model.generate(logits_processor=processors, **inputs)
    finally:
        model.generation_config = own
