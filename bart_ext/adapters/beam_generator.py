"""Beam search for ``fairseq-generate`` with fewer passes over the vocabulary per step.

At every step fairseq's ``SequenceGenerator`` makes these passes over ``hypotheses x vocabulary``:
the output projection, the log-softmax, a NaN scan and replacement
(``lprobs[lprobs != lprobs] = -inf``), the addition of each hypothesis' score to all its
log-probabilities, and a top-k over ``beam x vocabulary`` per sentence. On a CPU at beam 6
those passes are most of generation (BENCHMARKS.md). ``BeamSequenceGenerator`` keeps the
projection and the log-softmax (the same calls, so the log-probabilities are fairseq's, bit for
bit) and replaces the rest:

* A top-k of ``2 x beam`` per hypothesis first, then the hypothesis' score added to those values
  only, then the top ``2 x beam`` of the ``beam x 2 x beam`` per sentence. Adding a number to
  all of a hypothesis' log-probabilities keeps their order, so a sentence's best ``2 x beam``
  candidates are among those, and their scores are the very sums fairseq computes. (Equal
  scores may come out in another order than fairseq's top-k gives them, which is unspecified
  for ties there as well.)
* NaN: top-k ranks NaN above every number, so a hypothesis with a NaN log-probability shows it
  among its top values; only then does fairseq's replacement run, and the top-k is redone. Every
  write between the log-softmax and the top-k stores ``-inf`` or copies a value, so replacing
  NaN late gives what replacing it first gives. (On a GPU that check would cost a device sync
  per step, so there fairseq's replacement runs every step, as in fairseq.)

Everything else is fairseq's own code or follows it line for line: lengths, the unknown-word
penalty, prefix tokens (``_prefix_tokens``, or one fill and one scatter when every sentence has
a prefix token other than </s>), n-gram blocking (the generator's
``repeat_ngram_blocker``), finalization (``finalize_hypos``), dropping finished sentences, and the
final sort. Tokens, scores and positional scores equal ``SequenceGenerator``'s (tested with
``torch.equal``). Other searches (sampling, diverse beam, constrained), match-source-len, LM
fusion and sources without ``src_tokens`` run fairseq's loop unchanged.

``--task bart_summarization`` and ``--task bart_denoising`` build it (``BeamGeneratorTask``);
``BART_EXT_GENERATOR=fairseq`` builds fairseq's ``SequenceGenerator`` instead.
"""
from __future__ import annotations

import logging
import math

import torch
from fairseq import search
from fairseq.sequence_generator import SequenceGenerator
from torch import Tensor

from bart_ext import switches

logger = logging.getLogger(__name__)

class BeamSequenceGenerator(SequenceGenerator):
    """fairseq's ``SequenceGenerator`` whose plain beam search makes fewer full-vocabulary passes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._told = False  # the fallback is logged once

    def fallback_reason(self, sample: dict, constraints: Tensor | None) -> str | None:
        """Why this generation runs fairseq's loop, or None when it runs ours."""
        if type(self.search) is not search.BeamSearch:
            return f"search {type(self.search).__name__}"
        if self.match_source_len:
            return "match_source_len"
        if self.lm_model is not None:
            return "LM fusion"
        if constraints is not None:
            return "constraints"
        if "src_tokens" not in sample["net_input"]:
            return "no src_tokens"
        return None

    def _generate(self, sample, prefix_tokens: Tensor | None = None, constraints: Tensor | None = None,
                  bos_token: int | None = None):
        reason = self.fallback_reason(sample, constraints)
        if reason is not None:
            if not self._told:
                logger.info("beam generator: %s, so fairseq's SequenceGenerator loop runs", reason)
                self._told = True
            return super()._generate(sample, prefix_tokens, constraints, bos_token)
        return self._beam_search(sample, prefix_tokens, bos_token)

    def _candidates(self, step: int, lprobs: Tensor, scores: Tensor, bsz: int) -> tuple[Tensor, Tensor, Tensor]:
        """(scores, tokens, beams) of each sentence's best ``2 x beam`` continuations, best first:
        what ``search.BeamSearch.step`` returns, from a top-k per hypothesis."""
        beam, vocab = self.beam_size, self.vocab_size
        if lprobs.device.type != "cpu":  # fairseq's NaN replacement up front: no device sync per step
            lprobs.masked_fill_(torch.isnan(lprobs), -math.inf)
        per_hyp = lprobs.view(bsz, beam, vocab)
        if step == 0:  # every hypothesis of a sentence is the same one yet: fairseq reads the first
            per_hyp = per_hyp[:, :1]
        k = min(2 * beam, per_hyp.size(1) * vocab - 1)  # fairseq's k (-1 so that pad is never chosen)
        per_k = min(k, vocab)
        top, token = per_hyp.topk(per_k, dim=2)
        if lprobs.device.type == "cpu" and bool(torch.isnan(top).any()):  # on a CPU the check is free
            lprobs.masked_fill_(torch.isnan(lprobs), -math.inf)
            top, token = per_hyp.topk(per_k, dim=2)
        if step > 0:
            top = top + scores.view(bsz, beam, -1)[:, :, step - 1 : step]
        cand_scores, pos = top.view(bsz, -1).topk(k, dim=1)
        return cand_scores, token.view(bsz, -1).gather(1, pos), torch.div(pos, per_k, rounding_mode="trunc")

    def _force_prefix(self, step: int, lprobs: Tensor, scores: Tensor, tokens: Tensor, prefix_tokens: Tensor):
        """fairseq's ``_prefix_tokens``. When every sentence has a prefix token at ``step`` and none is
        </s> (``<s>`` forced first is that case), the same result by one fill and one scatter instead
        of fairseq's boolean-indexed copies of the whole ``lprobs``."""
        forced = prefix_tokens[:, step].repeat_interleave(self.beam_size).unsqueeze(1)
        if bool(forced.eq(self.pad).any() | forced.eq(self.eos).any()):
            return self._prefix_tokens(step, lprobs, scores, tokens, prefix_tokens, self.beam_size)
        kept = lprobs.gather(1, forced)
        return lprobs.fill_(-math.inf).scatter_(1, forced, kept), tokens, scores

    @torch.no_grad()
    def _beam_search(self, sample, prefix_tokens: Tensor | None, bos_token: int | None):
        net_input = sample["net_input"]
        src_tokens = net_input["src_tokens"]
        src_lengths = net_input.get("src_lengths")
        if src_lengths is None:
            src_lengths = (src_tokens.ne(self.eos) & src_tokens.ne(self.pad)).long().sum(dim=1)
        bsz, src_len = src_tokens.shape[:2]
        beam, dev = self.beam_size, src_tokens.device
        max_len = min(int(self.max_len_a * src_len + self.max_len_b), self.max_len - 1)
        if self.min_len > max_len:
            raise ValueError(f"min_len {self.min_len} is larger than max_len {max_len} "
                             f"(max_len_a {self.max_len_a} x source length {src_len} + max_len_b {self.max_len_b}, "
                             f"at most the model's {self.max_len - 1}): adjust --min-len or --max-len-a/b")

        incremental_states = [{} for _ in range(self.model.models_size)]
        encoder_outs = self.model.forward_encoder(net_input)
        encoder_outs = self.model.reorder_encoder_out(
            encoder_outs, torch.arange(bsz, device=dev).repeat_interleave(beam))

        scores = torch.zeros(bsz * beam, max_len + 1, device=dev)
        tokens = torch.full((bsz * beam, max_len + 2), self.pad, dtype=torch.long, device=dev)
        tokens[:, 0] = self.eos if bos_token is None else bos_token
        attn: Tensor | None = None
        cands_to_ignore = torch.zeros(bsz, beam, dtype=torch.bool, device=dev)
        finalized: list[list[dict[str, Tensor]]] = [[] for _ in range(bsz)]
        finished = [False] * bsz
        remaining = bsz
        cand_size = 2 * beam
        cand_offsets = torch.arange(cand_size, device=dev)
        first_row = torch.arange(bsz, device=dev).unsqueeze(1) * beam  # each sentence's first row
        reorder: Tensor | None = None  # rows of the decoder's states that continue, in its numbering

        for step in range(max_len + 1):  # one more step than max_len, for </s>
            if reorder is not None:
                self.model.reorder_incremental_state(incremental_states, reorder)
                encoder_outs = self.model.reorder_encoder_out(encoder_outs, reorder)
            lprobs, step_attn = self.model.forward_decoder(tokens[:, : step + 1], encoder_outs, incremental_states,
                                                           self.temperature)
            lprobs[:, self.pad] = -math.inf
            lprobs[:, self.unk] -= self.unk_penalty
            if step >= max_len:  # only </s> is left
                lprobs[:, : self.eos] = -math.inf
                lprobs[:, self.eos + 1 :] = -math.inf
            if prefix_tokens is not None and step < prefix_tokens.size(1) and step < max_len:
                lprobs, tokens, scores = self._force_prefix(step, lprobs, scores, tokens, prefix_tokens)
            else:
                if step < self.min_len:
                    lprobs[:, self.eos] = -math.inf
                if self.token_indices_to_suppress is not None:
                    lprobs[:, self.token_indices_to_suppress] = -math.inf
            if step_attn is not None:
                if attn is None:
                    attn = torch.empty(bsz * beam, step_attn.size(1), max_len + 2).to(scores)
                attn[:, :, step + 1].copy_(step_attn)
            scores = scores.type_as(lprobs)
            if self.repeat_ngram_blocker is not None:
                lprobs = self.repeat_ngram_blocker(tokens, lprobs, bsz, beam, step)

            cand_scores, cand_indices, cand_beams = self._candidates(step, lprobs, scores, bsz)

            # Candidates ending in </s> among each sentence's first `beam` are finished hypotheses.
            eos_mask = cand_indices.eq(self.eos) & cand_scores.ne(-math.inf)
            eos_mask[:, :beam][cands_to_ignore] = False
            eos_rows = (cand_beams + first_row)[:, :beam][eos_mask[:, :beam]]
            done: list[int] = []
            if eos_rows.numel() > 0:
                eos_scores = cand_scores[:, :beam][eos_mask[:, :beam]]
                done = self.finalize_hypos(step, eos_rows, eos_scores, tokens, scores, finalized, finished, beam,
                                           attn, src_lengths, max_len)
                remaining -= len(done)
            if remaining == 0:
                break
            if step >= max_len:
                raise RuntimeError(f"beam search reached max_len {max_len} with {remaining} sentences unfinished")

            # Sentences with `beam` finished hypotheses leave the batch; `state_row` numbers the
            # surviving sentences' rows as the decoder's states still hold them.
            if done:
                keep_mask = torch.ones(bsz, dtype=torch.bool, device=dev)
                keep_mask[done] = False
                keep = torch.arange(bsz, device=dev).masked_select(keep_mask)
                state_row = keep.unsqueeze(1) * beam
                bsz = keep.numel()
                eos_mask, cand_beams = eos_mask[keep], cand_beams[keep]
                cand_scores, cand_indices = cand_scores[keep], cand_indices[keep]
                first_row = first_row[:bsz]
                if prefix_tokens is not None:
                    prefix_tokens = prefix_tokens[keep]
                src_lengths, cands_to_ignore = src_lengths[keep], cands_to_ignore[keep]
                scores = scores.view(-1, beam * scores.size(1))[keep].view(bsz * beam, -1)
                tokens = tokens.view(-1, beam * tokens.size(1))[keep].view(bsz * beam, -1)
                if attn is not None:
                    attn = attn.view(-1, beam * attn.size(1) * attn.size(2))[keep].view(bsz * beam, attn.size(1), -1)
            else:
                state_row = first_row

            # Each sentence continues with its first `beam` candidates that neither end in </s> nor
            # sit in an ignored slot (fairseq's rule, slots and candidates aligned as it aligns them).
            eos_mask[:, :beam] |= cands_to_ignore
            rank = eos_mask.long() * cand_size + cand_offsets[: eos_mask.size(1)]
            new_ignore, active = torch.topk(rank, k=beam, dim=1, largest=False)
            cands_to_ignore = new_ignore.ge(cand_size)[:, :beam]
            if not bool((~cands_to_ignore).any(dim=1).all()):
                raise RuntimeError(f"beam search step {step}: a sentence has no hypothesis left to continue")
            from_beam = cand_beams.gather(1, active)
            rows = (from_beam + first_row).view(-1)
            tokens[:, : step + 1] = tokens[:, : step + 1].index_select(0, rows)
            tokens.view(bsz, beam, -1)[:, :, step + 1] = cand_indices.gather(1, active)
            if step > 0:
                scores[:, :step] = scores[:, :step].index_select(0, rows)
            scores.view(bsz, beam, -1)[:, :, step] = cand_scores.gather(1, active)
            if attn is not None:
                attn[:, :, : step + 2] = attn[:, :, : step + 2].index_select(0, rows)
            reorder = (from_beam + state_row).view(-1)

        for i, hyps in enumerate(finalized):  # best first, sorted as fairseq sorts them
            order = torch.sort(torch.tensor([float(h["score"].item()) for h in hyps]), descending=True)[1]
            finalized[i] = [hyps[j] for j in order]
        return finalized


class BeamGeneratorTask:
    """Task mixin: fairseq's ``build_generator`` with ``BeamSequenceGenerator``, unless a generator class
    is asked for, alignments are printed, or ``BART_EXT_GENERATOR=fairseq``."""

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None, **kwargs):
        if seq_gen_cls is None and not getattr(args, "print_alignment", False) and switches.GENERATOR.get() == "bart_ext":
            seq_gen_cls = BeamSequenceGenerator
        return super().build_generator(models, args, seq_gen_cls=seq_gen_cls,
                                       extra_gen_cls_kwargs=extra_gen_cls_kwargs, **kwargs)
