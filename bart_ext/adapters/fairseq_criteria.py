"""fairseq's ``cross_entropy`` and ``label_smoothed_cross_entropy`` computed by the chunked fused loss.

Same configuration fields, logged values (``loss``, ``nll_loss``, ``n_correct``/``total`` with
``--report-accuracy``) and ``reduce_metrics`` as fairseq's criteria, which these subclass; only how
the loss is computed differs: from the decoder's features and its output projection in chunks of
tokens (``bart_ext/losses/chunked.py``), so the (tokens x vocabulary) logits never exist at once.

A model the fused path cannot serve (no ``decoder.output_projection`` Linear without bias, an
adaptive softmax) or an unreduced loss falls back to fairseq's computation, logged once.
"""
from __future__ import annotations

import contextlib
import logging

import torch
from fairseq.criterions.cross_entropy import CrossEntropyCriterion
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from torch import Tensor, nn

from bart_ext.losses import fused_linear_cross_entropy

logger = logging.getLogger(__name__)


def output_weight(model) -> Tensor | None:
    """The output projection's weight when the fused loss can replace ``model.decoder.output_layer``."""
    decoder = getattr(model, "decoder", None)
    proj = getattr(decoder, "output_projection", None)
    if not isinstance(proj, nn.Linear) or proj.bias is not None:
        return None
    if getattr(decoder, "adaptive_softmax", None) is not None:
        return None
    return proj.weight


def _autocast_of(model, device_type: str):
    """The loss runs where fairseq's would: inside ``--amp``'s autocast already, or under the
    model's own ``--bf16-autocast`` (which covers only the model's forward)."""
    if getattr(model, "bf16_autocast", False) and not torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _Fused:
    """What both criteria share: features, target and the fused loss."""

    chunk_tokens = 0
    _warned = False

    def fused_loss(self, model, sample, eps: float, ignore_prefix: int = 0, count_correct: bool = False):
        """``(loss, nll_loss, n_correct, total)`` or ``None`` when this model needs fairseq's path."""
        weight = output_weight(model)
        if weight is None:
            if not _Fused._warned:
                logger.warning("%s: this model has no plain output projection; using fairseq's unfused loss",
                               type(self).__name__)
                _Fused._warned = True
            return None
        features, _ = model(**sample["net_input"], features_only=True)  # (B, T, C)
        target = model.get_targets(sample, [features])
        if ignore_prefix > 0:
            features, target = features[:, ignore_prefix:], target[:, ignore_prefix:]
        with _autocast_of(model, features.device.type):
            loss, nll, n_correct = fused_linear_cross_entropy(
                features, weight, target, ignore_index=self.padding_idx, label_smoothing=eps,
                chunk_tokens=self.chunk_tokens, count_correct=count_correct)
        return loss, nll, n_correct, target.ne(self.padding_idx).sum()


class FusedCrossEntropy(_Fused, CrossEntropyCriterion):
    def __init__(self, task, sentence_avg, chunk_tokens=0):
        super().__init__(task, sentence_avg)
        self.chunk_tokens = chunk_tokens

    def forward(self, model, sample, reduce=True):
        fused = self.fused_loss(model, sample, 0.0) if reduce else None
        if fused is None:
            return super().forward(model, sample, reduce=reduce)
        loss = fused[0]
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        return loss, sample_size, {"loss": loss.data, "ntokens": sample["ntokens"],
                                   "nsentences": sample["target"].size(0), "sample_size": sample_size}


class FusedLabelSmoothedCrossEntropy(_Fused, LabelSmoothedCrossEntropyCriterion):
    def __init__(self, task, sentence_avg, label_smoothing, ignore_prefix_size=0, report_accuracy=False,
                 chunk_tokens=0):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        self.chunk_tokens = chunk_tokens

    def forward(self, model, sample, reduce=True):
        fused = self.fused_loss(model, sample, self.eps, self.ignore_prefix_size, self.report_accuracy) if reduce else None
        if fused is None:
            return super().forward(model, sample, reduce=reduce)
        loss, nll, n_correct, total = fused
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {"loss": loss.data, "nll_loss": nll.data, "ntokens": sample["ntokens"],
                          "nsentences": sample["target"].size(0), "sample_size": sample_size}
        if self.report_accuracy:
            logging_output["n_correct"] = int(n_correct)
            logging_output["total"] = int(total)
        return loss, sample_size, logging_output
