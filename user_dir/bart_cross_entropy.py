"""``--criterion bart_cross_entropy``: fairseq's ``cross_entropy`` without the full logits.

The loss's code: ``bart_ext/losses/chunked.py``; its fairseq side: ``bart_ext/adapters/fairseq_criteria.py``.
"""
from dataclasses import dataclass, field

from fairseq.criterions import register_criterion
from fairseq.criterions.cross_entropy import CrossEntropyCriterionConfig

from bart_ext.adapters.fairseq_criteria import FusedCrossEntropy


@dataclass
class BartCrossEntropyConfig(CrossEntropyCriterionConfig):
    loss_chunk_tokens: int = field(
        default=0, metadata={"help": "target tokens per chunk of the fused projection + loss (0: by vocabulary size)"}
    )


@register_criterion("bart_cross_entropy", dataclass=BartCrossEntropyConfig)
class BartCrossEntropy(FusedCrossEntropy):
    def __init__(self, task, sentence_avg, loss_chunk_tokens=0):
        super().__init__(task, sentence_avg, chunk_tokens=loss_chunk_tokens)
