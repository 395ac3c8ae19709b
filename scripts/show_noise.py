#!/usr/bin/env python
"""Show bart_denoising samples: the clean text and its noised source, decoded, side by side.

Usage: python scripts/show_noise.py [--data data/aclsum/bin] [--n 3] [--mask 0.3] [--permute-sentences 1.0] ...
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bart_ext.adapters.fairseq_lddl import LDDLDataset  # noqa: E402
from bart_ext.bpe import SENTENCEPIECE_MODEL, FolderCodec  # noqa: E402
from bart_ext.cli import check_at_least  # noqa: E402
from bart_ext.lddl_data import Epoch  # noqa: E402
from user_dir.bart_denoising import BartDenoisingTask  # noqa: E402


def decode(tokens, dictionary, codec) -> str:
    return codec.text([dictionary[t] for t in tokens.tolist() if t not in (dictionary.bos(), dictionary.eos())])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "aclsum" / "bin",
                    help="a fairseq-preprocess folder or LDDL shards (its valid/ split is shown)")
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--tokens-per-sample", type=int, default=128)
    ap.add_argument("--mask", type=float, default=0.3)
    ap.add_argument("--permute-sentences", type=float, default=1.0)
    ap.add_argument("--replace-length", type=int, default=1)
    ap.add_argument("--epoch", type=int, default=1)
    args = ap.parse_args(argv)
    check_at_least(ap, args, n=1, epoch=1, tokens_per_sample=3)
    spm = (args.data / SENTENCEPIECE_MODEL).is_file() and not (args.data / "encoder.json").is_file()
    task = BartDenoisingTask.from_data(args.data, args.tokens_per_sample, mask=args.mask,
                                       permute_sentences=args.permute_sentences, replace_length=args.replace_length,
                                       word_starts="sentencepiece" if spm else "gpt2")
    dataset = task.load_dataset("valid")
    if isinstance(dataset, LDDLDataset):  # shards: the validation stream's first rows, as training noises them
        shown = Epoch(dataclasses.replace(dataset.cfg, batch_size=1), args.epoch, shuffle=False).noised_samples(args.n)
    else:
        samples = dataset.samples
        shown = [(i, samples.noised(i, args.epoch)) for i in range(min(args.n, len(samples)))]
    if len(shown) < args.n:
        print(f"(the valid split has {len(shown)} samples)")
    codec = FolderCodec(args.data)  # GPT-2 BPE, or the shards' sentencepiece.model
    for i, o in shown:
        print(f"--- sample {i} (epoch {args.epoch}): {o.num_words} words, spans {o.spans.tolist()}, "
              f"sentence order {o.order.tolist()}")
        for label, toks in (("clean", o.target), ("noised", o.source)):
            body = textwrap.fill(decode(toks, task.dictionary, codec), 100, initial_indent=f"{label:>7}: ",
                                 subsequent_indent=" " * 9)
            print(body)
        print()


if __name__ == "__main__":
    from bart_ext.cli import run

    run(main)
