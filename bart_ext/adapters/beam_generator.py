"""Beam search for ``fairseq-generate`` with fewer passes over the vocabulary per step.

At every step fairseq's ``SequenceGenerator`` makes these passes over ``hypotheses x vocabulary``:
the output projection, the log-softmax, a NaN scan and replacement
(``lprobs[lprobs != lprobs] = -inf``), the addition of each hypothesis' score to all its
log-probabilities (``search.BeamSearch.step``), and a top-k over ``beam x vocabulary`` per
sentence. On a CPU at beam 6 those passes are most of generation (BENCHMARKS.md).
``BeamSequenceGenerator`` keeps the projection and the log-softmax (the same calls, so the
log-probabilities are fairseq's, bit for bit) and replaces the rest:

* ``FewerPassesBeamSearch.step``: a top-k of ``2 x beam`` per hypothesis first, then the
  hypothesis' score added to those values only, then the top ``2 x beam`` of the
  ``beam x 2 x beam`` per sentence. Adding a number to all of a hypothesis' log-probabilities
  keeps their order, so a sentence's best ``2 x beam`` candidates are among those, and their
  scores are the very sums fairseq computes. (Equal scores may come out in another order than
  fairseq's top-k gives them, which is unspecified for ties there as well.)
* NaN: on a CPU the replacement runs only when a NaN shows among the candidates
  (``_candidates``); on a GPU up front, as fairseq does.
* ``<s>`` forced first: one fill and one scatter instead of boolean-indexed copies of the whole
  ``lprobs`` (``_prefix_tokens``).

Skipping the NaN scan needs a loop of our own: ``_beam_search`` is fairseq's ``_generate`` for plain
beam search step for step, with its state in one object (``_Beams``: ``drop`` finished sentences,
``select`` continuations). Lengths, the unknown-word penalty, n-gram blocking, finalization
(``finalize_hypos``) and the final sort are fairseq's own calls. Tokens, scores and positional
scores equal ``SequenceGenerator``'s (tested with ``torch.equal``). Other searches (sampling,
diverse beam, constrained), match-source-len, LM fusion and sources without ``src_tokens`` run
fairseq's loop (with ``FewerPassesBeamSearch`` for plain beam search).

``--task bart_summarization`` and ``--task bart_denoising`` build it (``BeamGeneratorTask``);
``BART_EXT_GENERATOR=fairseq`` builds fairseq's ``SequenceGenerator`` instead.

``BART_EXT_CONSTRAINT_SCORES=renormalized`` changes one rule, on purpose: fairseq sets a token ruled
out by n-gram blocking or the minimum length to -inf *after* the log-softmax, so a hypothesis' score
is the sum of its tokens' plain log-probabilities; CTranslate2 removes them *before* its softmax, so
the probabilities left are renormalised and a hypothesis whose likely continuations were blocked
scores higher. With the switch, each step's log-probabilities are renormalised over the tokens left
(a forced prefix token scores 0, as CTranslate2 does not count its prefix; the ``</s>`` forced at
the length limit keeps its plain log-probability, as ``bart_ext.convert.ct2.translate_like_fairseq``
scores it), so that outputs can be compared with a CTranslate2 export's (BENCHMARKS.md).
"""
from __future__ import annotations

import logging
import math

import torch
from fairseq import search
from fairseq.sequence_generator import SequenceGenerator
from torch import Tensor

from bart_ext import hardware, switches

logger = logging.getLogger(__name__)

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


def renormalized(lprobs: Tensor) -> Tensor:
    """``lprobs`` ``(rows, vocab)`` renormalised over each row's finite entries (a row with none stays
    as it is): the log-softmax of the logits with the ruled-out tokens removed first."""
    norm = torch.logsumexp(lprobs, dim=1, keepdim=True)
    return lprobs - norm.masked_fill(torch.isinf(norm), 0.0)


class _Beams:
    """The state of a beam search: ``beam`` rows per live sentence, sentences in batch order.

    Rows hold each hypothesis' tokens (``</s>`` or ``bos`` first), step scores and, when the model
    returns it, attention. ``drop`` removes finished sentences; ``select`` continues every
    sentence from chosen rows with one new token each. Everything that shrinks with the batch
    (``ignore``, ``src_lengths``, ``prefix``) lives here too, so that ``drop`` is the one place
    where the batch shrinks.
    """

    def __init__(self, bsz: int, beam: int, max_len: int, first: int, pad: int, src_lengths: Tensor,
                 prefix: Tensor | None, device: torch.device):
        self.beam = beam
        self.tokens = torch.full((bsz * beam, max_len + 2), pad, dtype=torch.long, device=device)
        self.tokens[:, 0] = first
        self.scores = torch.zeros(bsz * beam, max_len + 1, device=device)
        self.attn: Tensor | None = None
        self.ignore = torch.zeros(bsz, beam, dtype=torch.bool, device=device)  # fairseq's cands_to_ignore
        self.src_lengths, self.prefix = src_lengths, prefix
        self.first_row = torch.arange(bsz, device=device).unsqueeze(1) * beam  # each sentence's first row

    @property
    def bsz(self) -> int:
        return self.ignore.size(0)

    def drop(self, keep: Tensor) -> None:
        """Keep the sentences ``keep`` (indices among the live ones, ascending)."""
        n, b = keep.numel(), self.beam
        self.tokens = self.tokens.view(-1, b * self.tokens.size(1))[keep].view(n * b, -1)
        self.scores = self.scores.view(-1, b * self.scores.size(1))[keep].view(n * b, -1)
        if self.attn is not None:
            self.attn = self.attn.view(-1, b * self.attn.size(1) * self.attn.size(2))[keep].view(
                n * b, self.attn.size(1), -1)
        self.ignore, self.src_lengths = self.ignore[keep], self.src_lengths[keep]
        if self.prefix is not None:
            self.prefix = self.prefix[keep]
        self.first_row = self.first_row[:n]

    def select(self, step: int, rows: Tensor, tokens: Tensor, scores: Tensor) -> None:
        """Row ``i`` continues old row ``rows[i]`` with ``tokens`` / ``scores`` ``(bsz, beam)`` at ``step``."""
        self.tokens[:, : step + 1] = self.tokens[:, : step + 1].index_select(0, rows)
        self.tokens.view(self.bsz, self.beam, -1)[:, :, step + 1] = tokens
        if step > 0:
            self.scores[:, :step] = self.scores[:, :step].index_select(0, rows)
        self.scores.view(self.bsz, self.beam, -1)[:, :, step] = scores
        if self.attn is not None:
            self.attn[:, :, : step + 2] = self.attn[:, :, : step + 2].index_select(0, rows)


class BeamSequenceGenerator(SequenceGenerator):
    """fairseq's ``SequenceGenerator`` whose plain beam search makes fewer full-vocabulary passes."""

    def __init__(self, models, tgt_dict, *args, **kwargs):
        super().__init__(models, tgt_dict, *args, **kwargs)
        if type(self.search) is search.BeamSearch:  # other searches (sampling, diverse, ...) stay fairseq's
            self.search = FewerPassesBeamSearch(tgt_dict)
        self._told = False  # the fallback is logged once
        self.renormalize = switches.CONSTRAINT_SCORES.get() == "renormalized"

    def fallback_reason(self, sample: dict, constraints: Tensor | None) -> str | None:
        """Why this generation runs fairseq's loop, or None when it runs ours."""
        if not isinstance(self.search, FewerPassesBeamSearch):
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
        if reason is not None and self.renormalize:
            raise ValueError(f"{switches.CONSTRAINT_SCORES.name}=renormalized needs bart_ext's beam search, but {reason} "
                             "runs fairseq's loop: unset it for this generation")
        if reason is not None:
            if not self._told:
                logger.info("beam generator: %s, so fairseq's SequenceGenerator loop runs", reason)
                self._told = True
            return super()._generate(sample, prefix_tokens, constraints, bos_token)
        return self._beam_search(sample, prefix_tokens, bos_token)

    def _candidates(self, step: int, lprobs: Tensor, scores: Tensor, bsz: int) -> tuple[Tensor, Tensor, Tensor]:
        """The search's candidates, with fairseq's NaN replacement: on a GPU up front, as fairseq
        does it (a check would cost a device sync per step); on a CPU only when a NaN shows among
        the candidates. A NaN ranks above every number in a top-k, so a hypothesis with one puts it
        among the candidates; every write since the log-softmax stores -inf or copies a value, so
        replacing it late gives what replacing it first gives."""
        cpu = lprobs.device.type == "cpu"
        if not cpu:
            lprobs.masked_fill_(torch.isnan(lprobs), -math.inf)
        args = (step, lprobs.view(bsz, self.beam_size, -1), scores.view(bsz, self.beam_size, -1)[:, :, :step])
        cand = self.search.step(*args)
        if cpu and bool(torch.isnan(cand[0]).any()):
            lprobs.masked_fill_(torch.isnan(lprobs), -math.inf)
            cand = self.search.step(*args)
        return cand

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

    @torch.no_grad()
    def _beam_search(self, sample, prefix_tokens: Tensor | None, bos_token: int | None):
        """fairseq's ``_generate`` for plain beam search, step for step, its state in ``_Beams``."""
        net_input = sample["net_input"]
        src_tokens = net_input["src_tokens"]
        src_lengths = net_input.get("src_lengths")
        if src_lengths is None:
            src_lengths = (src_tokens.ne(self.eos) & src_tokens.ne(self.pad)).long().sum(dim=1)
        bsz, src_len = src_tokens.shape[:2]
        beam, dev = self.beam_size, src_tokens.device
        max_len = min(int(self.max_len_a * src_len + self.max_len_b), self.max_len - 1)
        if self.min_len > max_len:  # fairseq only asserts this
            raise ValueError(f"min_len {self.min_len} is larger than max_len {max_len} (max_len_a {self.max_len_a} "
                             f"x source length {src_len} + max_len_b {self.max_len_b}, at most the model's "
                             f"{self.max_len - 1}): adjust --min-len or --max-len-a/b")
        incremental_states = [{} for _ in range(self.model.models_size)]
        encoder_outs = self.model.forward_encoder(net_input)
        encoder_outs = self.model.reorder_encoder_out(encoder_outs, torch.arange(bsz, device=dev).repeat_interleave(beam))
        s = _Beams(bsz, beam, max_len, self.eos if bos_token is None else bos_token, self.pad, src_lengths,
                   prefix_tokens, dev)
        finalized: list[list[dict[str, Tensor]]] = [[] for _ in range(bsz)]
        finished = [False] * bsz
        remaining = bsz
        cand_offsets = torch.arange(2 * beam, device=dev)
        reorder: Tensor | None = None  # rows of the decoder's states that continue, in its numbering

        for step in range(max_len + 1):  # one more step than max_len, for </s>
            if reorder is not None:
                self.model.reorder_incremental_state(incremental_states, reorder)
                encoder_outs = self.model.reorder_encoder_out(encoder_outs, reorder)
            lprobs, step_attn = self.model.forward_decoder(s.tokens[:, : step + 1], encoder_outs, incremental_states,
                                                           self.temperature)
            lprobs[:, self.pad] = -math.inf
            lprobs[:, self.unk] -= self.unk_penalty
            if step >= max_len:  # only </s> is left
                lprobs[:, : self.eos] = -math.inf
                lprobs[:, self.eos + 1 :] = -math.inf
            if s.prefix is not None and step < s.prefix.size(1) and step < max_len:
                lprobs, s.tokens, s.scores = self._prefix_tokens(step, lprobs, s.scores, s.tokens, s.prefix, beam)
            else:
                if step < self.min_len:
                    lprobs[:, self.eos] = -math.inf
                if self.token_indices_to_suppress is not None:
                    lprobs[:, self.token_indices_to_suppress] = -math.inf
            if step_attn is not None:
                if s.attn is None:
                    s.attn = torch.empty(s.bsz * beam, step_attn.size(1), max_len + 2).to(s.scores)
                s.attn[:, :, step + 1].copy_(step_attn)
            s.scores = s.scores.type_as(lprobs)
            if self.repeat_ngram_blocker is not None:
                lprobs = self.repeat_ngram_blocker(s.tokens, lprobs, s.bsz, beam, step)
            if self.renormalize and step < max_len:
                lprobs = renormalized(lprobs)
            cand_scores, cand_indices, cand_beams = self._candidates(step, lprobs, s.scores, s.bsz)

            # Candidates ending in </s> among each sentence's first `beam` are finished hypotheses.
            eos_mask = cand_indices.eq(self.eos) & cand_scores.ne(-math.inf)
            eos_mask[:, :beam][s.ignore] = False
            eos_rows = (cand_beams + s.first_row)[:, :beam][eos_mask[:, :beam]]
            done: list[int] = []
            if eos_rows.numel() > 0:
                eos_scores = cand_scores[:, :beam][eos_mask[:, :beam]]
                done = self.finalize_hypos(step, eos_rows, eos_scores, s.tokens, s.scores, finalized, finished, beam,
                                           s.attn, s.src_lengths, max_len)
                remaining -= len(done)
            if remaining == 0:
                break
            if step >= max_len:
                raise RuntimeError(f"beam search reached max_len {max_len} with {remaining} sentences unfinished")

            # Finished sentences leave the batch; `state_row` numbers the surviving sentences' rows as
            # the decoder's states still hold them.
            state_row = s.first_row
            if done:
                keep_mask = torch.ones(s.bsz, dtype=torch.bool, device=dev)
                keep_mask[done] = False
                keep = torch.arange(s.bsz, device=dev).masked_select(keep_mask)
                state_row = keep.unsqueeze(1) * beam
                s.drop(keep)
                eos_mask, cand_beams = eos_mask[keep], cand_beams[keep]
                cand_scores, cand_indices = cand_scores[keep], cand_indices[keep]

            # Each sentence continues with its first `beam` candidates that neither end in </s> nor
            # sit in an ignored slot (fairseq's rule, slots and candidates aligned as it aligns them).
            eos_mask[:, :beam] |= s.ignore
            rank = eos_mask.long() * cand_offsets.numel() + cand_offsets[: eos_mask.size(1)]
            new_ignore, active = torch.topk(rank, k=beam, dim=1, largest=False)
            s.ignore = new_ignore.ge(cand_offsets.numel())[:, :beam]
            if not bool((~s.ignore).any(dim=1).all()):
                raise RuntimeError(f"beam search step {step}: a sentence has no hypothesis left to continue")
            from_beam = cand_beams.gather(1, active)
            s.select(step, (from_beam + s.first_row).view(-1), cand_indices.gather(1, active),
                     cand_scores.gather(1, active))
            reorder = (from_beam + state_row).view(-1)

        for i, hyps in enumerate(finalized):  # best first, sorted as fairseq sorts them
            order = torch.sort(torch.tensor([float(h["score"].item()) for h in hyps]), descending=True)[1]
            finalized[i] = [hyps[j] for j in order]
        return finalized


_bf16_decoding_checked = False


def warn_if_bf16_decoding_is_slower(models) -> None:
    """A checkpoint trained with ``--bf16-autocast`` decodes with bf16 matmuls too; on a CPU where
    those are slower than fp32's, say so once per process, with the way to decode in fp32."""
    global _bf16_decoding_checked
    if _bf16_decoding_checked:
        return
    if not any(getattr(m, "bf16_autocast", False) and next(m.parameters()).device.type == "cpu" for m in models):
        return
    _bf16_decoding_checked = True
    slower = hardware.bf16_slower_than_fp32()
    if slower:
        logger.warning("the model was trained with --bf16-autocast and decodes with bf16 matmuls, but %s; "
                       "--model-overrides \"{'bf16_autocast': False}\" (bart_ext.load(..., bf16=False)) decodes in fp32",
                       slower)


class BeamGeneratorTask:
    """Task mixin: fairseq's ``build_generator`` with ``BeamSequenceGenerator``, unless a generator class
    is asked for, alignments are printed, or ``BART_EXT_GENERATOR=fairseq``; and fairseq's diverse beam
    search given the batch positions it indexes (``inference_step``)."""

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None, **kwargs):
        warn_if_bf16_decoding_is_slower(models)
        if getattr(args, "print_alignment", False):
            from bart_ext.adapters.fairseq_model import BartEncoderDecoder

            if any(isinstance(m, BartEncoderDecoder) for m in models):
                raise ValueError("--print-alignment needs attention weights, which the bart_preln models do not "
                                 "materialise (scaled_dot_product_attention): generate without --print-alignment")
        if seq_gen_cls is None and not getattr(args, "print_alignment", False) and switches.GENERATOR.get() == "bart_ext":
            seq_gen_cls = BeamSequenceGenerator
        elif switches.CONSTRAINT_SCORES.get() == "renormalized":
            raise ValueError(f"{switches.CONSTRAINT_SCORES.name}=renormalized needs bart_ext's generator, which "
                             f"{switches.GENERATOR.name}=fairseq, --print-alignment or another generator class replaces")
        return super().build_generator(models, args, seq_gen_cls=seq_gen_cls,
                                       extra_gen_cls_kwargs=extra_gen_cls_kwargs, **kwargs)

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        """fairseq's, except under ``--diverse-beam-groups``: fairseq's SequenceGenerator passes the sample's
        dataset ids (``sample["id"]``) to ``DiverseBeamSearch``, which indexes its per-sentence overlap
        counts (one row per sentence of the batch) with them, so fairseq-generate failed with "index 34
        is out of bounds for dimension 0 with size 16" on the second batch of any split. The search is
        given the batch positions it means; the caller's sample, and the ids it writes, are unchanged."""
        if isinstance(getattr(generator, "search", None), search.LexicallyConstrainedBeamSearch) and constraints is None:
            raise ValueError("--constraints: this batch has no constraints (fairseq-interactive reads them after a tab "
                             "on each input line; binarized data, as fairseq-generate reads it, has none)")
        if isinstance(getattr(generator, "search", None), search.DiverseBeamSearch) and "id" in sample:
            ids = sample["id"]
            sample = {**sample, "id": torch.arange(len(ids), device=ids.device if torch.is_tensor(ids) else None)}
        return super().inference_step(generator, models, sample, prefix_tokens=prefix_tokens, constraints=constraints)
