"""Scaled dot-product attention whose CPU backward avoids PyTorch's slow ``exp``.

Why: on the CPU, a bf16 attention's backward through ``F.scaled_dot_product_attention`` (the flash
kernel for the CPU) took 33-35 ms for (B, H, T, D) = (16, 8, 128, 64) against 1.6-3 ms for its
forward: 28% of a mid-size bf16 training step (``scripts/bench_attention.py``). The cause is
PyTorch's vectorised ``exp``, which on this CPU leaves its fast path for arguments whose result is
below fp32's smallest normal number (about -87.3): 2M elements take 0.35 ms at -80 and 30-40 ms
at -90, and 4 ms when all are ``-inf``, which is what masked and causal positions are.

``attention()`` keeps SDPA's forward (the same flash kernel, the same output bit for bit) and, for
bf16 CPU tensors, computes the backward from the saved log-sum-exp with batched matmuls: scores
and ``dO V^T`` in fp32 (the precision of the flash kernel's fp32 accumulation), the probabilities'
exponent clamped to [``LOW``, 0] and masked positions zeroed after it, the products with the inputs
in bf16. Both halves are custom operators (``torch.library``), so ``torch.compile``d layers call them
as they are. Everything else (CUDA, fp32, dropout on the attention weights, packed nested tensors,
``BART_EXT_ATTENTION_BACKWARD=torch``) calls SDPA as before.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bart_ext.switches import ATTENTION_BACKWARD

# The lowest exponent passed to exp: exp(LOW) = 1.6e-38, fp32's smallest normal number is 1.18e-38.
# A probability below that is taken as exp(LOW) (an absolute error under 2e-38) and a masked one as 0.
LOW = -87.0
# The backward holds a few (rows x H x T x S) fp32 tensors where SDPA's holds O(T): it runs in chunks
# of batch rows of at most this many scores (64 MiB each), one chunk at the mid size (16 x 8 x 128^2).
MAX_SCORES = 1 << 24


def _flash(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, scale: float):
    """SDPA's CPU flash kernel: the output and the log-sum-exp of each query's scaled scores."""
    bias = None
    if mask is not None:  # what SDPA does with a boolean mask: 0 where allowed, -inf elsewhere
        bias = torch.zeros(mask.shape, dtype=q.dtype).masked_fill_(~mask, float("-inf"))
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, causal, attn_mask=bias, scale=scale
    )


def _contiguous(x: Tensor, dtype: torch.dtype) -> Tensor:
    return x.to(dtype, memory_format=torch.contiguous_format)


# Custom operators rather than an autograd.Function, so that `torch.compile`d layers call them as
# they are (dynamo cannot trace the Function; inductor would otherwise emit SDPA's backward).
@torch.library.custom_op("bart_ext::bf16_cpu_attention", mutates_args=())
def _attention_op(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> tuple[Tensor, Tensor]:
    """The output and the log-sum-exp of each query's scaled scores, both stored batch, position,
    head (the layouts the model's own (B, T, H, D) projections give: no copy there)."""
    out, lse = _flash(q, k, v, mask, causal, q.size(-1) ** -0.5)
    return out.transpose(1, 2).contiguous().transpose(1, 2), lse.transpose(1, 2).contiguous().transpose(1, 2)


@_attention_op.register_fake
def _(q, k, v, mask, causal):
    b, h, t, _ = q.shape
    return (q.new_empty(b, t, h, v.size(-1)).transpose(1, 2),
            q.new_empty(b, t, h, dtype=torch.float32).transpose(1, 2))


@torch.library.custom_op("bart_ext::bf16_cpu_attention_backward", mutates_args=())
def _attention_backward_op(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, mask: Tensor | None,
                           dout: Tensor, causal: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of q, k and v, in chunks of batch rows of at most ``MAX_SCORES`` scores."""
    b, h, t, _ = q.shape
    scale = q.size(-1) ** -0.5
    rows = max(1, MAX_SCORES // (h * t * k.size(2)))  # batch rows per chunk
    if rows >= b:
        return _backward(q, k, v, out, lse, mask, dout, causal, scale)
    parts = []
    for i in range(0, b, rows):
        r = slice(i, i + rows)
        m = mask if mask is None or mask.size(0) == 1 else mask[r]
        parts.append(_backward(q[r], k[r], v[r], out[r], lse[r], m, dout[r], causal, scale))
    dq, dk, dv = (torch.cat(g) for g in zip(*parts))
    return dq, dk, dv


@_attention_backward_op.register_fake
def _(q, k, v, out, lse, mask, dout, causal):
    return torch.empty_like(q, memory_format=torch.contiguous_format), torch.empty_like(
        k, memory_format=torch.contiguous_format), torch.empty_like(v, memory_format=torch.contiguous_format)


def _save(ctx, inputs, output) -> None:
    q, k, v, mask, causal = inputs
    ctx.save_for_backward(q, k, v, *output, mask)
    ctx.causal = causal


def _attention_backward(ctx, dout: Tensor, _dlse):
    q, k, v, out, lse, mask = ctx.saved_tensors
    return *_attention_backward_op(q, k, v, out, lse, mask, dout, ctx.causal), None, None


_attention_op.register_autograd(_attention_backward, setup_context=_save)


def _backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, mask: Tensor | None, dout: Tensor,
              causal: bool, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of q, k and v for a chunk of batch rows."""
    t, s = q.size(2), k.size(2)
    f32, half = torch.float32, q.dtype
    q32, k32 = _contiguous(q, f32), _contiguous(k, f32)
    lse = lse.masked_fill(lse == float("-inf"), 0.0).unsqueeze(-1)  # (B, H, T, 1); -inf: a fully masked row
    # P = exp(scale * Q K^T - lse), (B, H, T, S) fp32
    p = torch.matmul(q32, k32.transpose(-1, -2)).mul_(scale).sub_(lse).clamp_(LOW, 0.0).exp_()
    # Zero the masked positions by multiplying with a 0/1 keep mask (4x a masked_fill's speed here);
    # the clamp at 0 (where an allowed score cannot exceed its row's log-sum-exp) keeps them finite.
    keep = None
    if causal:
        keep = torch.ones(t, s, dtype=f32).tril_()
    if mask is not None:
        keep = mask.to(f32) if keep is None else keep * mask
    if keep is not None:
        p.mul_(keep)
    dout32 = _contiguous(dout, f32)
    dv = torch.matmul(p.to(half).transpose(-1, -2), _contiguous(dout, half))
    delta = (dout32 * out).sum(-1, keepdim=True)  # (B, H, T, 1): rowsum(dP * P) = rowsum(dO * O)
    dp = torch.matmul(dout32, _contiguous(v, f32).transpose(-1, -2))  # (B, H, T, S)
    ds = p.mul_(dp.sub_(delta)).to(half)  # the scores' gradient, before the scale
    dq = torch.matmul(ds, _contiguous(k, half)).mul_(scale)
    dk = torch.matmul(ds.transpose(-1, -2), _contiguous(q, half)).mul_(scale)
    return dq, dk, dv


def uses_cpu_backward(q: Tensor, dropout_p: float) -> bool:
    """Whether ``attention`` takes the bf16 CPU backward for these arguments."""
    return (q.device.type == "cpu" and q.dtype == torch.bfloat16 and dropout_p == 0.0 and not q.is_nested
            and torch.is_grad_enabled() and ATTENTION_BACKWARD.get() == "auto")


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, causal: bool = False,
              dropout_p: float = 0.0) -> Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)``
    for ``(B, H, T, D)`` tensors and a boolean ``mask`` (True where attention is allowed), with the
    bf16 CPU backward where it applies (``uses_cpu_backward``)."""
    if not uses_cpu_backward(q, dropout_p) or not (q.requires_grad or k.requires_grad or v.requires_grad):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"attention: mask must be boolean (True where allowed), got {mask.dtype}")
    return _attention_op(q, k, v, mask, causal)[0]
