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
    eval_rouge: bool = field(default=False, metadata={
        "help": "validation: summarize the validation split and log ROUGE-1/2/L F1 x 100 (rouge1, rouge2, rougeL); "
                "--best-checkpoint-metric rougeL --maximize-best-checkpoint-metric keeps the best summarizer"})
    eval_rouge_args: str = field(default="{}", metadata={
        "help": "generation options for --eval-rouge as JSON, fairseq-generate's names with underscores "
                "('{\"beam\": 4, \"max_len_b\": 60}'), or a preset the other keys override ('{\"preset\": \"xsum\"}')"})
    eval_rouge_print_samples: bool = field(default=False, metadata={
        "help": "--eval-rouge: log the first summary and reference of each validation batch"})


@register_task("bart_summarization", dataclass=BartSummarizationConfig)
class BartSummarizationTask(BartSummarizationTaskBase):
    pass
