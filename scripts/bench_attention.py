#!/usr/bin/env python
"""bf16 attention on the CPU: bart_ext's backward (bart_ext/attention.py) against SDPA's, side by side.

The switch ``BART_EXT_ATTENTION_BACKWARD`` (``auto`` = bart_ext's, ``torch`` = SDPA's) is flipped
between the two, alternating over rounds; figures are medians.

1. one attention call, forward and backward, bf16, at the mid size's shapes (B, H, T, D) =
   (16, 8, 128, 64): unmasked, causal, and with a key-padding mask; milliseconds, and each
   gradient's relative error (Frobenius norm) against an fp32 SDPA reference;
2. ``exp`` itself on 2M fp32 elements at arguments where its result is normal, subnormal or 0:
   why SDPA's backward is slow on this CPU;
3. with ``--steps N``: a mid-size bf16 training step (bench_train.py's ``bf16+fused``): seconds per
   step over its batches.

Usage: python scripts/bench_attention.py [--reps 30] [--steps 2 --rounds 5] [--anyway]

On a CPU without bf16 instructions (AVX2 only) nothing runs unless --anyway: PyTorch emulates
bf16 there.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bart_ext.attention import attention  # noqa: E402
from bart_ext.hardware import EMULATED_BF16, bf16_emulated  # noqa: E402
from scripts.bench_dropout import _timed as median_seconds  # noqa: E402

SETTINGS = ("torch", "auto")
LABEL = {"torch": "SDPA's backward", "auto": "bart_ext's"}
SWITCH = "BART_EXT_ATTENTION_BACKWARD"


def _median_ms(fn, reps: int) -> float:
    return 1e3 * median_seconds(fn, reps)


def _cases(b: int = 16, h: int = 8, t: int = 128) -> dict[str, tuple[torch.Tensor | None, bool]]:
    pad = torch.ones(b, 1, 1, t, dtype=torch.bool)
    pad[: b // 4, ..., t - t // 5:] = False  # a quarter of the rows padded by a fifth
    return {"unmasked": (None, False), "causal": (None, True), "key padding": (pad, False)}


def bench_calls(reps: int) -> None:
    torch.manual_seed(0)
    shape = (16, 8, 128, 64)
    print(f"one attention call, forward + backward, bf16, (B, H, T, D) = {shape}, median of {reps}:")
    for name, (mask, causal) in _cases().items():
        q, k, v = (torch.randn(shape, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        grad = torch.randn(shape, dtype=torch.bfloat16)
        ref = [x.detach().float().requires_grad_() for x in (q, k, v)]
        F.scaled_dot_product_attention(*ref, attn_mask=mask, is_causal=causal).backward(grad.float())

        def call():
            for x in (q, k, v):
                x.grad = None
            attention(q, k, v, mask, causal).backward(grad)

        times, errors = {s: [] for s in SETTINGS}, {}
        for setting in SETTINGS:
            os.environ[SWITCH] = setting
            call()
            errors[setting] = [float((x.grad.float() - r.grad).norm() / r.grad.norm()) for x, r in zip((q, k, v), ref)]
        for r in range(3):
            for setting in SETTINGS[r % 2:] + SETTINGS[: r % 2]:
                os.environ[SWITCH] = setting
                times[setting].append(_median_ms(call, reps // 3))
        med = {s: statistics.median(v) for s, v in times.items()}
        print(f"  {name:<12} SDPA {med['torch']:6.2f} ms   bart_ext {med['auto']:6.2f} ms   "
              f"{med['torch'] / med['auto']:.2f}x   gradient error vs fp32 (q, k, v): SDPA "
              + " ".join(f"{e:.1e}" for e in errors["torch"]) + ", bart_ext "
              + " ".join(f"{e:.1e}" for e in errors["auto"]))
    os.environ.pop(SWITCH, None)


def bench_exp(reps: int) -> None:
    x = torch.rand(2**21)
    out = torch.empty_like(x)
    print(f"torch.exp on 2M fp32 elements in [c, c + 1), median of {reps}:")
    for c in (-80.0, -90.0, -110.0):
        y = x + c
        print(f"  c = {c:6.0f}: {_median_ms(lambda: torch.exp(y, out=out), reps):7.2f} ms")
    y = torch.full_like(x, float("-inf"))
    print(f"  all -inf:   {_median_ms(lambda: torch.exp(y, out=out), reps):7.2f} ms")


def bench_step(steps: int, rounds: int, switch: str = SWITCH, label: dict[str, str] = LABEL) -> None:
    """Mid-size bf16 + fused training steps with ``switch`` alternating between ``torch`` and ``auto``
    over rounds (``label`` names the two in the output)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_train  # noqa: E402

    torch.manual_seed(0)
    task, batches = bench_train.load(ROOT / "data" / "aclsum" / "bin", steps, 2048)
    model = bench_train.build("bf16+fused", "mid", task).train()
    crit = bench_train.criterion("bf16+fused", task)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    per_step: dict[str, list[float]] = {s: [] for s in SETTINGS}
    for r in range(rounds + 1):
        for setting in SETTINGS[r % 2:] + SETTINGS[: r % 2]:
            os.environ[switch] = setting
            t0 = time.perf_counter()
            for b in batches:
                bench_train.step(model, crit, opt, b)
            if r:  # round 0 warms up
                per_step[setting].append((time.perf_counter() - t0) / len(batches))
    os.environ.pop(switch, None)
    med = {s: statistics.median(v) for s, v in per_step.items()}
    print(f"mid-size bf16 + fused training step ({len(batches)} batches x {rounds} rounds):")
    for s in SETTINGS:
        print(f"  {label[s]:<16} {med[s]:.3f} s/step   ({', '.join(f'{t:.3f}' for t in per_step[s])})")
    print(f"  speed-up: {med['torch'] / med['auto']:.3f}x")


def bf16_bench_args(doc: str, reps: int, rounds: int) -> argparse.Namespace:
    """The command line of a bf16 CPU benchmark with call timings and ``bench_step``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=reps)
    ap.add_argument("--steps", type=int, default=0, help="also time mid-size bf16 training steps (batches per round)")
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--anyway", action="store_true", help="run where bf16 is emulated too")
    return ap.parse_args()


def main() -> None:
    args = bf16_bench_args(__doc__, reps=30, rounds=5)
    if bf16_emulated() and not args.anyway:
        print(f"bench_attention: {EMULATED_BF16}: timings of bf16 attention say nothing there; nothing run "
              "(--anyway to run it)")
        return
    bench_calls(args.reps)
    bench_exp(args.reps)
    if args.steps:
        bench_step(args.steps, args.rounds)


if __name__ == "__main__":
    main()
