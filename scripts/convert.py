#!/usr/bin/env python
"""Models in and out of bart_ext (core: ``bart_ext/convert/``).

    convert.py from-hf HF_DIR OUT_DIR [--head NAME]
        a transformers BART (Post-LN) or mBART-layout (Pre-LN) folder -> OUT_DIR/checkpoint.pt
        (--arch bart_*_preln, --post-ln for BART), dict.txt, encoder.json, vocab.bpe: fine-tune with
        --restore-file / --finetune-from-model OUT_DIR/checkpoint.pt, the data binarized with OUT_DIR's
        dict.txt and GPT-2 files. A *ForSequenceClassification folder (bart-large-mnli's kind) -> a
        --task sentence_prediction checkpoint with its head (--head NAME; default
        sentence_classification_head) and labels (OUT_DIR/label/dict.txt): bart_ext.load(...).predict.
    convert.py to-hf CHECKPOINT OUT_DIR [--data DIR] [--preset xsum|cnn_dm] [--no-prefix-space]
        a bart_ext checkpoint -> a save_pretrained folder (mBART classes for Pre-LN, BART for Post-LN)
        with its tokenizer (text spaced and cut as the model's fine-tuning data was) and a
        generation_config.json that decodes as fairseq-generate (and the preset; fairseq's exact
        output: bart_ext.convert.hf_generate.generate_like_fairseq);
        a model fine-tuned with --task sentence_prediction -> *ForSequenceClassification with its head
        (--head NAME where it has several) and the label names of DATA/label/dict.txt.
    convert.py to-ct2 CHECKPOINT OUT_DIR [--quantization int8] [--data DIR] [--preset ...]
        the same, as a CTranslate2 model folder.

A model or tokenizer that cannot be represented is refused with one error naming the file and the
field, and nothing is written.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("from-hf", help="transformers folder -> fairseq checkpoint")
    p.add_argument("hf_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--head", help="name of a *ForSequenceClassification folder's head in the checkpoint "
                                  "(default: sentence_classification_head, fairseq's --classification-head-name)")
    for name, helptext in (("to-hf", "bart_ext checkpoint -> transformers folder"),
                           ("to-ct2", "bart_ext checkpoint -> CTranslate2 folder")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("checkpoint", type=Path)
        p.add_argument("out_dir", type=Path)
        p.add_argument("--data", type=Path, help="the folder with the model's dict.txt, encoder.json, vocab.bpe "
                                                   "(default: the checkpoint's task.data)")
        p.add_argument("--gpt2-encoder-json", type=Path, help="default: DATA/encoder.json")
        p.add_argument("--gpt2-vocab-bpe", type=Path, help="default: DATA/vocab.bpe")
        p.add_argument("--preset", help="decoding preset of configs/generate (xsum, cnn_dm) for generation_config.json")
        p.add_argument("--prefix-space", action=argparse.BooleanOptionalAction, default=None,
                       help="the tokenizer puts a space before a text's first word, as bart_ext's data preparation "
                            "does (default: yes, except for a checkpoint from-hf wrote and nobody trained since; "
                            "--no-prefix-space for a model fine-tuned on data binarized with fairseq's own tools)")
        if name == "to-hf":
            p.add_argument("--head", help="classification head to export as *ForSequenceClassification "
                                          "(default: the checkpoint's only head)")
        if name == "to-ct2":
            p.add_argument("--quantization", help="CTranslate2 quantization (int8, int8_float32, ...); default fp32")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")

    import user_dir  # noqa: F401  (our registries and the checkpoint-loading fixes)
    from bart_ext.adapters.fairseq_patches import UnreadableCheckpointError, UntrustedCheckpointError
    from bart_ext.convert import commands
    from bart_ext.convert.hf import ConversionError

    try:
        if args.command == "from-hf":
            out = commands.from_hf(args.hf_dir, args.out_dir, ROOT / "user_dir", head=args.head)
        else:
            from bart_ext.summarization_data import load_preset

            kwargs = dict(data=args.data, encoder_json=args.gpt2_encoder_json, vocab_bpe=args.gpt2_vocab_bpe,
                          preset=load_preset(args.preset) if args.preset else None, prefix_space=args.prefix_space)
            if args.command == "to-hf":
                out = commands.to_hf(args.checkpoint, args.out_dir, head=args.head, **kwargs)
            else:
                out = commands.to_ct2(args.checkpoint, args.out_dir, args.quantization, **kwargs)
    except (ConversionError, ValueError, FileNotFoundError, UnreadableCheckpointError, UntrustedCheckpointError) as e:
        raise SystemExit(f"convert.py {args.command}: {e}") from None
    print(f"[convert] {args.command}: wrote {out}")
    return out


if __name__ == "__main__":
    main()
