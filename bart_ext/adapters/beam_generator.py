"""Beam search for ``fairseq-generate`` with fewer passes over the vocabulary per step.

``BeamSequenceGenerator`` is fairseq's ``SequenceGenerator``, loop and all; two of its parts are
replaced. Per step, fairseq's plain beam search (``search.BeamSearch.step``) adds each
hypothesis' score to all of its log-probabilities and takes a top-k over ``beam x vocabulary``
per sentence: two more passes over ``hypotheses x vocabulary``, on a CPU at beam 6 a large share
of generation (BENCHMARKS.md). ``FewerPassesBeamSearch.step`` takes a top-k of ``2 x beam`` per
hypothesis first, adds the hypothesis' score to those values only, then the top ``2 x beam`` of
the ``beam x 2 x beam`` per sentence. Adding a number to all of a hypothesis' log-probabilities
keeps their order, so a sentence's best ``2 x beam`` candidates are among those, and their
scores are the very sums fairseq computes. (Equal scores may come out in another order than
fairseq's top-k gives them, which is unspecified for ties there as well.) And ``<s>`` forced
first (bart_summarization's ``--force-bos``) is one fill and one scatter instead of fairseq's
boolean-indexed copies of the whole ``lprobs`` (``_prefix_tokens``).

Everything else is fairseq's code: lengths, the NaN replacement, the unknown-word penalty, n-gram
blocking, finalization, dropping finished sentences, the final sort; other searches (sampling,
diverse beam, constrained) keep fairseq's ``search`` object. Tokens, scores and positional scores
equal ``SequenceGenerator``'s (tested with ``torch.equal``).

``--task bart_summarization`` and ``--task bart_denoising`` build it (``BeamGeneratorTask``);
``BART_EXT_GENERATOR=fairseq`` builds fairseq's ``SequenceGenerator`` instead.
"""
from __future__ import annotations

import math

import torch
from fairseq import search
from fairseq.sequence_generator import SequenceGenerator
from torch import Tensor

from bart_ext import switches


class FewerPassesBeamSearch(search.BeamSearch):
    """fairseq's ``search.BeamSearch`` whose ``step`` ranks candidates from a top-k per hypothesis
    (the module docstring says why the result is the same)."""

    @torch.jit.ignore
    def step(self, step: int, lprobs: Tensor, scores: Tensor | None, prev_output_tokens: Tensor | None = None,
             original_batch_idxs: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(scores, tokens, beams) of each sentence's best ``2 x beam`` continuations, best first,
        for ``lprobs`` ``(bsz, beam, vocab)`` and the hypotheses' ``scores`` ``(bsz, beam, step)``."""
        bsz, beam, vocab = lprobs.shape
        per_hyp = lprobs[:, :1] if step == 0 else lprobs  # step 0: every hypothesis is the first one
        k = min(2 * beam, per_hyp.size(1) * vocab - 1)  # fairseq's k (-1 so that pad is never chosen)
        per_k = min(k, vocab)
        top, token = per_hyp.topk(per_k, dim=2)
        if step > 0:
            assert scores is not None
            top = top + scores[:, :, step - 1 : step]
        cand_scores, pos = top.view(bsz, -1).topk(k, dim=1)
        return cand_scores, token.view(bsz, -1).gather(1, pos), torch.div(pos, per_k, rounding_mode="trunc")


class BeamSequenceGenerator(SequenceGenerator):
    """fairseq's ``SequenceGenerator`` and its loop, with plain beam search ranked by
    ``FewerPassesBeamSearch`` and ``<s>`` forced by one fill and one scatter."""

    def __init__(self, models, tgt_dict, *args, **kwargs):
        super().__init__(models, tgt_dict, *args, **kwargs)
        if type(self.search) is search.BeamSearch:  # other searches (sampling, diverse, ...) stay fairseq's
            self.search = FewerPassesBeamSearch(tgt_dict)

    def _generate(self, sample, prefix_tokens: Tensor | None = None, constraints: Tensor | None = None,
                  bos_token: int | None = None):
        net_input = sample["net_input"]
        if "src_tokens" in net_input and not self.match_source_len:  # fairseq only asserts this
            src_len = net_input["src_tokens"].size(1)
            max_len = min(int(self.max_len_a * src_len + self.max_len_b), self.max_len - 1)
            if self.min_len > max_len:
                raise ValueError(f"min_len {self.min_len} is larger than max_len {max_len} (max_len_a "
                                 f"{self.max_len_a} x source length {src_len} + max_len_b {self.max_len_b}, at "
                                 f"most the model's {self.max_len - 1}): adjust --min-len or --max-len-a/b")
        return super()._generate(sample, prefix_tokens, constraints, bos_token)

    def _prefix_tokens(self, step: int, lprobs: Tensor, scores: Tensor, tokens: Tensor, prefix_tokens: Tensor,
                       beam_size: int):
        """fairseq's ``_prefix_tokens``. When every sentence has a prefix token at ``step`` and none is
        </s> (``<s>`` forced first is that case), the same result by one fill and one scatter instead
        of fairseq's boolean-indexed copies of the whole ``lprobs``."""
        forced = prefix_tokens[:, step].repeat_interleave(beam_size).unsqueeze(1)
        if bool(forced.eq(self.pad).any() | forced.eq(self.eos).any()):
            return super()._prefix_tokens(step, lprobs, scores, tokens, prefix_tokens, beam_size)
        kept = lprobs.gather(1, forced)
        return lprobs.fill_(-math.inf).scatter_(1, forced, kept), tokens, scores


class BeamGeneratorTask:
    """Task mixin: fairseq's ``build_generator`` with ``BeamSequenceGenerator``, unless a generator class
    is asked for, alignments are printed, or ``BART_EXT_GENERATOR=fairseq``."""

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None, **kwargs):
        if seq_gen_cls is None and not getattr(args, "print_alignment", False) and switches.GENERATOR.get() == "bart_ext":
            seq_gen_cls = BeamSequenceGenerator
        return super().build_generator(models, args, seq_gen_cls=seq_gen_cls,
                                       extra_gen_cls_kwargs=extra_gen_cls_kwargs, **kwargs)
