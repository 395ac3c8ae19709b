"""ROUGE inside fairseq's tools: ``fairseq-generate --scoring bart_rouge`` and ``--eval-rouge`` validation.

fairseq scores generation with BLEU (``--scoring bleu``, ``sacrebleu``, ``chrf``) and validates
translation with ``--eval-bleu``; summarization is scored with ROUGE. Both paths here score with
``bart_ext.rouge`` (Google's rouge-score, stemming), the same numbers as ``scripts/rouge.py``.
"""
from __future__ import annotations

import json
import logging
import re

import numpy as np
from fairseq.scoring import BaseScorer

from bart_ext.rouge import METRICS, bootstrap, per_document

_SPECIAL = re.compile(r"(?:^|\s)</?s>(?=\s|$)")  # <s> / </s> left in a line as words
_IDS = re.compile(r"\s*\d+(?:\s+\d+){2,}\s*")  # three or more dictionary ids and nothing else


def _not_about_bleu(record: logging.LogRecord) -> bool:
    return "BLEU score" not in str(record.msg)


def _clean(text: str) -> str:
    return _SPECIAL.sub(" ", text).strip()


class RougeScorer(BaseScorer):
    """``fairseq-generate --scoring bart_rouge``: ROUGE-1/2/L/Lsum F1 of the detokenized hypotheses (the
    D- lines) against the references (T-), with 95% bootstrap intervals over documents. ``score()`` is
    ROUGE-L F1 x 100.

    fairseq hands a scorer text only when ``--bpe`` decodes it; without, its lines are BPE ids, and ROUGE
    of ids is no ROUGE: the first such reference stops the run with the options that decode it."""

    def __init__(self, cfg):
        super().__init__(cfg)
        # fairseq-generate warns, whatever the scorer, that "the BLEU score is computed on BPE tokens" when
        # --bpe is given without --sacrebleu: not so for this one, which scores the decoded text.
        logging.getLogger("fairseq_cli.generate").addFilter(_not_about_bleu)

    def add_string(self, ref: str, pred: str) -> None:
        if _IDS.fullmatch(ref):
            raise ValueError(
                f"--scoring bart_rouge scores text, but fairseq-generate handed it dictionary ids ({ref[:40]!r} ...): "
                "decode them with --bpe bart_gpt2 --gpt2-encoder-json DATA/encoder.json --gpt2-vocab-bpe "
                "DATA/vocab.bpe (or --bpe sentencepiece --sentencepiece-model DATA/sentencepiece.model), the "
                "files the data was encoded with")
        super().add_string(_clean(ref), _clean(pred))

    def _scores(self) -> dict[str, np.ndarray]:
        return per_document(self.pred, self.ref)

    def score(self) -> float:
        return 100 * float(self._scores()["rougeL"].mean()) if self.ref else 0.0

    def result_string(self) -> str:
        if not self.ref:
            return "ROUGE: no documents with references were scored"
        scores = self._scores()
        parts = []
        for name, metric in zip(("ROUGE-1", "ROUGE-2", "ROUGE-L", "ROUGE-Lsum"), METRICS):
            ci = bootstrap(scores[metric])
            parts.append(f"{name} {100 * ci.mean:.2f} [{100 * ci.low:.2f}, {100 * ci.high:.2f}]")
        return f"{', '.join(parts)} (F1, 95% bootstrap intervals, {len(self.ref)} documents)"


def generation_settings(spec: str) -> dict:
    """``--eval-rouge-args``: fairseq-generate's options as JSON (``{"beam": 4, "max_len_b": 60}``), or a
    named preset (``{"preset": "xsum"}``, configs/generate) that the other keys override.

    Raises:
        ValueError: not a JSON object, an unknown preset, or a key that is not a generation option
            (fairseq would ignore it without a word).
    """
    from fairseq.dataclass.configs import GenerationConfig

    from bart_ext.summarization_data import load_preset

    try:
        settings = json.loads(spec)
    except json.JSONDecodeError as err:
        raise ValueError(f"--eval-rouge-args {spec!r} is not JSON: {err}") from None
    if not isinstance(settings, dict):
        raise ValueError(f"--eval-rouge-args {spec!r} must be a JSON object of generation options")
    preset = settings.pop("preset", None)
    settings = {**(load_preset(preset) if preset is not None else {}), **settings}
    known = set(GenerationConfig.__dataclass_fields__)
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"--eval-rouge-args: {', '.join(unknown)} is not a generation option (fairseq-generate's "
                         "names with underscores: beam, lenpen, max_len_b, min_len, no_repeat_ngram_size, ...)")
    return settings


class RougeValidation:
    """``--eval-rouge``: summarize each validation batch with the task's generator and log the summed
    per-document ROUGE F1; ``reduce_metrics`` turns the sums of all batches and all ranks into ``rouge1``,
    ``rouge2`` and ``rougeL`` (x 100), so that ``--best-checkpoint-metric rougeL
    --maximize-best-checkpoint-metric`` keeps the checkpoint that summarizes best."""

    DOCS = "_rouge_docs"

    def __init__(self, task, model, data: str, spec: str, print_samples: bool):
        from argparse import Namespace

        from bart_ext.bpe import FolderCodec

        self.task, self.print_samples = task, print_samples
        try:
            self.codec = FolderCodec(data)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"--eval-rouge decodes summaries to text: {err} (put them into the data "
                                    "folder, or train without --eval-rouge)") from None
        self.generator = task.build_generator([model], Namespace(**generation_settings(spec)))

    def logging_output(self, sample, model) -> dict[str, float]:
        from fairseq import utils

        d = self.task.target_dictionary
        out = self.task.inference_step(self.generator, [model], sample)
        hyps = [self.codec.decode(d, h[0]["tokens"]) for h in out]
        refs = [self.codec.decode(d, utils.strip_pad(t, d.pad())) for t in sample["target"]]
        if self.print_samples and hyps:
            import logging

            log = logging.getLogger(__name__)
            log.info("example summary: %s", hyps[0])
            log.info("example reference: %s", refs[0])
        scores = per_document(hyps, refs)
        return {self.DOCS: len(hyps), **{f"_{m}_sum": float(scores[m].sum()) for m in METRICS[:3]}}

    @classmethod
    def reduce(cls, logging_outputs) -> None:
        from fairseq import metrics

        docs = float(sum(log.get(cls.DOCS, 0) for log in logging_outputs))  # tensors after a ranks' all-reduce
        if not docs:
            return  # training logs, or a validation without --eval-rouge
        metrics.log_scalar(cls.DOCS, docs)
        for m in METRICS[:3]:
            metrics.log_scalar(f"_{m}_sum", float(sum(log.get(f"_{m}_sum", 0.0) for log in logging_outputs)))
            metrics.log_derived(m, lambda meters, m=m: round(100 * meters[f"_{m}_sum"].sum / meters[cls.DOCS].sum, 2))
