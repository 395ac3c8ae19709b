#!/usr/bin/env python
"""Noising throughput: bart_denoising against fairseq's DenoisingDataset, side by side.

Same indexed data (aclsum, GPT-2 BPE), same samples (tokens_per_sample 512), the
paper's settings (mask 0.3, Poisson 3.5 spans, replace_length 1, mask_random 0.1,
permute_sentences 1.0), one process. Each round noises the same sample indices
with both implementations (order alternating); the figure is the median
samples/s over rounds.

Usage: python scripts/bench_noise.py [--rounds 5] [--samples 400]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bart_ext.adapters.fairseq_denoising import is_lddl  # noqa: E402
from scripts.fairseq_reference import fairseq_reference  # noqa: E402
from user_dir.bart_denoising import BartDenoisingTask  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "aclsum" / "bin")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--samples", type=int, default=400)
    args = ap.parse_args()
    torch.set_num_threads(1)

    if is_lddl(str(args.data)):
        raise SystemExit(f"--data {args.data} holds LDDL shards; bench_noise.py compares against fairseq's DenoisingDataset, which reads fairseq-preprocess output "
                         "(scripts/prepare_data.py writes data/aclsum/bin)")
    task = BartDenoisingTask.from_data(args.data, tokens_per_sample=512)
    ours = task.load_dataset("train")
    ref = fairseq_reference(ours.samples, task.dictionary, task.mask_idx, ours.samples.cfg, seed=1)
    indices = list(range(0, len(ours), max(1, len(ours) // args.samples)))[: args.samples]
    mean_len = sum(int(ours.sizes[i]) for i in indices) / len(indices)
    runs = {"fairseq DenoisingDataset": lambda i: ref[i], "bart_denoising": lambda i: ours[i]}
    rates: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.rounds + 1):  # round 0 warms caches
        for name in (list(runs) if r % 2 == 0 else list(reversed(runs))):
            t0 = time.perf_counter()
            for i in indices:
                runs[name](i)
            if r > 0:
                rates[name].append(len(indices) / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{len(indices)} samples of {mean_len:.0f} tokens on average, {args.rounds} rounds, one process")
    for name, value in med.items():
        print(f"  {name:<26} {value:>9,.0f} samples/s")
    print(f"  ratio {med['bart_denoising'] / med['fairseq DenoisingDataset']:.2f}x")


if __name__ == "__main__":
    main()
