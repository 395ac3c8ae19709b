"""``--scoring bart_rouge``: fairseq-generate scores its summaries with ROUGE-1/2/L/Lsum F1
(``bart_ext/adapters/fairseq_scoring.py``); give it ``--bpe`` so that it scores text."""
from dataclasses import dataclass

from fairseq.dataclass import FairseqDataclass
from fairseq.scoring import register_scorer

from bart_ext.adapters.fairseq_scoring import RougeScorer


@dataclass
class BartRougeConfig(FairseqDataclass):
    pass


@register_scorer("bart_rouge", dataclass=BartRougeConfig)
class BartRougeScorer(RougeScorer):
    pass
