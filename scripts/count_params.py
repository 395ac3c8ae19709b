#!/usr/bin/env python
"""Print the parameter counts of the bart_*_preln architectures (shapes only, no memory).

Usage: python scripts/count_params.py [--dict-size 50265]
"""
from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch
from fairseq.data import Dictionary

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bart_ext.model import count_parameters  # noqa: E402
from user_dir.bart_preln import (  # noqa: E402
    BartPreln, bart_base_preln, bart_large_preln, bart_small_preln, bart_tiny_preln)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dict-size", type=int, default=50265, help="dictionary entries (BART's GPT-2 dict: 50265)")
    args = ap.parse_args()
    d = Dictionary()
    if args.dict_size < len(d):
        ap.error(f"--dict-size {args.dict_size}: a fairseq dictionary has at least its {len(d)} special entries")
    for i in range(args.dict_size - len(d)):
        d.add_symbol(f"w{i}")
    task = types.SimpleNamespace(source_dictionary=d, target_dictionary=d)
    print(f"{'architecture':<18} {'layers':>7} {'width':>6} {'heads':>6} {'ffn':>6} {'parameters':>14}")
    for name, arch in [("bart_tiny_preln", bart_tiny_preln), ("bart_small_preln", bart_small_preln),
                       ("bart_base_preln", bart_base_preln),
                       ("bart_large_preln", bart_large_preln)]:
        cfg = argparse.Namespace(post_ln=False, init_missing_final_layer_norm=False)
        arch(cfg)
        with torch.device("meta"):
            model = BartPreln.build_model(cfg, task)
        n = count_parameters(model)
        layers = f"{cfg.encoder_layers}+{cfg.decoder_layers}"
        print(f"{name:<18} {layers:>7} {cfg.encoder_embed_dim:>6} {cfg.encoder_attention_heads:>6} "
              f"{cfg.encoder_ffn_embed_dim:>6} {n:>14,} ({n / 1e6:.1f}M)")
    print(f"(dictionary of {len(d)} entries; shared input/output embeddings counted once)")


if __name__ == "__main__":
    main()
