#!/usr/bin/env python
"""LDDL data path benchmarks: padding with and without length bins, loader throughput, preprocessing speed.

All on the default data (aclsum paper bodies, GPT-2 BPE) at 512 tokens, in one run:

1. preprocessing: scripts' dask pipeline (bart_ext engine, 2 local workers) over the
   aclsum training text repeated --copies times; MB/s of input text, cluster
   start-up included, median of --prep-rounds runs;
2. padding share (pad slots / all slots of sources and targets) with the default
   (source, target) length bins and with none (batches in stream order), batch 32,
   median over --epochs epochs;
3. loader throughput, one process: noised, batched target tokens/s of the LDDL
   loader (reads parquet, tokenizes, noises, bins, collates) against fairseq's own
   path over the same text (fairseq-preprocess mmap data -> DenoisingDataset ->
   collater, batches of 32), rounds alternating, median; then the LDDL loader with 2
   worker processes, and the workers it takes to feed 160,000 tokens/s.

Usage: python scripts/bench_lddl.py [--copies 4] [--prep-rounds 3] [--epochs 5] [--rounds 3]
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bart_ext import lddl_data, lddl_prep  # noqa: E402
from scripts.fairseq_reference import fairseq_reference  # noqa: E402
from bart_ext.bpe import GPT2Encoder  # noqa: E402
from scripts.lddl_preprocess import aclsum_corpus  # noqa: E402
from scripts.lddl_preprocess import main as preprocess_main  # noqa: E402
from user_dir.bart_denoising import BartDenoisingTask  # noqa: E402

TARGET_RATE = 160_000  # tokens/s: one H200 training bart_large_preln at about half its peak


def loader_rate(cfg, chunks: int, workers: int = 0) -> float:
    ep = lddl_data.Epoch(cfg, 1)
    n_batches = min(len(ep), chunks * lddl_data.CHUNK_BATCHES)
    t0, tokens = time.perf_counter(), 0
    for i, (b, _) in enumerate(ep.iterate(0, workers)):
        if i == n_batches:
            break
        tokens += b.get("ntokens", 0)
    return tokens / (time.perf_counter() - t0)


def fairseq_rate(dataset, collate, indices: list[int], batch: int) -> float:
    t0, tokens = time.perf_counter(), 0
    for i in range(0, len(indices), batch):
        b = collate([dataset[j] for j in indices[i : i + batch]])
        tokens += int(b["ntokens"])
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=4, help="aclsum training text repeated for preprocessing")
    ap.add_argument("--prep-rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunks", type=int, default=2, help="chunks of 32 batches per throughput round")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, force=True)
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_lddl_"))
    try:
        run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args, tmp: Path) -> None:
    data = ROOT / "data" / "aclsum"
    gpt2 = data / "gpt2"
    encoder = GPT2Encoder(gpt2 / "encoder.json", gpt2 / "vocab.bpe")

    # 1. preprocessing MB/s, 2 dask workers
    corpus = aclsum_corpus(data / "raw", tmp / "corpus")["train"]
    text = (corpus / "aclsum.txt").read_text(encoding="utf-8")
    big = tmp / "big"
    big.mkdir()
    for k in range(args.copies):
        (big / f"copy{k}.txt").write_text(text, encoding="utf-8")
    speeds, pipeline = [], []
    for r in range(args.prep_rounds):
        stats = lddl_prep.preprocess(big, tmp / f"prep{r}", encoder, 512, num_shards=8, workers=2)
        mb = stats.input_bytes / 2**20
        speeds.append(mb / stats.seconds)
        pipeline.append(mb / stats.pipeline_seconds)
        print(f"  preprocessing round {r + 1}: {mb:.1f} MB in {stats.seconds:.1f} s ({speeds[-1]:.2f} MB/s; "
              f"pipeline alone {pipeline[-1]:.2f} MB/s), {stats.samples} samples", flush=True)

    # shards of the aclsum training text alone, as the demo and tests use
    shards_root = tmp / "shards"
    preprocess_main(["--aclsum", "--out", str(shards_root), "--target-seq-length", "512", "--num-shards", "8"])
    task = BartDenoisingTask.from_data(shards_root, tokens_per_sample=512, seed=1)
    cfg = dataclasses.replace(task.load_dataset("train").cfg, batch_size=32)

    # 2. padding share, bins against none
    shares = {"bins": [], "none": []}
    for epoch in range(1, args.epochs + 1):
        for name, width in (("bins", cfg.bin_size), ("none", 0)):
            pads = slots = 0
            for b, _ in lddl_data.Epoch(dataclasses.replace(cfg, bin_size=width), epoch).iterate():
                if b:
                    pads, slots = pads + b["padding"][0], slots + b["padding"][1]
            shares[name].append(pads / slots)

    # 3. throughput, one process: the LDDL loader against fairseq's indexed data + DenoisingDataset
    ref_task = BartDenoisingTask.from_data(data / "bin", tokens_per_sample=512, seed=1)
    ours_indexed = ref_task.load_dataset("train")
    ref = fairseq_reference(ours_indexed.samples, ref_task.dictionary, ref_task.mask_idx, ours_indexed.samples.cfg, 1)
    n = args.chunks * lddl_data.CHUNK_BATCHES * 32
    indices = np.random.default_rng(0).permutation(len(ref))[:n].tolist()
    rates = {"lddl loader": [], "fairseq indexed + DenoisingDataset": []}
    for r in range(args.rounds):
        for name in (list(rates) if r % 2 == 0 else list(reversed(rates))):
            if name == "lddl loader":
                rates[name].append(loader_rate(cfg, args.chunks))
            else:
                rates[name].append(fairseq_rate(ref, ref.collater, indices, 32))
    two = [loader_rate(cfg, 2 * args.chunks, workers=2) for _ in range(args.rounds)]

    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\npreprocessing (bart_ext engine, 2 dask workers, {args.copies} x aclsum train text): "
          f"median {statistics.median(speeds):.2f} MB/s over {args.prep_rounds} runs, start-up included; "
          f"the dask pipeline alone {statistics.median(pipeline):.2f} MB/s")
    pb, pn = statistics.median(shares["bins"]), statistics.median(shares["none"])
    print(f"padding share at 512 tokens, batch 32, median of {args.epochs} epochs: bins (width {cfg.bin_size}) "
          f"{pb:.2%}, none {pn:.2%}: {pn / pb:.2f}x less padding")
    print("noised, batched target tokens/s, one process (median of rounds):")
    for name, v in med.items():
        print(f"  {name:<36} {v:>9,.0f}")
    ratio = med["lddl loader"] / med["fairseq indexed + DenoisingDataset"]
    print(f"  ratio lddl / fairseq {ratio:.2f}x (the LDDL loader also reads parquet and BPE-tokenizes)")
    print(f"  lddl loader, 2 worker processes: {statistics.median(two):,.0f} tokens/s (2 cores)")
    per_worker = med["lddl loader"]
    print(f"workers to feed {TARGET_RATE:,} tokens/s at {per_worker:,.0f} per worker: "
          f"{math.ceil(TARGET_RATE / per_worker)}")


if __name__ == "__main__":
    main()
