"""``--optimizer nvlamb``: NVIDIA's LAMB (apex FusedLAMB with use_nvlamb) without apex.

The optimizer's code: ``bart_ext/nvlamb.py``.
"""
import ast
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
        return {
            "lr": self.cfg.lr[0],
            "betas": parse_betas(self.cfg.lamb_betas),
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


def parse_betas(betas, field: str = "lamb_betas") -> tuple:
    """``(0.9, 0.999)`` from the command line's string, hydra's string or a sequence; never ``eval``.
    ``field`` names the option in the error."""
    try:
        value = ast.literal_eval(betas) if isinstance(betas, str) else betas
        value = tuple(float(b) for b in value)
    except (ValueError, TypeError, SyntaxError):
        value = None
    if value is None or len(value) != 2:
        raise ValueError(f"{field} must be two numbers such as '(0.9, 0.999)', got {betas!r}")
    return value
