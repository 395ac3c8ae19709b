"""NVLAMB: LAMB as NVIDIA's apex ``FusedLAMB(use_nvlamb=True)`` computes it, without apex.

The algorithm (You et al. 2019, "Large Batch Optimization for Deep Learning";
NVIDIA's variant as in apex ``csrc/multi_tensor_lamb.cu``):

1. the global L2 norm of all gradients; above ``max_grad_norm`` every gradient
   is scaled by ``max_grad_norm / norm``;
2. ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``;
3. bias correction ``m / (1 - b1^t)``, ``v / (1 - b2^t)``;
4. ``u = m_hat / (sqrt(v_hat) + eps) + wd w`` (decoupled weight decay);
5. per tensor ``r = ||w|| / ||u||`` (``r = 1`` if either is 0), applied to every
   tensor with ``use_nvlamb``, else only where ``wd != 0``;
6. ``w = w - lr r u``.

A step whose gradients hold inf or NaN is skipped: weights, moments and the
step count stay as they were. State and arithmetic are fp32 for fp16/bf16
parameters (written back after the update). No fairseq import; one host synchronisation per step
(the global norm). Every tensor counts its own steps (a tensor without a gradient in a step keeps
its count), and after a clipped step ``p.grad`` holds the clipped gradient, on all three paths
(PyTorch's fused kernel writes it there; the other two paths do the same division).
Three implementations of the same step, chosen per parameter group:

- ``_update_cpu``: contiguous fp32 tensors on the CPU, two passes over memory per
  tensor in a small C kernel (``nvlamb_cpu``, compiled once per machine);
- ``_update_fused``: other fp32 groups (GPUs) run steps 2-4 in PyTorch's fused
  AdamW kernel on a buffer the size of the parameters, then multi-tensor
  (``torch._foreach_*``) operations;
- ``_update_foreach``: everything else (fp16/bf16 parameters, fp32 state),
  multi-tensor operations only.
"""
from __future__ import annotations

import ctypes
import math
from collections.abc import Iterable

import torch
from torch import Tensor

from bart_ext import nvlamb_cpu


def _compute_dtype(t: Tensor) -> torch.dtype:
    """fp32 for fp16/bf16 tensors (state and arithmetic), the tensor's own dtype otherwise."""
    return torch.promote_types(t.dtype, torch.float32)


def _clip_scale(clip: float, device) -> Tensor:
    """``1 / clip`` as the fused kernel's ``grad_scale`` (fp32): gradients are divided by it."""
    return torch.tensor(1.0 / clip, dtype=torch.float32, device=device)


def _one_minus(xs) -> list[Tensor]:
    xs = list(xs)
    torch._foreach_neg_(xs)
    torch._foreach_add_(xs, 1.0)
    return xs


def _upcast(t: Tensor) -> Tensor:
    return t if t.dtype == _compute_dtype(t) else t.to(_compute_dtype(t))


class NVLAMB(torch.optim.Optimizer):
    """LAMB with NVIDIA's trust-ratio rule.

    Args:
        params: parameters or parameter groups (a group may set its own ``weight_decay``).
        lr: learning rate.
        betas: ``(b1, b2)`` for the moments.
        eps: added to ``sqrt(v_hat)``.
        weight_decay: decoupled weight decay ``wd``.
        bias_correction: divide the moments by ``1 - b^t``.
        max_grad_norm: clip the global gradient norm to this; 0 disables clipping.
        use_nvlamb: apply the trust ratio to tensors without weight decay too.
        cpu_kernel: use the compiled CPU passes where they apply (see ``nvlamb_cpu``);
            False keeps to PyTorch operations.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        bias_correction: bool = True,
        max_grad_norm: float = 1.0,
        use_nvlamb: bool = True,
        cpu_kernel: bool = True,
    ):
        if lr < 0 or eps < 0 or weight_decay < 0 or max_grad_norm < 0:
            raise ValueError(f"NVLAMB: lr, eps, weight_decay and max_grad_norm must be >= 0 "
                             f"(got {lr}, {eps}, {weight_decay}, {max_grad_norm})")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"NVLAMB: betas must lie in [0, 1), got {betas}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        bias_correction=bias_correction, max_grad_norm=max_grad_norm, use_nvlamb=use_nvlamb)
        super().__init__(params, defaults)
        self.last_grad_norm: float | None = None
        self.scratch: dict[Tensor, Tensor] = {}
        self.skipped_steps = 0
        self.use_cpu_kernel = cpu_kernel
        self._lib = None  # loaded at the first step that can use it
        self.last_paths: list[str] = []  # the implementation each group took in the last step

    def _cpu_lib(self, tensors: list[Tensor]):
        """The compiled CPU passes if every tensor is contiguous fp32 on the CPU, else None."""
        if not self.use_cpu_kernel or not all(
                t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors):
            return None
        if self._lib is None:
            self._lib = nvlamb_cpu.load() or False
        return self._lib or None

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's loading, then every state tensor on its parameter's device in the dtype ``_state``
        gives it. torch leaves ``step`` where the checkpoint was read (fairseq reads to the CPU)
        unless a group is fused or capturable, but the fused path needs it beside the parameters
        (``_fused_adamw_``), and older checkpoints hold other step dtypes."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state:
                    for key, value in state.items():
                        if torch.is_tensor(value):
                            state[key] = value.to(device=p.device, dtype=_compute_dtype(p))
                        elif key == "step":  # a number, as some optimizers save it
                            state[key] = torch.tensor(float(value), dtype=_compute_dtype(p), device=p.device)

    def _state(self, p: Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=_compute_dtype(p), device=p.device)
            state["exp_avg"] = torch.zeros_like(p, dtype=_compute_dtype(p), memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=_compute_dtype(p), memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def global_grad_norm(self) -> Tensor:
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return torch.zeros(())
        lib = self._cpu_lib(grads)
        if lib is not None:
            threads = torch.get_num_threads()
            return torch.tensor(math.sqrt(sum(lib.sumsq(gr.data_ptr(), gr.numel(), threads) for gr in grads)))
        norms = torch._foreach_norm([_upcast(gr) for gr in grads])
        return torch.linalg.vector_norm(torch.stack(norms).double())

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        norm = float(self.global_grad_norm())  # the step's one host sync
        self.last_grad_norm = norm
        self.last_paths = []
        if not math.isfinite(norm):
            self.skipped_steps += 1  # overflow: leave weights, moments and step counts untouched
            return loss
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update_group(group, params, norm)
        return loss

    def _update_group(self, group: dict, params: list[Tensor], norm: float) -> None:
        max_norm = group["max_grad_norm"]
        clip = max_norm / norm if max_norm > 0 and norm > max_norm else 1.0
        fusable = (group["bias_correction"] and len({(p.device, p.dtype) for p in params}) == 1
                   and params[0].dtype == torch.float32
                   and all(p.grad.dtype == p.dtype for p in params))
        states = [self._state(p) for p in params]
        tensors = params + [p.grad for p in params] + [s[k] for s in states for k in ("exp_avg", "exp_avg_sq")]
        lib = self._cpu_lib(tensors)
        if lib is not None:
            self.last_paths.append("cpu")
            self._update_cpu(lib, group, params, states, clip)
        elif fusable:
            self.last_paths.append("fused")
            self._update_fused(group, params, states, clip)
            return  # the fused kernel leaves the clipped gradients in p.grad itself
        else:
            self.last_paths.append("foreach")
            self._update_foreach(group, params, states, clip)
        if clip != 1.0:
            # One rule on every path: after a clipped step p.grad holds the clipped gradient, as
            # the fused kernel writes it (grad / grad_scale, the same fp32 scale and division).
            torch._foreach_div_([p.grad for p in params], _clip_scale(clip, params[0].device))

    def _update_cpu(self, lib, group: dict, params: list[Tensor], states: list[dict], clip: float) -> None:
        """Steps 2-6 in two passes per tensor (``csrc/nvlamb_cpu.c``).

        Pass 1 updates the moments and returns ``||w||^2`` and ``||u||^2``; pass 2
        recomputes ``u`` from the new moments and the old weights (the same
        expression, so the same values) and applies ``w -= lr r u``. ``u`` is
        never stored, so no scratch buffer.
        """
        b1, b2 = group["betas"]
        wd, eps, lr = group["weight_decay"], group["eps"], group["lr"]
        trust = group["use_nvlamb"] or wd != 0
        threads = torch.get_num_threads()
        sums = (ctypes.c_double * 2)()
        for p, s in zip(params, states):
            s["step"] += 1
            t = float(s["step"])
            bc1 = 1 - b1**t if group["bias_correction"] else 1.0
            bc2 = 1 - b2**t if group["bias_correction"] else 1.0
            coeffs = (1 / bc1, 1 / math.sqrt(bc2), eps, wd)
            m, v = s["exp_avg"], s["exp_avg_sq"]
            lib.lamb_moments(p.data_ptr(), p.grad.data_ptr(), m.data_ptr(), v.data_ptr(), p.numel(), clip, b1, b2,
                             *coeffs, sums, threads)
            w_norm, u_norm = math.sqrt(sums[0]), math.sqrt(sums[1])
            ratio = w_norm / u_norm if trust and w_norm > 0 and u_norm > 0 else 1.0
            lib.lamb_apply(p.data_ptr(), m.data_ptr(), v.data_ptr(), p.numel(), *coeffs, lr * ratio, threads)

    def _update_fused(self, group: dict, params: list[Tensor], states: list[dict], clip: float) -> None:
        """Steps 2-4 in PyTorch's fused AdamW kernel, run on a zeroed buffer.

        With lr 1 and no weight decay, ``_fused_adamw_`` updates both moments in one
        pass and leaves ``-m_hat / (sqrt(v_hat) + eps)`` in the buffer; ``grad_scale``
        divides the gradients, so ``1 / clip`` applies the clipping. The buffer then
        becomes ``-u`` and steps 5-6 follow with in-place multi-tensor operations.
        """
        b1, b2 = group["betas"]
        wd, eps, lr = group["weight_decay"], group["eps"], group["lr"]
        # Scratch space, reused every step; not state, so checkpoints do not carry it.
        for p in params:
            if p not in self.scratch:
                self.scratch[p] = torch.zeros_like(p)
        buf = [self.scratch[p] for p in params]
        steps = [s["step"] for s in states]
        grads = [p.grad for p in params]
        torch._foreach_zero_(buf)
        torch._foreach_add_(steps, 1)
        scale = _clip_scale(clip, params[0].device)
        torch._fused_adamw_(buf, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
                            steps, lr=1.0, beta1=b1, beta2=b2, weight_decay=0.0, eps=eps, amsgrad=False,
                            maximize=False, grad_scale=scale, found_inf=None)
        if wd != 0:
            torch._foreach_add_(buf, params, alpha=-wd)  # buf = -u
        if group["use_nvlamb"] or wd != 0:
            w_norm = torch.stack(torch._foreach_norm(params))
            u_norm = torch.stack(torch._foreach_norm(buf))
            ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
            torch._foreach_addcmul_(params, buf, list((ratio * lr).unbind()))  # w -= lr r u
        else:
            torch._foreach_add_(params, buf, alpha=lr)

    def _update_foreach(self, group: dict, params: list[Tensor], states: list[dict], clip: float) -> None:
        """The same steps with multi-tensor operations (fp16/bf16 parameters: fp32 state and arithmetic)."""
        b1, b2 = group["betas"]
        wd, eps, lr = group["weight_decay"], group["eps"], group["lr"]
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)  # every tensor counts its own steps, as the other two paths do
        m = [s["exp_avg"] for s in states]
        v = [s["exp_avg_sq"] for s in states]
        grads = [_upcast(p.grad) for p in params]
        w = [_upcast(p) for p in params]

        # 2. moments of the clipped gradient: m += (1-b1)(c g - m); v = b2 v + (1-b2) c^2 g^2
        torch._foreach_mul_(m, b1)
        torch._foreach_add_(m, grads, alpha=(1 - b1) * clip)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, grads, grads, value=(1 - b2) * clip * clip)

        # 3-4. u = m_hat / (sqrt(v_hat) + eps) + wd w, built in one temporary list; the bias
        # corrections are per tensor and stay on the device (no read-back of the step counts)
        u = torch._foreach_sqrt(v)
        if group["bias_correction"]:
            bc1 = _one_minus(torch._foreach_pow(b1, steps))  # 1 - b1^t
            bc2 = _one_minus(torch._foreach_pow(b2, steps))
            torch._foreach_sqrt_(bc2)
            torch._foreach_div_(u, bc2)
        torch._foreach_add_(u, eps)
        torch._foreach_reciprocal_(u)
        torch._foreach_mul_(u, m)
        if group["bias_correction"]:
            torch._foreach_div_(u, bc1)
        if wd != 0:
            torch._foreach_add_(u, w, alpha=wd)

        # 5. trust ratio per tensor, with w before the update
        if group["use_nvlamb"] or wd != 0:
            w_norm = torch.stack(torch._foreach_norm(w))
            u_norm = torch.stack(torch._foreach_norm(u))
            ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
            torch._foreach_mul_(u, list(ratio.unbind()))

        # 6. w -= lr r u
        torch._foreach_add_(w, u, alpha=-lr)
        for p, wf in zip(params, w):
            if wf is not p:
                p.copy_(wf)  # low-precision parameters: write the fp32 result back


def no_decay(param: Tensor) -> bool:
    """The no-weight-decay rule: every 1-D parameter, i.e. biases and LayerNorm gains and biases.

    fairseq hands optimizers parameters without names, so the rule reads only the
    shape. In bart_ext's models every 1-D parameter is a bias or a LayerNorm
    weight/bias, and every other parameter (embeddings, projections) is 2-D.
    """
    return param.dim() <= 1


def param_groups(params: Iterable[Tensor], weight_decay: float) -> list[dict]:
    """Split ``params`` into a decayed group and a no-decay group (see ``no_decay``)."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if not no_decay(p)]
    keep = [p for p in params if no_decay(p)]
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if keep:
        groups.append({"params": keep, "weight_decay": 0.0})
    return groups
