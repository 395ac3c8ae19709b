"""``--optimizer bart_adam``: fairseq's ``adam`` update (same options) in one fused pass per step.

The optimizer's code: ``bart_ext/adam.py``.
"""
from dataclasses import dataclass, field
from typing import Any, List

from fairseq.dataclass import FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II

from bart_ext.adam import Adam

from .nvlamb import parse_betas


@dataclass
class BartAdamConfig(FairseqDataclass):
    adam_betas: Any = field(default=(0.9, 0.999), metadata={"help": "betas for Adam optimizer"})
    adam_eps: float = field(default=1e-8, metadata={"help": "epsilon for Adam optimizer (added to sqrt(v))"})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay, as fairseq's adam"})
    lr: List[float] = II("optimization.lr")


@register_optimizer("bart_adam", dataclass=BartAdamConfig)
class FairseqBartAdam(FairseqOptimizer):
    """fairseq's ``adam`` (its AdamW-style update), fused: the same options and state."""

    def __init__(self, cfg, params):
        super().__init__(cfg)
        self._optimizer = Adam(params, **self.optimizer_config)

    @property
    def optimizer_config(self):
        return {
            "lr": self.cfg.lr[0],
            "betas": parse_betas(self.cfg.adam_betas, "adam_betas"),
            "eps": self.cfg.adam_eps,
            "weight_decay": self.cfg.weight_decay,
        }

    @property
    def supports_memory_efficient_fp16(self):
        return True

    @property
    def supports_flat_params(self):
        return True
