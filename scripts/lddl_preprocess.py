#!/usr/bin/env python
"""Pretraining text -> LDDL parquet shards that `fairseq-train OUT --task bart_denoising` reads.

Input: LDDL's corpus form, folders of .txt files with one document per line
(--corpus, and --valid-corpus for a validation split), or --aclsum to build that
form from the prepared default data (data/aclsum/raw: one paper per line).

Output (OUT):
    train/shard-*.parquet, train/.num_samples.json, train/stats.json
    valid/...                  (when a validation corpus is given)
    dict.txt                   every GPT-2 BPE id, --dict's copy, or the sentencepiece pieces
    encoder.json, vocab.bpe    the BPE files the loader tokenizes with

Engines: bart_ext (default: chunks counted in BPE tokens, sentence boundaries
kept) or lddl (NVIDIA's preprocess_bart_pretrain + balance_dask_output
unchanged). Both on dask: --workers N local processes, --scheduler ADDRESS, or
--mpi (under mpirun, with dask-mpi).

Example:
    python scripts/lddl_preprocess.py --aclsum --out data/lddl --target-seq-length 512 --num-shards 8
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bart_ext import lddl_prep  # noqa: E402
from bart_ext.cli import check_at_least  # noqa: E402
from bart_ext.bpe import GPT2Encoder, SentencePieceEncoder, gpt2_dictionary_lines  # noqa: E402


def aclsum_corpus(raw: Path, out: Path) -> dict[str, Path]:
    """data/aclsum/raw/{train,valid}.txt (a sentence per line, blank line between papers) -> one paper per line."""
    folders = {}
    for split in ("train", "valid"):
        src = raw / f"{split}.txt"
        if not src.exists():
            raise FileNotFoundError(f"{src} not found: run `make data` (scripts/prepare_data.py) first")
        papers, current = [], []
        for line in src.read_text(encoding="utf-8").splitlines():
            if line.strip():
                current.append(line.strip())
            elif current:
                papers.append(" ".join(current))
                current = []
        if current:
            papers.append(" ".join(current))
        folders[split] = out / split
        folders[split].mkdir(parents=True, exist_ok=True)
        (folders[split] / "aclsum.txt").write_text("\n".join(papers) + "\n", encoding="utf-8")
    return folders


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--corpus", type=Path, help="folder of .txt files, one document per line")
    src.add_argument("--aclsum", action="store_true", help="the default data (data/aclsum/raw) as the corpus")
    ap.add_argument("--valid-corpus", type=Path, help="validation documents, same form")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--engine", choices=["bart_ext", "lddl"], default="bart_ext")
    ap.add_argument("--target-seq-length", type=int, default=512, help="tokens per sample, <s> and </s> included")
    ap.add_argument("--num-shards", type=int, default=8)
    ap.add_argument("--valid-shards", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2, help="local dask worker processes")
    ap.add_argument("--scheduler", help="address of an existing dask scheduler")
    ap.add_argument("--mpi", action="store_true", help="run dask over MPI (dask-mpi; launch with mpirun)")
    ap.add_argument("--gpt2", type=Path, default=Path("data/aclsum/gpt2"), help="folder with encoder.json, vocab.bpe")
    ap.add_argument("--dict", type=Path, help="GPT-2: this dict.txt instead of every GPT-2 id (e.g. a corpus' types)")
    ap.add_argument("--sentencepiece-model", type=Path, help="tokenize with sentencepiece instead of GPT-2 BPE")
    ap.add_argument("--nltk-data", type=Path, default=Path("data/nltk_data"), help="punkt tables (lddl engine)")
    args = ap.parse_args(argv)
    # a sample holds <s>, </s> and at least one token; a local dask cluster of 0 workers waited forever
    check_at_least(ap, args, target_seq_length=3, num_shards=1, valid_shards=1, workers=1)
    if not logging.getLogger().handlers:  # a caller's logging set-up wins
        logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    logging.getLogger("distributed").setLevel(logging.WARNING)

    # First: under MPI (dask-mpi) only one rank returns from here to run the rest.
    client = None if args.engine == "lddl" else lddl_prep.dask_client(args.workers, args.scheduler, args.mpi)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.aclsum:
        corpora = aclsum_corpus(Path("data/aclsum/raw"), args.out / "corpus")
    else:
        corpora = {"train": args.corpus} | ({"valid": args.valid_corpus} if args.valid_corpus else {})
    if args.sentencepiece_model:
        encoder = SentencePieceEncoder(args.sentencepiece_model)
        sp = encoder._processor()
        pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())
                  if not (sp.is_control(i) or sp.is_unknown(i))]
        (args.out / "dict.txt").write_text("".join(f"{p} 1\n" for p in pieces), encoding="utf-8")
        shutil.copy(args.sentencepiece_model, args.out / "sentencepiece.model")
    else:
        encoder = GPT2Encoder(args.gpt2 / "encoder.json", args.gpt2 / "vocab.bpe")
        for name in ("encoder.json", "vocab.bpe"):
            shutil.copy(args.gpt2 / name, args.out / name)
        if args.dict:  # a smaller vocabulary (e.g. the corpus' own types): ids outside it read as <unk>
            if not args.dict.exists():
                raise SystemExit(f"--dict {args.dict} not found")
            shutil.copy(args.dict, args.out / "dict.txt")
        else:
            (args.out / "dict.txt").write_text("\n".join(gpt2_dictionary_lines(args.gpt2 / "encoder.json")) + "\n")

    try:
        run_splits(args, corpora, encoder, client)
    finally:
        if client is not None:
            lddl_prep.close_client(client)
    print(f"train with: fairseq-train {args.out} --user-dir user_dir --task bart_denoising "
          f"--tokens-per-sample {args.target_seq_length}"
          + (" --word-starts sentencepiece" if args.sentencepiece_model else "") + " --batch-size N ...")


def run_splits(args, corpora: dict[str, Path], encoder, client) -> None:
    for split, corpus in corpora.items():
        out = args.out / split
        shards = args.num_shards if split == "train" else args.valid_shards
        tic = time.perf_counter()
        if args.engine == "lddl":
            lddl_prep.preprocess_with_lddl(corpus, out, args.nltk_data, args.target_seq_length, shards, args.workers)
            print(f"{split}: lddl -> {out} in {time.perf_counter() - tic:.1f} s", flush=True)
            continue
        stats = lddl_prep.preprocess(corpus, out, encoder, args.target_seq_length, shards, client=client)
        mb = stats.input_bytes / 2**20
        print(f"{split}: {stats.documents} documents ({stats.empty_documents} empty dropped, {stats.bad_utf8_lines} "
              f"with invalid UTF-8) -> {stats.samples} samples, {stats.tokens} tokens, {shards} shards in {out}; "
              f"{mb:.1f} MB in {stats.seconds:.1f} s ({mb / stats.seconds:.2f} MB/s)", flush=True)


if __name__ == "__main__":
    from bart_ext.cli import run

    run(main)
