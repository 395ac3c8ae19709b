#!/usr/bin/env python
"""The output projection + loss alone: bart_ext's chunked fused loss against the unfused computation.

One forward and backward of ``hidden (tokens x C) @ weight.T`` -> log-softmax -> label-smoothed NLL
(0.1), as fairseq's criteria compute it on full logits (``reference_linear_cross_entropy``) and as
``bart_cross_entropy`` / ``bart_label_smoothed_cross_entropy`` do in chunks
(``fused_linear_cross_entropy``), in fp32 and under bf16 autocast. Rows alternate between the two
within each round; the figures are medians over rounds (ms per forward + backward).

Shapes: mid (2,048 tokens x 512, the aclsum dictionary's 18,617 entries) and base (2,048 x 768,
GPT-2's 50,265). ``--pad-share`` makes that share of the target tokens padding (chosen at random), as
in a batch of summaries of different lengths: both computations give them no loss; the fused one
also leaves them out of its matmuls.

Usage: python scripts/bench_loss.py [--rounds 7] [--shapes mid,base] [--dtypes fp32,bf16] [--pad-share 0.25]

On a CPU without bf16 instructions (AVX2 only) ``--dtypes`` defaults to fp32: emulated bf16 took
minutes a call there (name bf16 to run it anyway).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bart_ext.hardware import EMULATED_BF16, bf16_emulated  # noqa: E402
from bart_ext.losses import fused_linear_cross_entropy, reference_linear_cross_entropy  # noqa: E402

SHAPES = {"mid": (2048, 512, 18617), "base": (2048, 768, 50265)}
PAD = 1


def one(fn, hidden, weight, target, dtype) -> float:
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        loss = fn(hidden, weight, target, ignore_index=PAD, label_smoothing=0.1)[0]
    hidden.grad = weight.grad = None
    loss.backward()
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--shapes", default="mid,base")
    ap.add_argument("--dtypes", default=None, help="default fp32,bf16 (fp32 where bf16 is emulated)")
    ap.add_argument("--pad-share", type=float, default=0.0, help="share of target tokens that are padding")
    args = ap.parse_args()
    if not 0.0 <= args.pad_share < 1.0:
        raise SystemExit(f"--pad-share: {args.pad_share} is not in [0, 1)")
    impls = {"unfused": reference_linear_cross_entropy, "fused": fused_linear_cross_entropy}
    if args.dtypes is None:
        args.dtypes = "fp32,bf16"
        if bf16_emulated():
            args.dtypes = "fp32"
            print(f"bf16 left out: {EMULATED_BF16} (pass --dtypes fp32,bf16 to run it anyway)", flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per forward + backward, "
          f"median of {args.rounds} rounds; {args.pad_share:.0%} of target tokens are padding")
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            raise SystemExit(f"--shapes: unknown {shape} (known: {', '.join(SHAPES)})")
        n, width, vocab = SHAPES[shape]
        g = torch.Generator().manual_seed(0)
        hidden = torch.randn(n, width, generator=g, requires_grad=True)
        weight = (0.02 * torch.randn(vocab, width, generator=g)).requires_grad_()
        target = torch.randint(4, vocab, (n,), generator=g)
        target[torch.rand(n, generator=g) < args.pad_share] = PAD
        for dtype in args.dtypes.split(","):
            if dtype not in ("fp32", "bf16"):
                raise SystemExit(f"--dtypes: unknown {dtype} (known: fp32, bf16)")
            times: dict[str, list[float]] = {k: [] for k in impls}
            for k, fn in impls.items():  # warm-up
                one(fn, hidden, weight, target, dtype)
            for r in range(args.rounds):
                for k in (list(impls) if r % 2 == 0 else list(impls)[::-1]):
                    times[k].append(one(impls[k], hidden, weight, target, dtype))
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"  {shape:<5} {n:,} x {width} x {vocab:,} {dtype:<5} unfused {med['unfused']:8.1f}   "
                  f"fused {med['fused']:8.1f}   {med['unfused'] / med['fused']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
