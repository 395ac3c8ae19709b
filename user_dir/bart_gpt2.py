"""``--bpe bart_gpt2``: GPT-2 BPE with the leading space bart_ext's data gives every text
(``bart_ext/adapters/fairseq_bpe.py``); same options as ``--bpe gpt2``."""
from fairseq.data.encoders import register_bpe
from fairseq.data.encoders.gpt2_bpe import GPT2BPEConfig

from bart_ext.adapters.fairseq_bpe import RunningTextGPT2BPE


@register_bpe("bart_gpt2", dataclass=GPT2BPEConfig)
class BartGPT2BPE(RunningTextGPT2BPE):
    pass
