"""``--optimizer nvlamb``: NVIDIA's LAMB (apex FusedLAMB with use_nvlamb) without apex."""
from dataclasses import dataclass, field
from typing import Any, List

from fairseq.dataclass import FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II

from bart_ext.nvlamb import NVLAMB, param_groups


@dataclass
class NVLAMBConfig(FairseqDataclass):
    lamb_betas: Any = field(default=(0.9, 0.999), metadata={"help": "betas of the moments"})
    lamb_eps: float = field(default=1e-6, metadata={"help": "added to sqrt(v_hat)"})
    weight_decay: float = field(
        default=0.01, metadata={"help": "decoupled weight decay; never on 1-D parameters (biases, LayerNorms)"}
    )
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "clip the global gradient norm (0: off); leave --clip-norm at 0"}
    )
    no_nvlamb: bool = field(
        default=False, metadata={"help": "trust ratio only where weight decay != 0 (what NVIDIA's recipe ran)"}
    )
    no_bias_correction: bool = field(default=False, metadata={"help": "no bias correction of the moments"})
    lr: List[float] = II("optimization.lr")


@register_optimizer("nvlamb", dataclass=NVLAMBConfig)
class FairseqNVLAMB(FairseqOptimizer):
    def __init__(self, cfg, params):
        super().__init__(cfg)
        self._optimizer = NVLAMB(param_groups(params, cfg.weight_decay), **self.optimizer_config)

    @property
    def optimizer_config(self):
        betas = self.cfg.lamb_betas
        return {
            "lr": self.cfg.lr[0],
            "betas": tuple(eval(betas) if isinstance(betas, str) else betas),
            "eps": self.cfg.lamb_eps,
            "max_grad_norm": self.cfg.max_grad_norm,
            "use_nvlamb": not self.cfg.no_nvlamb,
            "bias_correction": not self.cfg.no_bias_correction,
        }

    @property
    def supports_memory_efficient_fp16(self):
        return True  # fp16 parameters are updated through fp32 state and arithmetic

    @property
    def supports_flat_params(self):
        # The trust ratio is per tensor: one flattened fp32 copy of all parameters
        # would turn it into a single global ratio. fairseq then asks for
        # --fp16-no-flatten-grads.
        return False
