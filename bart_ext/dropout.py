"""Dropout whose mask comes from a counter-based generator (``csrc/dropout_cpu.c``) on the CPU.

PyTorch's CPU dropout draws each mask element with ``bernoulli_`` (about 9 ns an element here, a
tenth of the demo model's training step). ``dropout()`` draws one 64-bit key from PyTorch's
generator per call (so ``torch.manual_seed``, fairseq's per-update seeding and activation
checkpointing's saved RNG state govern it as they govern ``F.dropout``) and computes the mask as
Threefry-2x32-20 of the element's index under that key: about 3.5x faster forward and backward
together, the same for any number of threads, and the mask kept for the backward as bits (1/8
of the bytes of ``F.dropout``'s bool mask). An element is dropped with
probability ``p`` (to 2^-32) and the kept ones are scaled by ``1 / (1 - p)``, as ``F.dropout`` does;
the masks are other draws than ``F.dropout``'s for the same seed.

It applies to fp32 and bf16 CPU tensors when the kernel is built (the same draws for both, so a
bf16-autocast run and an fp32 run of one seed drop the same elements); everything else (CUDA,
fp16, ``BART_EXT_DROPOUT=torch``, no C compiler or ``BART_EXT_NO_CPU_KERNEL=1``) goes to
``F.dropout``. The kernel's forward and backward are custom operators (``torch.library``), so
``torch.compile``d layers call them too; there the key comes from the compiled graph's random
numbers (as ``F.dropout``'s masks do), so compiled and eager runs of one seed drop other elements.
"""
from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from bart_ext import cpu_kernels, switches

_loaded: dict[str, ctypes.CDLL | None] = {}


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    ptr, i64, u32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint32
    for suffix in ("", "_bf16"):
        forward, backward = getattr(lib, "dropout_forward" + suffix), getattr(lib, "dropout_backward" + suffix)
        forward.argtypes = [ptr, ptr, ptr, i64, u32, u32, u32, ctypes.c_float, ctypes.c_int]
        forward.restype = None
        backward.argtypes = [ptr, ptr, ptr, i64, ctypes.c_float, ctypes.c_int]
        backward.restype = None
    lib.threefry2x32.argtypes = [u32, u32, u32, u32, ctypes.POINTER(u32)]
    lib.threefry2x32.restype = None
    return lib


KERNEL = cpu_kernels.Kernel("dropout_cpu", _bind, "dropout", "torch's dropout")


def load() -> ctypes.CDLL | None:
    """The compiled library, or None when disabled or when no compiler works (logged once)."""
    return cpu_kernels.load(KERNEL, _loaded)


def threefry2x32(counter: tuple[int, int], key: tuple[int, int]) -> tuple[int, int]:
    """One Threefry-2x32-20 block from the compiled kernel (for known-answer tests)."""
    lib = load()
    if lib is None:
        raise RuntimeError("the dropout CPU kernel is not built (no C compiler, or BART_EXT_NO_CPU_KERNEL=1)")
    out = (ctypes.c_uint32 * 2)()
    lib.threefry2x32(*counter, *key, out)
    return out[0], out[1]


DTYPES = {torch.float32: "", torch.bfloat16: "_bf16"}  # the kernel's element types


def _scale(p: float) -> float:
    return 1.0 / (1.0 - p)


def apply_mask(x: torch.Tensor, p: float, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` with the elements that ``key``'s draws drop at rate ``p`` zeroed and the rest scaled
    by ``1 / (1 - p)`` (a new contiguous tensor of ``x``'s dtype, fp32 or bf16), and the mask as bits
    (uint8, bit ``i % 8`` of byte ``i // 8`` is element ``i``'s). Needs the kernel (``load()``)."""
    x = x.contiguous()
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    bits = torch.empty((x.numel() + 7) // 8, dtype=torch.uint8)
    threshold = min(max(round(p * 2**32), 1), 2**32 - 1)
    forward = getattr(load(), "dropout_forward" + DTYPES[x.dtype])
    forward(x.data_ptr(), y.data_ptr(), bits.data_ptr(), x.numel(), key[0], key[1], threshold, _scale(p),
            torch.get_num_threads())
    return y, bits


def masked_gradient(grad: torch.Tensor, bits: torch.Tensor, p: float) -> torch.Tensor:
    """The gradient through ``apply_mask``: ``grad`` where the mask kept, scaled, 0 elsewhere."""
    grad = grad.contiguous()
    out = torch.empty_like(grad, memory_format=torch.contiguous_format)
    backward = getattr(load(), "dropout_backward" + DTYPES[grad.dtype])
    backward(grad.data_ptr(), bits.data_ptr(), out.data_ptr(), grad.numel(), _scale(p), torch.get_num_threads())
    return out


# Custom operators rather than an autograd.Function with a ctypes call, so that `torch.compile`d
# layers call the kernel as it is (dynamo can trace neither).
@torch.library.custom_op("bart_ext::counter_dropout", mutates_args=())
def _dropout_op(x: torch.Tensor, key: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``apply_mask`` under the key held in ``key`` (two int64 values below 2^32)."""
    k0, k1 = key.tolist()
    return apply_mask(x, p, (k0, k1))


@_dropout_op.register_fake
def _(x, key, p):
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(((x.numel() + 7) // 8,),
                                                                                  dtype=torch.uint8)


@torch.library.custom_op("bart_ext::counter_dropout_backward", mutates_args=())
def _dropout_backward_op(grad: torch.Tensor, bits: torch.Tensor, p: float) -> torch.Tensor:
    return masked_gradient(grad, bits, p)


@_dropout_backward_op.register_fake
def _(grad, bits, p):
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


def _save(ctx, inputs, output) -> None:
    x, _key, p = inputs
    ctx.p, ctx.dtype = p, x.dtype
    ctx.save_for_backward(output[1])


def _dropout_backward(ctx, grad: torch.Tensor, _grad_bits):
    (bits,) = ctx.saved_tensors
    return _dropout_backward_op(grad.to(ctx.dtype), bits, ctx.p), None, None


_dropout_op.register_autograd(_dropout_backward, setup_context=_save)


def uses_kernel(x: torch.Tensor, p: float) -> bool:
    """Whether ``dropout(x, p, True)`` takes the counter-based kernel."""
    return (0.0 < p < 1.0 and x.device.type == "cpu" and x.dtype in DTYPES and _kernel_on())


def _kernel_on() -> bool:
    """The switch and the built kernel."""
    return switches.DROPOUT.get() == "auto" and load() is not None


def prepare_compile() -> None:
    """Before ``torch.compile`` traces code that calls ``dropout``: the kernel check is read once at
    tracing instead of being traced (it looks for the compiler and the cached library on disk, which
    dynamo cannot follow: a graph break at every dropout). Not done at import, because importing
    ``torch._dynamo`` changes the environment (``TORCHINDUCTOR_CACHE_DIR``), which the plugin must not."""
    global _kernel_on
    if not getattr(_kernel_on, "_bart_ext_constant", False):
        _kernel_on = torch.compiler.assume_constant_result(_kernel_on)
        _kernel_on._bart_ext_constant = True


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout(x, p, training)``, with the mask from the counter-based kernel where it applies."""
    if not training or p == 0.0:
        return x
    if not uses_kernel(x, p):
        return F.dropout(x, p, True)
    key = torch.randint(0, 2**32, (2,), dtype=torch.int64)  # one draw from PyTorch's generator per call
    return _dropout_op(x, key, p)[0]
