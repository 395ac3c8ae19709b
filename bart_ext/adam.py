"""fairseq's Adam update in one fused pass per step.

fairseq's ``--optimizer adam`` runs, where apex's FusedAdam is absent (every CPU), its own
``fairseq.optim.adam.Adam``: eight PyTorch operations per parameter tensor, each a pass over
memory. Its update is AdamW's with the epsilon added before the second moment's bias correction:

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
    p = p - lr wd p
    p = p - lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)

which is ``torch.optim.AdamW``'s update with ``eps / sqrt(1 - b2^t)`` in place of ``eps``. ``Adam``
below makes that one call of PyTorch's fused AdamW kernel per group of tensors at the same step
count (one group in practice): the same update up to fp32 rounding (tests/unit/test_adam.py), at
0.3x the time on a mid-size model (``scripts/bench_train.py --optimizer fairseq``). Its state
has fairseq's keys (``step`` as an int, ``exp_avg``, ``exp_avg_sq``), so optimizer states saved by
either load into the other.

Tensors the fused kernel does not take (fp16/bf16 parameters under fairseq's memory-efficient
fp16, sparse gradients are refused as fairseq does) take a per-tensor fp32 path with the same
update.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


class Adam(torch.optim.Optimizer):
    """fairseq's Adam (decoupled weight decay, ``eps`` before the bias correction), fused.

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        betas: the moments' decay rates.
        eps: added to ``sqrt(v)``, as fairseq adds it.
        weight_decay: decoupled weight decay (``p -= lr * weight_decay * p``).
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        if not 0.0 <= lr:
            raise ValueError(f"Adam: lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Adam: betas must be in [0, 1), got {tuple(betas)}")
        if not 0.0 <= eps:
            raise ValueError(f"Adam: eps must be >= 0, got {eps}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @property
    def supports_memory_efficient_fp16(self) -> bool:
        return True  # fp16/bf16 parameters are updated through fp32 state and arithmetic

    @property
    def supports_flat_params(self) -> bool:
        return True

    def _state(self, p: Tensor) -> dict:
        state = self.state[p]
        if len(state) == 0:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
        else:  # a loaded state: fp32, on the parameter's device
            state["exp_avg"] = state["exp_avg"].to(device=p.device, dtype=torch.float32)
            state["exp_avg_sq"] = state["exp_avg_sq"].to(device=p.device, dtype=torch.float32)
            state["step"] = int(state["step"])
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            fused: dict[tuple, list[Tensor]] = {}  # (device, step) -> parameters
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Adam does not support sparse gradients, please consider SparseAdam instead")
                state = self._state(p)
                if p.dtype == torch.float32 and p.grad.dtype == torch.float32 and p.is_contiguous() \
                        and p.grad.is_contiguous():
                    fused.setdefault((p.device, state["step"]), []).append(p)
                else:
                    self._step_one(p, state, lr, b1, b2, eps, wd)
            for (device, step), ps in fused.items():
                t = step + 1
                states = [self.state[p] for p in ps]
                steps = [torch.tensor(float(t), device=device)] * len(ps)
                torch._fused_adamw_(
                    ps, [p.grad for p in ps], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
                    steps, lr=lr, beta1=b1, beta2=b2, weight_decay=wd, eps=eps / math.sqrt(1 - b2**t),
                    amsgrad=False, maximize=False,
                )
                for s in states:
                    s["step"] = t
        return loss

    @staticmethod
    def _step_one(p: Tensor, state: dict, lr: float, b1: float, b2: float, eps: float, wd: float) -> None:
        """The same update for one tensor, in fp32 (fp16/bf16 parameters, non-contiguous tensors)."""
        state["step"] = t = state["step"] + 1
        grad = p.grad.float()
        p32 = p.float()
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.lerp_(grad, 1 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        if wd:
            p32.mul_(1 - lr * wd)
        p32.addcdiv_(m, v.sqrt().add_(eps), value=-lr * math.sqrt(1 - b2**t) / (1 - b1**t))
        if p32 is not p:
            p.copy_(p32)
