"""bf16 x bf16 -> fp32 matrix products on the CPU (MKL's ``cblas_gemm_bf16bf16f32``), and the linear
layer and weight gradients built on them.

Why: under ``torch.autocast("cpu", torch.bfloat16)`` a linear layer's weight gradient is computed as
a bf16 product, rounded to bf16, then cast to the fp32 master weight's dtype, and PyTorch's bf16
``mm`` with a transposed first operand (``grad.T @ input``, every weight gradient) runs well below
the matrix units' speed. MKL, which PyTorch's x86 builds link and export, has a bf16 product that
accumulates and writes fp32 (``C = alpha * A B + beta * C``). On a 2-core Xeon with AMX
(2026-12-08, ``scripts/bench_bf16_gemm.py``, mid-size shapes, 2 threads, medians of 20), MKL's was
1.3-1.8x faster for the weight gradients (counting the cast of PyTorch's bf16 result to fp32),
1.7-1.8x for the output layer's input gradient, 1.1x for the logits, and 4.1x for a chunk's
output-embedding gradient added into fp32.

So the weight gradients of bart_preln's linear layers and the fused loss's three products use it
under bf16 autocast on a CPU with bf16 matrix instructions: faster, and the weight gradients are the
exact fp32 sums of bf16 products instead of their bf16 roundings (closer to the fp32 model's). The
forward products (``input @ weight.T``) stay PyTorch's, which was as fast or faster for them.

Where MKL's symbol is absent (non-x86 builds), on CPUs that emulate bf16, on other devices and
dtypes, or with ``BART_EXT_BF16_GEMM=torch``, everything takes PyTorch's autocast path unchanged.
Both the linear layer and the weight gradient are custom operators (``torch.library``), so
``torch.compile``d layers call them as they are.
"""
from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bart_ext import switches
from bart_ext.hardware import bf16_emulated

logger = logging.getLogger(__name__)

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_INT_MAX = 2**31 - 1  # the LP64 interface's MKL_INT


@functools.lru_cache(maxsize=None)
def _symbol():
    """MKL's ``cblas_gemm_bf16bf16f32`` as PyTorch's CPU library exports it, or None."""
    lib_dir = Path(torch.__file__).parent / "lib"
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib", "torch_cpu.dll"):
        path = lib_dir / name
        if not path.exists():
            continue
        try:
            fn = ctypes.CDLL(str(path)).cblas_gemm_bf16bf16f32
        except (OSError, AttributeError):
            return None
        c_int, ptr, c_float = ctypes.c_int, ctypes.c_void_p, ctypes.c_float
        fn.argtypes = [c_int, c_int, c_int, c_int, c_int, c_int, c_float, ptr, c_int, ptr, c_int, c_float, ptr, c_int]
        fn.restype = None
        return fn
    return None


def available() -> bool:
    """Whether this PyTorch build exports MKL's bf16 product."""
    return _symbol() is not None


@functools.lru_cache(maxsize=None)
def _usable() -> bool:
    """MKL's symbol and a CPU with bf16 matrix instructions (MKL's bf16 product on a CPU without them
    was not measured here). Cached: it reads /proc/cpuinfo, a millisecond per linear layer otherwise."""
    return available() and not bf16_emulated()


def enabled() -> bool:
    """Whether bf16 products on the CPU use MKL's: the switch and ``_usable()``."""
    return switches.BF16_GEMM.get() == "auto" and _usable()


_on = enabled  # what ``linear`` reads (made a constant for ``torch.compile`` by ``prepare_compile``)


def prepare_compile() -> None:
    """Before ``torch.compile`` traces code that calls ``linear``: the check is read once at tracing
    (it reads an environment switch and /proc/cpuinfo, which dynamo would otherwise break the graph on)."""
    global _on
    if not getattr(_on, "_bart_ext_constant", False):
        _on = torch.compiler.assume_constant_result(_on)
        _on._bart_ext_constant = True


def _operand(x: Tensor) -> tuple[int, int, Tensor]:
    """``(transpose flag, leading dimension, tensor)`` describing the 2-d ``x`` to a row-major BLAS:
    a matrix with unit column stride as it is, the transposed view of one as ``_TRANS``, anything
    else copied to contiguous memory first."""
    rows, cols = x.shape
    if x.stride(1) == 1 and x.stride(0) >= max(cols, 1):
        return _NO_TRANS, x.stride(0), x
    if x.stride(0) == 1 and x.stride(1) >= max(rows, 1):
        return _TRANS, x.stride(1), x
    x = x.contiguous()
    return _NO_TRANS, max(cols, 1), x


def gemm(a: Tensor, b: Tensor, out: Tensor, beta: float = 0.0) -> Tensor:
    """``out = a @ b + beta * out`` for bf16 CPU matrices ``a`` (m, k) and ``b`` (k, n), either of them
    possibly a transposed view, into the fp32 ``out`` (m, n), whose rows must have unit stride (a view
    into wider rows is fine). Products accumulate in fp32. Returns ``out``.

    Raises:
        RuntimeError: when MKL's product is not available (``available()``).
        ValueError: for wrong devices, dtypes, shapes or strides.
    """
    fn = _symbol()
    if fn is None:
        raise RuntimeError("MKL's cblas_gemm_bf16bf16f32 is not exported by this PyTorch build")
    if a.dim() != 2 or b.dim() != 2 or out.dim() != 2:
        raise ValueError(f"gemm: 2-d operands expected, got {tuple(a.shape)}, {tuple(b.shape)} -> {tuple(out.shape)}")
    m, k = a.shape
    n = b.size(1)
    if b.size(0) != k or tuple(out.shape) != (m, n):
        raise ValueError(f"gemm: shapes {tuple(a.shape)} @ {tuple(b.shape)} -> {tuple(out.shape)} do not match")
    if a.dtype != torch.bfloat16 or b.dtype != torch.bfloat16 or out.dtype != torch.float32:
        raise ValueError(f"gemm: bf16 @ bf16 -> fp32 expected, got {a.dtype} @ {b.dtype} -> {out.dtype}")
    if not (a.device.type == b.device.type == out.device.type == "cpu"):
        raise ValueError("gemm: CPU tensors expected")
    if m == 0 or n == 0:
        return out
    if out.stride(1) != 1 or out.stride(0) < n:
        raise ValueError(f"gemm: out's rows must have unit stride, got strides {out.stride()}")
    if k == 0:
        return out.mul_(beta) if beta else out.zero_()
    ta, lda, a = _operand(a)
    tb, ldb, b = _operand(b)
    if max(m, n, k, lda, ldb, out.stride(0)) > _INT_MAX:
        raise ValueError(f"gemm: dimensions beyond MKL's 32-bit interface: {(m, k, n)}")
    fn(_ROW_MAJOR, ta, tb, m, n, k, 1.0, a.data_ptr(), lda, b.data_ptr(), ldb, float(beta), out.data_ptr(), out.stride(0))
    return out


def _weight_grad(grad: Tensor, inputs: Tensor) -> Tensor:
    out = torch.empty(grad.size(1), inputs.size(1), dtype=torch.float32)
    return gemm(grad.t(), inputs, out)


def _column_sums(grad: Tensor) -> Tensor:
    out = torch.empty(1, grad.size(1), dtype=torch.float32)
    return gemm(torch.ones(1, grad.size(0), dtype=torch.bfloat16), grad, out).view(-1)


# The same products as custom operators (``torch.library``), for ``torch.compile``d code, which
# cannot trace the ctypes call. Eager code calls the functions above directly: a custom operator's
# Python dispatch costs about 30 us a call, a linear layer's forward and backward about 0.3 ms.
@torch.library.custom_op("bart_ext::bf16_weight_grad", mutates_args=())
def weight_grad(grad: Tensor, inputs: Tensor) -> Tensor:
    """``grad.T @ inputs`` in fp32 for bf16 ``grad`` (N, out) and ``inputs`` (N, in): a linear
    layer's weight gradient, (out, in)."""
    return _weight_grad(grad, inputs)


@weight_grad.register_fake
def _(grad, inputs):
    return grad.new_empty(grad.size(1), inputs.size(1), dtype=torch.float32)


@torch.library.custom_op("bart_ext::bf16_column_sums", mutates_args=())
def column_sums(grad: Tensor) -> Tensor:
    """``grad.sum(0)`` in fp32 for a bf16 ``grad`` (N, out): a linear layer's bias gradient, as the
    product ``ones(N) @ grad`` (``grad.sum(0, dtype=torch.float32)`` first copies all of ``grad`` to
    fp32: 1 ms against 0.14 for 2,034 x 512)."""
    return _column_sums(grad)


@column_sums.register_fake
def _(grad):
    return grad.new_empty(grad.size(1), dtype=torch.float32)


def _forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """Autocast's ``F.linear`` for a bf16 ``x`` and an fp32 ``weight``/``bias``: the bf16 output and
    the bf16 copy of the weight (kept for the input's gradient, as autocast keeps it)."""
    w16 = weight.to(torch.bfloat16)
    with torch.autocast("cpu", enabled=False):
        out = F.linear(x, w16, None if bias is None else bias.to(torch.bfloat16))
    return out, w16


def _backward(ctx, grad: Tensor, weight_grad_fn, column_sums_fn) -> tuple[Tensor | None, ...]:
    x, w16 = ctx.saved_tensors
    grad = grad.to(torch.bfloat16)
    g2 = grad.reshape(-1, grad.size(-1))
    grad_x = grad @ w16 if ctx.needs_input_grad[0] else None
    grad_w = weight_grad_fn(g2, x.reshape(-1, x.size(-1))) if ctx.needs_input_grad[1] else None
    grad_b = column_sums_fn(g2) if ctx.has_bias and ctx.needs_input_grad[2] else None
    return grad_x, grad_w, grad_b


class _Linear(torch.autograd.Function):
    """The eager path."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        out, w16 = _forward(x, weight, bias)
        ctx.save_for_backward(x, w16)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _backward(ctx, grad, _weight_grad, _column_sums)


@torch.library.custom_op("bart_ext::bf16_cpu_linear", mutates_args=())
def _linear_op(x: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """The compiled path: ``_forward``."""
    return _forward(x, weight, bias)


@_linear_op.register_fake
def _(x, weight, bias):
    return x.new_empty(*x.shape[:-1], weight.size(0)), weight.new_empty(weight.shape, dtype=torch.bfloat16)


def _save(ctx, inputs, output) -> None:
    x, weight, bias = inputs
    ctx.save_for_backward(x, output[1])
    ctx.has_bias = bias is not None


_linear_op.register_autograd(lambda ctx, grad, _grad_w16: _backward(ctx, grad, weight_grad, column_sums),
                             setup_context=_save)


def uses_mkl(x: Tensor, weight: Tensor) -> bool:
    """Whether ``linear(x, weight, ...)`` takes the MKL weight gradient: a CPU tensor under bf16
    autocast, an fp32 weight that needs its gradient, and ``enabled()``."""
    return (x.device.type == "cpu" and weight.dtype == torch.float32 and weight.requires_grad
            and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and _on())


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``; under bf16 CPU autocast (``uses_mkl``) the same bf16 output, with
    the weight's and bias' gradients computed and returned in fp32."""
    if not uses_mkl(x, weight):
        return F.linear(x, weight, bias)
    if torch.compiler.is_compiling():
        return _linear_op(x.to(torch.bfloat16), weight, bias)[0]
    return _Linear.apply(x.to(torch.bfloat16), weight, bias)


class _Linears(torch.autograd.Function):
    """Several linear layers on one bf16 input as one product over their stacked weights (eager only)."""

    @staticmethod
    def forward(ctx, x: Tensor, *params: Tensor | None) -> Tensor:
        weights, biases = params[0::2], params[1::2]
        w16 = torch.cat(weights).to(torch.bfloat16)
        b16 = None if biases[0] is None else torch.cat(biases).to(torch.bfloat16)
        with torch.autocast("cpu", enabled=False):
            out = F.linear(x, w16, b16)
        ctx.save_for_backward(x, w16)
        ctx.has_bias = b16 is not None
        ctx.sizes = [w.size(0) for w in weights]
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad_x, grad_w, grad_b = _backward(ctx, grad, _weight_grad, _column_sums)
        grad_w = grad_w.split(ctx.sizes) if grad_w is not None else [None] * len(ctx.sizes)
        grad_b = grad_b.split(ctx.sizes) if grad_b is not None else [None] * len(ctx.sizes)
        return grad_x, *(g for pair in zip(grad_w, grad_b) for g in pair)


def linears(x: Tensor, layers: Sequence[nn.Linear]) -> list[Tensor]:
    """``[layer(x) for layer in layers]``. Where every layer takes ``uses_mkl`` (eager, all with biases
    or all without), as one bf16 product over the stacked weights: ``x`` is cast to bf16 once, and the
    backward computes one input gradient (the layers' contributions summed inside the product, in
    fp32, instead of three bf16 products cast and added in fp32) and one weight-gradient product.
    The outputs are the same bf16 values as the layers' own, the input gradient equal up to
    summation order. An attention layer's q, k and v projections of one input: 1.4-1.6x faster
    forward and backward at mid size (2026-12-08)."""
    if (len(layers) < 2 or torch.compiler.is_compiling() or len({l.bias is None for l in layers}) > 1
            or not all(uses_mkl(x, l.weight) for l in layers)):
        return [layer(x) for layer in layers]
    out = _Linears.apply(x.to(torch.bfloat16), *(t for l in layers for t in (l.weight, l.bias)))
    return list(out.split([l.out_features for l in layers], dim=-1))


class Linear(nn.Linear):
    """``nn.Linear`` (the same parameters and state dict) whose forward is ``linear``."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
