#!/usr/bin/env python
"""ROUGE-1/2/L/Lsum F1 (x100) with 95% bootstrap confidence intervals.

HYP and REF hold one summary per line, aligned. With --gpt2 DIR, lines are GPT-2
BPE ids as fairseq-generate writes them (e.g. "464 3290 ...") and are decoded to
text first with DIR/encoder.json and DIR/vocab.bpe.

Usage: python scripts/rouge.py HYP REF [--gpt2 data/aclsum/gpt2] [--bootstrap 1000] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bart_ext.cli import check_at_least  # noqa: E402
from bart_ext.rouge import METRICS, bootstrap, per_document  # noqa: E402
from bart_ext.files import read_lines as read_text_lines  # noqa: E402
from bart_ext.text import gpt2_detokenize  # noqa: E402


def read_lines(path: Path) -> list[str]:
    if not path.exists():
        raise SystemExit(f"rouge.py: {path} not found")
    return read_text_lines(path)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("hyp", type=Path)
    ap.add_argument("ref", type=Path)
    ap.add_argument("--gpt2", type=Path, help="decode GPT-2 BPE ids with DIR/encoder.json and DIR/vocab.bpe")
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the table as JSON")
    args = ap.parse_args(argv)
    check_at_least(ap, args, bootstrap=1)
    hyps, refs = read_lines(args.hyp), read_lines(args.ref)
    if not hyps:
        raise SystemExit(f"rouge.py: {args.hyp} holds no summaries")
    if args.gpt2:
        from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

        enc = get_encoder(str(args.gpt2 / "encoder.json"), str(args.gpt2 / "vocab.bpe"))
        hyps = [gpt2_detokenize(h.split(), enc.decode) for h in hyps]
        refs = [gpt2_detokenize(r.split(), enc.decode) for r in refs]
    try:
        scores = per_document(hyps, refs)
    except ValueError as e:
        raise SystemExit(f"rouge.py: {args.hyp} vs {args.ref}: {e}")
    table = {}
    print(f"{len(hyps)} summaries; F1 x 100, 95% bootstrap interval ({args.bootstrap} resamples)")
    for m in METRICS:
        ci = bootstrap(scores[m], args.bootstrap, seed=args.seed)
        table[m] = {"f1": 100 * ci.mean, "low": 100 * ci.low, "high": 100 * ci.high}
        print(f"  {m:<10} {100 * ci.mean:6.2f}  [{100 * ci.low:6.2f}, {100 * ci.high:6.2f}]")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))
    return table


if __name__ == "__main__":
    from bart_ext.cli import run

    run(main)
