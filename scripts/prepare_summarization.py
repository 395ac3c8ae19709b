#!/usr/bin/env python
"""Summarization data for fine-tuning: document/summary text -> BPE -> fairseq-preprocess (translation format).

Input, one of:
    --aclsum (default)   aclsum's train/val/test from the registry wheel (see bart_ext/summarization_data.py
                         for what a pair is), fetched by scripts/prepare_data.py
    --raw DIR            DIR/{train,valid,test}.{source,target}: one document / summary per line, aligned

Output (every step skipped when its output exists; --force redoes them):
    OUT/raw/{split}.{source,target,id}    the text pairs
    OUT/bpe/{split}.{source,target}       BPE ids (GPT-2 from --gpt2, or --sentencepiece-model)
    OUT/bin/                              fairseq-preprocess output, dict.{source,target}.txt = the
                                          pretrained dictionary, plus the BPE files for decoding
                                          (encoder.json and vocab.bpe, or sentencepiece.model)

The dictionary must be the pretrained model's: --dict PATH, or by default every GPT-2 id
(what scripts/lddl_preprocess.py writes, so its pretrained models fit).

Usage: python scripts/prepare_summarization.py [--aclsum | --raw DIR] [--out data/aclsum_summ] [--dict DICT]
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bart_ext.cli import check_at_least  # noqa: E402
from bart_ext.bpe import SENTENCEPIECE_MODEL, GPT2Encoder, SentencePieceEncoder, gpt2_dictionary_lines  # noqa: E402
from bart_ext.files import read_lines, write_atomic  # noqa: E402
from bart_ext.summarization_data import aclsum_pairs, binarize, encode_lines, read_pairs, write_pairs  # noqa: E402

SPLITS = ("train", "valid", "test")


def log(msg: str) -> None:
    print(f"[prepare_summarization] {msg}", flush=True)


@contextlib.contextmanager
def logged_as_ours(name: str):
    """Within the block, the library logger ``name``'s records are printed as this script's lines
    (``[prepare_summarization] ...``) and still reach the root logger's handlers."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[prepare_summarization] %(message)s"))
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--aclsum", action="store_true", help="aclsum (the default)")
    src.add_argument("--raw", type=Path, help="folder with {train,valid,test}.{source,target}")
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "aclsum_summ")
    ap.add_argument("--downloads", type=Path, default=ROOT / "data" / "downloads", help="where the aclsum wheel is")
    ap.add_argument("--gpt2", type=Path, default=ROOT / "data" / "aclsum" / "gpt2",
                    help="folder with GPT-2's encoder.json and vocab.bpe")
    ap.add_argument("--sentencepiece-model", type=Path, help="encode with this sentencepiece .model instead")
    ap.add_argument("--dict", type=Path, help="the pretrained model's dict.txt (default: every GPT-2 id)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="redo every step")
    args = ap.parse_args(argv)
    check_at_least(ap, args, workers=1)

    raw, bpe, bin_dir = args.out / "raw", args.out / "bpe", args.out / "bin"
    if args.force:
        for d in (raw, bpe, bin_dir):
            shutil.rmtree(d, ignore_errors=True)
    t0 = time.time()
    if not (raw / "test.target").exists():
        for split in SPLITS:
            if args.raw:
                if not (args.raw / f"{split}.source").exists() and split == "test":
                    continue  # a test split is optional for user data
                pairs = read_pairs(args.raw, split)
            else:
                wheels = sorted(args.downloads.glob("aclsum-*.whl"))
                if not wheels:
                    sys.exit(f"no aclsum wheel in {args.downloads}: run `make data` (scripts/prepare_data.py) first")
                pairs = aclsum_pairs(wheels[-1], split)
            write_pairs(pairs, raw, split)
            words = sum(len(p.source.split()) for p in pairs) / max(len(pairs), 1)
            twords = sum(len(p.target.split()) for p in pairs) / max(len(pairs), 1)
            log(f"{split}: {len(pairs)} pairs, {words:.0f} words per document, {twords:.0f} per summary")

    if args.sentencepiece_model:
        encoder = SentencePieceEncoder(args.sentencepiece_model)
        if args.dict is None:
            sys.exit("--sentencepiece-model needs --dict (the pretrained model's dict.txt)")
    else:
        for name in ("encoder.json", "vocab.bpe"):
            if not (args.gpt2 / name).exists():
                sys.exit(f"{args.gpt2 / name} not found: run `make data` or pass --gpt2 DIR")
        encoder = GPT2Encoder(args.gpt2 / "encoder.json", args.gpt2 / "vocab.bpe")
    dictionary = args.dict
    if dictionary is None:
        dictionary = args.out / "dict.txt"
        if not dictionary.exists():
            write_atomic(dictionary, "\n".join(gpt2_dictionary_lines(args.gpt2 / "encoder.json")) + "\n")

    bpe.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        for side in ("source", "target"):
            dst = bpe / f"{split}.{side}"
            if (raw / f"{split}.{side}").exists() and not dst.exists():
                lines = read_lines(raw / f"{split}.{side}")
                write_atomic(dst, "".join(x + "\n" for x in encode_lines(lines, encoder)))
    have = bin_dir / "dict.source.txt"
    if not have.exists() or have.read_bytes() != dictionary.read_bytes():
        log(f"fairseq-preprocess with {dictionary}")
        with logged_as_ours("bart_ext.summarization_data"):  # its <unk> warnings, one per file
            binarize(bpe, dictionary, bin_dir, args.workers)
    if args.sentencepiece_model:  # decoding (scripts/generate.py, bart_ext.load) reads it there
        shutil.copy(args.sentencepiece_model, bin_dir / SENTENCEPIECE_MODEL)
    else:
        for name in ("encoder.json", "vocab.bpe"):
            shutil.copy(args.gpt2 / name, bin_dir / name)
    for split in SPLITS:
        if (raw / f"{split}.id").exists():
            shutil.copy(raw / f"{split}.id", bin_dir / f"{split}.id")
    log(f"ready: {bin_dir} ({time.time() - t0:.1f}s)")
    return bin_dir


if __name__ == "__main__":
    from bart_ext.cli import run

    run(main)
