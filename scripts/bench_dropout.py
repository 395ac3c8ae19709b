#!/usr/bin/env python
"""Dropout on the CPU: bart_ext's counter-based kernel against torch's dropout, side by side.

Two measurements in one run, the switch ``BART_EXT_DROPOUT`` (``auto`` = the kernel, ``torch``)
flipped between them:

1. one dropout call, forward and backward (p 0.1), on activations of the demo model's and the mid
   size's shapes: milliseconds, median of ``--reps``;
2. a training step of the demo's model with BART's dropout 0.1 (bart_small_preln's preset, as the
   demo fine-tunes it; the demo pretrains it without dropout): 32 samples of 64 tokens from the
   demo's LDDL shards, or from data/aclsum/bin with its 18.6k dictionary before `make demo` has
   run; BART's noise, bart_cross_entropy, NVLAMB as configs/pretrain/small.yaml sets it:
   seconds per step over ``--steps`` batches, the two settings alternating over ``--rounds``;
   the figure is the median.

Usage: python scripts/bench_dropout.py [--data runs/demo/lddl] [--rounds 7] [--steps 8] [--reps 20]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bart_ext import dropout as counter_dropout  # noqa: E402

SETTINGS = ("torch", "auto")
LABEL = {"torch": "torch's dropout", "auto": "bart_ext's kernel"}


def _timed(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def call_times(reps: int) -> dict[str, float]:
    shapes = {"demo model (32 x 64 x 128)": (32, 64, 128), "mid size (2,048 x 512)": (2048, 512)}
    print("one dropout call, forward + backward, p 0.1 (median of %d):" % reps)
    ratios = {}
    for name, shape in shapes.items():
        x = torch.randn(shape, requires_grad=True)
        g = torch.randn(shape)
        ms = {}
        for s in SETTINGS:
            os.environ[counter_dropout.switches.DROPOUT.name] = s

            def call():
                counter_dropout.dropout(x, 0.1, True).backward(g)

            ms[s] = 1e3 * _timed(call, reps)
        print(f"  {name:<28} torch {ms['torch']:6.2f} ms   bart_ext {ms['auto']:6.2f} ms   "
              f"{ms['torch'] / ms['auto']:.2f}x")
        ratios[name] = ms["torch"] / ms["auto"]
    return ratios


def step_times(data: Path, rounds: int, steps: int) -> float:
    import user_dir  # noqa: F401  (registers the task, model and criterion)
    from user_dir.bart_cross_entropy import BartCrossEntropy
    from user_dir.bart_denoising import BartDenoisingTask
    from user_dir.bart_preln import BartPreln, bart_small_preln

    from bart_ext.nvlamb import NVLAMB, param_groups

    torch.manual_seed(0)
    task = BartDenoisingTask.from_data(data, tokens_per_sample=64)
    task.load_dataset("train")
    itr = task.get_batch_iterator(task.dataset("train"), max_tokens=None, max_sentences=32,
                                  seed=1).next_epoch_itr(shuffle=True)
    batches = [next(itr) for _ in range(steps)]
    cfg = argparse.Namespace()
    bart_small_preln(cfg)
    model = BartPreln.build_model(cfg, task).train()
    crit = BartCrossEntropy(task, False)
    opt = NVLAMB(param_groups(model.parameters(), 0.01), lr=1e-4)

    def step(batch):
        opt.zero_grad(set_to_none=True)
        loss, _, _ = crit(model, batch)
        loss.backward()
        opt.step()

    per_step: dict[str, list[float]] = {s: [] for s in SETTINGS}
    for r in range(rounds):
        for s in SETTINGS if r % 2 == 0 else SETTINGS[::-1]:
            os.environ[counter_dropout.switches.DROPOUT.name] = s
            step(batches[0])  # warm
            t0 = time.perf_counter()
            for b in batches:
                step(b)
            per_step[s].append((time.perf_counter() - t0) / len(batches))
    med = {s: statistics.median(v) for s, v in per_step.items()}
    tokens = sum(b["ntokens"] for b in batches) / len(batches)
    print(f"\nthe demo model's step at dropout 0.1 (bart_small_preln, {len(task.dictionary):,} entries, ~{tokens:.0f} target "
          f"tokens, NVLAMB), {rounds} rounds x {steps} steps:")
    for s in SETTINGS:
        print(f"  {LABEL[s]:<20} {med[s]:.3f} s/step   ({', '.join(f'{v:.3f}' for v in per_step[s])})")
    print(f"  speed-up: {med['torch'] / med['auto']:.3f}x")
    return med["torch"] / med["auto"]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo_lddl = ROOT / "runs" / "demo" / "lddl"
    ap.add_argument("--data", type=Path, default=demo_lddl if (demo_lddl / "train").is_dir() else ROOT / "data" / "aclsum" / "bin",
                    help="LDDL shards or a fairseq-preprocess folder (default: the demo's shards, else data/aclsum/bin)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)
    if counter_dropout.load() is None:
        sys.exit("the dropout kernel is not built (no C compiler, or BART_EXT_NO_CPU_KERNEL=1): nothing to compare")
    if not args.data.is_dir():
        sys.exit(f"{args.data}: no such folder (LDDL shards or a fairseq-preprocess folder; `make data` makes data/aclsum/bin)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; data {args.data}")
    name = counter_dropout.switches.DROPOUT.name
    before = os.environ.get(name)
    try:
        return {"call_speedup": call_times(args.reps), "step_speedup": step_times(args.data, args.rounds, args.steps)}
    finally:  # the switch as it was
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


if __name__ == "__main__":
    main()
