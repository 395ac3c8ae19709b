#!/usr/bin/env python
"""Training words/s: bart_preln against stock fairseq `bart` with Pre-LN, side by side.

Both models get the same shapes, the same real batches (aclsum through
bart_denoising, 128 tokens per sample) and the same optimizer (torch Adam); one
training step is forward, cross-entropy, backward and the optimizer step.
Rounds alternate between the two models so drift in the machine hits both;
the figure is the median words/s (target tokens) over rounds.

Usage: python scripts/bench_train.py [--rounds 5] [--steps 2] [--sizes tiny,mid]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from fairseq.models.bart import BARTModel
from fairseq.models.bart.model import bart_base_architecture

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from user_dir.bart_denoising import BartDenoisingTask  # noqa: E402
from user_dir.bart_preln import BartPreln  # noqa: E402

SIZES = {  # layers, width, heads, ffn
    "tiny": (2, 36, 3, 76),
    "mid": (6, 512, 8, 2048),
}


def build(kind: str, size: str, task) -> torch.nn.Module:
    layers, dim, heads, ffn = SIZES[size]
    if kind == "ours":
        cfg = argparse.Namespace(encoder_layers=layers, decoder_layers=layers, encoder_embed_dim=dim,
                                 encoder_ffn_embed_dim=ffn, encoder_attention_heads=heads, max_positions=1024,
                                 dropout=0.1, attention_dropout=0.0, activation_dropout=0.0, post_ln=False,
                                 init_missing_final_layer_norm=False)
        return BartPreln.build_model(cfg, task)
    args = argparse.Namespace(encoder_layers=layers, decoder_layers=layers, encoder_embed_dim=dim,
                              decoder_embed_dim=dim, encoder_ffn_embed_dim=ffn, decoder_ffn_embed_dim=ffn,
                              encoder_attention_heads=heads, decoder_attention_heads=heads,
                              encoder_normalize_before=True, decoder_normalize_before=True)
    bart_base_architecture(args)
    return BARTModel.build_model(args, task)


def step(model, opt, batch, pad) -> None:
    net = batch["net_input"]
    logits = model(net["src_tokens"], net["src_lengths"], net["prev_output_tokens"])[0]
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), batch["target"].view(-1), ignore_index=pad,
                           reduction="sum")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "aclsum" / "bin")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="training steps per model per round")
    ap.add_argument("--sizes", default="tiny,mid")
    ap.add_argument("--max-tokens", type=int, default=2048)
    args = ap.parse_args()
    torch.manual_seed(0)

    task = BartDenoisingTask.from_data(args.data, tokens_per_sample=128)
    ds = task.load_dataset("train")
    order = ds.ordered_indices()[-4000:]  # full-length samples
    batches, cur, tokens = [], [], 0
    for i in order:
        if tokens + ds.size(i) > args.max_tokens:
            batches.append(ds.collater([ds[j] for j in cur]))
            cur, tokens = [], 0
            if len(batches) == args.steps:
                break
        cur.append(i)
        tokens += ds.size(i)
    words = sum(b["ntokens"] for b in batches)
    pad = task.dictionary.pad()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(batches)} batches of "
          f"~{words // len(batches)} target tokens; {args.rounds} rounds x {args.steps} steps per model")
    print(f"{'size':<6} {'shape':<22} {'stock fairseq bart (Pre-LN)':>28} {'bart_preln':>14} {'ratio':>7}")
    for size in args.sizes.split(","):
        models = {kind: build(kind, size, task).train() for kind in ("stock", "ours")}
        opts = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, m in models.items()}
        wps: dict[str, list[float]] = {k: [] for k in models}
        for kind in models:  # warm-up
            step(models[kind], opts[kind], batches[0], pad)
        for r in range(args.rounds):
            for kind in (("stock", "ours") if r % 2 == 0 else ("ours", "stock")):
                t0 = time.perf_counter()
                for b in batches:
                    step(models[kind], opts[kind], b, pad)
                wps[kind].append(words / (time.perf_counter() - t0))
        med = {k: statistics.median(v) for k, v in wps.items()}
        layers, dim, heads, ffn = SIZES[size]
        shape = f"{layers}+{layers} x{dim} h{heads} ffn{ffn}"
        print(f"{size:<6} {shape:<22} {med['stock']:>22,.0f} w/s {med['ours']:>10,.0f} w/s "
              f"{med['ours'] / med['stock']:>6.2f}x", flush=True)


if __name__ == "__main__":
    main()
