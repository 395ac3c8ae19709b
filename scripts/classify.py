#!/usr/bin/env python
"""Labels for raw sentences from a fine-tuned classifier (``--task sentence_prediction``).

Reads one sentence per line (FILE, or standard input) and prints ``label<TAB>line`` (a regression model,
STS-B's kind: its score); a line with a tab is a pair of sentences (``premise<TAB>hypothesis``, for MNLI,
RTE, ... fine-tuned on ``input0/`` and ``input1/``; a line without a tab for such a model, whose DATA
holds ``input1/``, is read as one text and warned about). The sentences are GPT-2 BPE-encoded with DATA's
``encoder.json`` / ``vocab.bpe`` (or with its ``sentencepiece.model``) as the training data was: a space before each text's first word, as
scripts/prepare_roles.py gives it (a ``convert.py from-hf`` import not trained since: as its source
tokenizer did; ``--no-prefix-space`` for data binarized with fairseq's own tools, such as its GLUE
script), and fed as training fed them (``<s>`` first when the task's --init-token was 0, its
--separator-token between a pair's sentences).

Usage: python scripts/classify.py --path runs/roles/pretrained/checkpoint_best.pt \\
           [--data data/aclsum_roles/bin] [--head sentence_classification_head] [FILE]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bart_ext.cli import check_at_least  # noqa: E402
from bart_ext.classify.predict import open_classifier, predict_sentences  # noqa: E402


def main(argv: list[str] | None = None) -> list[str]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", type=Path, required=True, help="fine-tuned checkpoint")
    ap.add_argument("--data", type=Path, help="its data folder (input0/, label/, encoder.json, vocab.bpe; default: "
                                              "the checkpoint's task.data)")
    ap.add_argument("--head", default=None, help="classification head (default: the task's)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--prefix-space", action=argparse.BooleanOptionalAction, default=None,
                    help="a space before each text's first word, as bart_ext's data preparation gives it (default: "
                         "yes, except for a from-hf import not trained since, which reads as its source tokenizer "
                         "did; --no-prefix-space for data binarized with fairseq's own tools)")
    ap.add_argument("input", nargs="?", type=Path, help="one sentence per line (default: standard input)")
    args = ap.parse_args(argv)
    check_at_least(ap, args, batch_size=1)
    if args.input is not None and not args.input.exists():
        sys.exit(f"classify.py: input {args.input} not found")
    try:
        model, task, head, leading_space = open_classifier(args.path, args.data, args.head)
    except (FileNotFoundError, KeyError) as e:
        sys.exit(f"classify.py: {e.args[0]}")
    args.data = Path(str(task.cfg.data).split(":")[0])
    from bart_ext.bpe import FolderCodec

    try:
        codec = FolderCodec(args.data)  # GPT-2 BPE, or the sentencepiece model prepare_roles.py copied there
    except FileNotFoundError as e:
        sys.exit(f"classify.py: {e}")
    text = args.input.read_text(encoding="utf-8") if args.input else sys.stdin.read()
    # "\n" ends a sentence's line, not U+2028 and the other breaks str.splitlines knows (files.read_lines)
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    inputs = [tuple(p.strip() for p in line.split("\t")) if "\t" in line else line for line in lines]
    singles = [i for i, x in enumerate(inputs, start=1) if isinstance(x, str)]
    if singles and (args.data / "input1").is_dir():  # fine-tuned on pairs: a line without its tab is a slip
        print(f"classify.py: warning: {len(singles)} of {len(lines)} lines have no tab (the first: line {singles[0]}), "
              f"but the model was fine-tuned on sentence pairs ({args.data / 'input1'}/): each is read as one text, "
              "not as premise<TAB>hypothesis", file=sys.stderr)
    space = " " if (leading_space if args.prefix_space is None else args.prefix_space) else ""
    labels = predict_sentences(model, task, head, inputs,
                               lambda s: " ".join(codec.symbols(space + s)), args.batch_size)
    for label, line in zip(labels, lines):
        print(f"{label}\t{line}")
    return labels


if __name__ == "__main__":
    from bart_ext.cli import run

    run(main)
