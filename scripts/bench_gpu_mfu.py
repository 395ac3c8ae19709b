#!/usr/bin/env python
"""bart_large_preln training throughput and model FLOPs utilisation on one GPU, bf16 autocast.

Prepared for a machine with a GPU (none here). For sequence lengths 128 and 512 it
trains the model core (bart_ext/model.py, the same modules fairseq runs) with NVLAMB
on random tokens for --steps steps after --warmup, under bf16 autocast with TF32 on,
and prints tokens/s, sequences/s and the model FLOPs utilisation:

    FLOPs per token = 6 x parameters (forward + backward matmuls)
                    + 12 x width x length x attention blocks (scores and values)

where a token is one position of a (source, target) pair of the sequence length:
the encoder's parameters see the source token, the decoder's the target token,
and the attention blocks are the encoder's self-attention and the decoder's self-
and cross-attention (12 + 2 x 12 for bart_large).

against the GPU's dense bf16 peak (--peak-tflops; H200/H100 SXM 989). NVIDIA's
published single-A100 bf16 figures for the recipe are printed beside it
(326.5 sequences/s at 128, 69.3 at 512). Target on an H200: at least 50% MFU.

Usage: python scripts/bench_gpu_mfu.py [--peak-tflops 989] [--batch 128,32] [--steps 20]
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
from bart_ext.model import BartConfig, BartModel, count_parameters  # noqa: E402
from bart_ext.nvlamb import NVLAMB, param_groups  # noqa: E402

NVIDIA_A100_SEQ_PER_S = {128: 326.5, 512: 69.3}


def step_time(model, opt, batch: int, length: int, vocab: int, steps: int, warmup: int) -> float:
    src = torch.randint(4, vocab, (batch, length), device="cuda")
    tgt = torch.randint(4, vocab, (batch, length), device="cuda")
    times = []
    for i in range(warmup + steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(src, tgt)  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, vocab), tgt.view(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    ap.add_argument("--batch", default="128,32", help="sequences per step at 128 and at 512")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu_mfu.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    vocab = 50265
    cfg = BartConfig(vocab_size=vocab, embed_dim=1024, ffn_dim=4096, encoder_layers=12, decoder_layers=12,
                     attention_heads=16, dropout=0.1)
    model = BartModel(cfg).cuda()
    n_params = count_parameters(model)
    opt = NVLAMB(param_groups(model.parameters(), 0.01), lr=1e-4)
    print(f"{torch.cuda.get_device_name()}: bart_large_preln, {n_params / 1e6:.1f}M parameters, bf16 autocast, "
          f"TF32 on, NVLAMB")
    for length, batch in zip((128, 512), (int(b) for b in args.batch.split(","))):
        t = step_time(model, opt, batch, length, vocab, args.steps, args.warmup)
        tokens = batch * length
        attention_blocks = cfg.encoder_layers + 2 * cfg.decoder_layers
        flops_per_token = 6 * n_params + 12 * cfg.embed_dim * length * attention_blocks
        tflops = flops_per_token * tokens / t / 1e12
        print(f"length {length}, batch {batch}: {batch / t:,.1f} sequences/s, {tokens / t:,.0f} tokens/s, "
              f"{tflops:,.0f} TFLOP/s = {tflops / args.peak_tflops:.0%} MFU "
              f"(NVIDIA A100 bf16: {NVIDIA_A100_SEQ_PER_S[length]} sequences/s)")


if __name__ == "__main__":
    main()
