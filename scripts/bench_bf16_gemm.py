#!/usr/bin/env python
"""bf16 products on the CPU: MKL's bf16 x bf16 -> fp32 product (bart_ext/bf16_gemm.py) against
PyTorch's bf16 ``mm``, side by side.

1. the products of a mid-size step (6+6 x 512, ffn 2048, 2,034 target tokens, 18,617 entries) that
   ``BART_EXT_BF16_GEMM=auto`` hands to MKL: PyTorch's bf16 product plus the cast of its result to
   fp32 where fp32 is what is needed, against MKL's writing fp32; milliseconds, medians;
2. accuracy: the fused loss at mid size (one chunk of 512 tokens) and one linear layer's weight
   gradient, each against the exact (fp64) result of the same bf16 inputs, both ways;
3. with ``--steps N``: a mid-size bf16 training step with the fused loss (bench_train.py's
   ``bf16+fused``), the switch alternating over rounds: seconds per step, medians.

Usage: python scripts/bench_bf16_gemm.py [--reps 20] [--steps 2 --rounds 6] [--anyway]

On a CPU without bf16 instructions (AVX2 only) nothing runs unless --anyway: PyTorch emulates bf16
there and bart_ext does not use MKL's product.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bart_ext import bf16_gemm  # noqa: E402
from bart_ext.hardware import EMULATED_BF16, bf16_emulated  # noqa: E402
from bart_ext.losses import fused_linear_cross_entropy, reference_linear_cross_entropy  # noqa: E402
from scripts.bench_attention import bench_step, bf16_bench_args  # noqa: E402
from scripts.bench_dropout import _timed as median_seconds  # noqa: E402

SWITCH = "BART_EXT_BF16_GEMM"
LABEL = {"torch": "PyTorch's mm", "auto": "MKL's"}
T, C, F, V, CHUNK = 2034, 512, 2048, 18617, 512


def _bf16(*shape):
    return torch.randn(*shape).bfloat16()


def bench_products(reps: int) -> None:
    """(name, PyTorch's way, MKL's way) for the products MKL takes over."""
    torch.manual_seed(0)
    cases = []
    for out_f, in_f in ((C, C), (F, C), (C, F)):
        g, x, acc = _bf16(T, out_f), _bf16(T, in_f), torch.empty(out_f, in_f)
        cases.append((f"weight gradient ({T} x {out_f})^T ({T} x {in_f})",
                      lambda g=g, x=x: (g.t() @ x).float(),
                      lambda g=g, x=x, acc=acc: bf16_gemm.gemm(g.t(), x, acc)))
    # The loss's chunk buffers have rows padded to whole 64-byte lines (bart_ext/losses/chunked.py).
    padded = V + (-V) % 32
    h, w = _bf16(CHUNK, C), _bf16(V, C)
    grad = _bf16(CHUNK, padded)[:, :V]
    logits16 = torch.empty(CHUNK, padded, dtype=torch.bfloat16)[:, :V]
    logits = torch.empty(CHUNK, padded)[:, :V]
    dh, dw, dw16 = torch.empty(CHUNK, C), torch.zeros(V, C), torch.empty(V, C, dtype=torch.bfloat16)
    cases += [
        (f"loss: logits ({CHUNK} x {C}) ({C} x {V})",
         lambda: logits.copy_(torch.mm(h, w.t(), out=logits16)), lambda: bf16_gemm.gemm(h, w.t(), logits)),
        (f"loss: features' gradient ({CHUNK} x {V}) ({V} x {C})",
         lambda: dh.copy_(torch.mm(grad, w)), lambda: bf16_gemm.gemm(grad, w, dh)),
        (f"loss: embedding's gradient, accumulated ({V} x {CHUNK}) ({CHUNK} x {C})",
         lambda: dw.add_(torch.mm(grad.t(), h, out=dw16)), lambda: bf16_gemm.gemm(grad.t(), h, dw, beta=1.0)),
    ]
    print(f"bf16 products, milliseconds, median of {reps} (PyTorch's with its fp32 cast or add where the "
          "result is used in fp32):")
    for name, ours_torch, ours_mkl in cases:
        a, b = (1e3 * median_seconds(f, reps) for f in (ours_torch, ours_mkl))
        print(f"  {name:<62} PyTorch {a:6.2f}   MKL {b:6.2f}   {a / b:.2f}x")


def bench_accuracy() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(CHUNK, C, requires_grad=True)
    weight = (0.05 * torch.randn(V, C)).requires_grad_()
    target = torch.randint(4, V, (CHUNK,))
    h64, w64 = (t.detach().bfloat16().double().requires_grad_() for t in (hidden, weight))
    ref, _ = reference_linear_cross_entropy(h64, w64, target, ignore_index=1)
    rh, rw = torch.autograd.grad(ref, (h64, w64))
    ref = ref.detach()
    g, x = _bf16(T, F), _bf16(T, C)
    exact_w = g.double().t() @ x.double()

    def rel(a, b):
        return float((a.double() - b).norm() / b.norm())

    print("relative error against the exact result of the same bf16 inputs:")
    for setting in ("torch", "auto"):
        os.environ[SWITCH] = setting
        with torch.autocast("cpu", torch.bfloat16):
            loss, _, _ = fused_linear_cross_entropy(hidden, weight, target, ignore_index=1)
        gh, gw = torch.autograd.grad(loss, (hidden, weight))
        loss = loss.detach()
        lin = bf16_gemm._weight_grad(g, x) if setting == "auto" else (g.t() @ x).float()
        print(f"  {LABEL[setting]:<13} loss {abs(float(loss) - float(ref)) / float(ref):.1e}   its gradients: "
              f"features {rel(gh, rh):.1e}, embedding {rel(gw, rw):.1e}   a weight gradient ({F} x {C}) "
              f"{rel(lin, exact_w):.1e}")
    os.environ.pop(SWITCH, None)


def main() -> None:
    args = bf16_bench_args(__doc__, reps=20, rounds=6)
    if not bf16_gemm.available():
        print("bench_bf16_gemm: this PyTorch build does not export MKL's cblas_gemm_bf16bf16f32; nothing to compare")
        return
    if bf16_emulated() and not args.anyway:
        print(f"bench_bf16_gemm: {EMULATED_BF16}: bart_ext does not use MKL's product there; nothing run "
              "(--anyway to run it)")
        return
    bench_products(args.reps)
    bench_accuracy()
    if args.steps:
        bench_step(args.steps, args.rounds, SWITCH, LABEL)


if __name__ == "__main__":
    main()
