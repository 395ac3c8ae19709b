"""``--task bart_denoising``: BART's text infilling + sentence permutation, exact and seeded.

The task's code: ``bart_ext/adapters/fairseq_denoising.py`` (``BartDenoisingTaskBase``: data, noise,
batches); the noise itself: ``bart_ext/noising.py``.
"""
from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.tasks import register_task
from omegaconf import II, MISSING

from bart_ext.adapters.fairseq_denoising import BartDenoisingTaskBase


@dataclass
class BartDenoisingConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={
        "help": "fairseq-preprocess output (dict.txt, {split}.bin/.idx), or LDDL parquet shards ({split}/*.parquet)"})
    tokens_per_sample: int = field(default=512, metadata={"help": "longest sample, <s> and </s> included"})
    mask: float = field(default=0.3, metadata={"help": "share of words masked (budget ceil(mask * words))"})
    mask_random: float = field(default=0.1, metadata={"help": "share of masks replaced by a random token"})
    poisson_lambda: float = field(default=3.5, metadata={"help": "mean span length in words"})
    replace_length: int = field(default=1, metadata={"help": "1: one <mask> per span, 0: delete, -1: per token"})
    permute_sentences: float = field(default=1.0, metadata={"help": "share of a sample's sentences shuffled"})
    rotate: float = field(default=0.0, metadata={"help": "probability of rotating the document"})
    insert: float = field(default=0.0, metadata={"help": "share of tokens inserted as <mask>"})
    word_starts: ChoiceEnum(["gpt2", "sentencepiece", "token"]) = field(
        default="gpt2", metadata={"help": "how word starts are recognised in the dictionary"}
    )
    gpt2_encoder_json: str = field(default="", metadata={"help": "GPT-2 encoder.json (default: DATA/encoder.json)"})
    lddl_bin_size: int = field(default=8, metadata={
        "help": "LDDL data: width in tokens of the (source, target) length bins (0: batches in stream order)"})
    lddl_skip_corrupt: bool = field(default=False, metadata={"help": "LDDL data: skip unreadable shards with a warning"})
    lddl_sentencepiece_model: str = field(default="", metadata={
        "help": "LDDL data with --word-starts sentencepiece: the .model (default: DATA/sentencepiece.model)"})
    seed: int = II("common.seed")
    max_source_positions: int = field(default=1024, metadata={"help": "longest source"})
    max_target_positions: int = field(default=1024, metadata={"help": "longest target"})
    dataset_impl: Optional[str] = II("dataset.dataset_impl")


@register_task("bart_denoising", dataclass=BartDenoisingConfig)
class BartDenoisingTask(BartDenoisingTaskBase):
    pass
