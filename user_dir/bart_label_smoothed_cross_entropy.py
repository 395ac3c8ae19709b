"""``--criterion bart_label_smoothed_cross_entropy``: fairseq's ``label_smoothed_cross_entropy``
without the full logits.

The loss's code: ``bart_ext/losses/chunked.py``; its fairseq side: ``bart_ext/adapters/fairseq_criteria.py``.
"""
from dataclasses import dataclass, field

from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterionConfig

from bart_ext.adapters.fairseq_criteria import FusedLabelSmoothedCrossEntropy


@dataclass
class BartLabelSmoothedCrossEntropyConfig(LabelSmoothedCrossEntropyCriterionConfig):
    loss_chunk_tokens: int = field(
        default=0, metadata={"help": "target tokens per chunk of the fused projection + loss (0: by vocabulary size)"}
    )


@register_criterion("bart_label_smoothed_cross_entropy", dataclass=BartLabelSmoothedCrossEntropyConfig)
class BartLabelSmoothedCrossEntropy(FusedLabelSmoothedCrossEntropy):
    def __init__(self, task, sentence_avg, label_smoothing, ignore_prefix_size=0, report_accuracy=False,
                 loss_chunk_tokens=0):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy,
                         chunk_tokens=loss_chunk_tokens)
