"""``--task bart_summarization``: translation-format summarization data, with BART's ``<s>`` conventions.

The task's code: ``bart_ext/adapters/fairseq_summarization.py``; its beam search:
``bart_ext/adapters/beam_generator.py``; preparing its data: ``bart_ext/summarization_data.py``.
"""
from dataclasses import dataclass, field
from typing import Optional

from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig

from bart_ext.adapters.fairseq_summarization import BartSummarizationTaskBase


@dataclass
class BartSummarizationConfig(TranslationConfig):
    source_lang: Optional[str] = field(default="source", metadata={"help": "source suffix of the data files"})
    target_lang: Optional[str] = field(default="target", metadata={"help": "target suffix of the data files"})
    prepend_bos: bool = field(default=True, metadata={"help": "sources begin with <s>, as in BART pretraining"})
    target_bos: bool = field(default=True, metadata={"help": "targets begin with <s>, as in BART pretraining"})
    force_bos: bool = field(default=True, metadata={
        "help": "generation: force <s> as the first token (as fairseq's BART hub interface); "
                "turn off to decode as stock fairseq-generate"})


@register_task("bart_summarization", dataclass=BartSummarizationConfig)
class BartSummarizationTask(BartSummarizationTaskBase):
    pass
