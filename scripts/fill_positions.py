#!/usr/bin/env python
"""Fill the learned positions a pretrained checkpoint never trained, before fine-tuning on longer text.

A model pretrained on N-token samples has trained only the first N rows of its position tables; the
rest are still random. This writes a copy of the checkpoint whose later rows start from the trained
ones (bart_ext/positions.py): ``tail-mean`` (the mean of the last half of the trained positions; the
demo's choice, README "The demo"), ``mean`` or ``tile``. Fine-tune from the copy:

    python scripts/fill_positions.py runs/pretrain/checkpoint_last.pt runs/pretrain/checkpoint_filled.pt
    fairseq-hydra-train ... checkpoint.finetune_from_model=$PWD/runs/pretrain/checkpoint_filled.pt

Usage: python scripts/fill_positions.py CHECKPOINT OUT [--trained N] [--fill tail-mean|mean|tile]
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> dict:
    from bart_ext.positions import FILLS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--trained", type=int, help="positions pretraining used (default: the checkpoint's task.tokens_per_sample)")
    ap.add_argument("--fill", choices=FILLS, default=FILLS[0])
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")

    import user_dir  # noqa: F401  (the checkpoint-loading fixes)
    from bart_ext.positions import PositionFillError, fill_checkpoint_positions

    try:
        info = fill_checkpoint_positions(args.checkpoint, args.out, args.trained, args.fill)
    except PositionFillError as e:
        raise SystemExit(f"fill_positions.py: {e}") from None
    print(f"[fill_positions] {args.checkpoint} -> {args.out}: positions {info['trained']} and later from {info['fill']} "
          f"({', '.join(info['changed']) or 'nothing to fill'})")
    return info


if __name__ == "__main__":
    from bart_ext.cli import run

    run(main)
