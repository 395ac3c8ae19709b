#!/usr/bin/env python
"""fairseq-generate with a named decoding preset, then the summaries as text and, with --rouge, their ROUGE.

Presets (configs/generate/*.yaml):
    xsum     beam 6, lenpen 1.0, max_len_b 60, min_len 10, no_repeat_ngram_size 3
    cnn_dm   beam 4, lenpen 2.0, max_len_b 140, min_len 55, no_repeat_ngram_size 3

Runs ``fairseq-generate DATA --task bart_summarization`` (which forces <s> as the first
token, as fairseq's BART hub interface does); anything after ``--`` goes to fairseq-generate
unchanged and overrides the preset. Writes into --results-path:

    generate-SUBSET.txt   fairseq-generate's own output (BPE ids)
    SUBSET.hyp, .ref      the hypotheses and references as text, one per line, in data order
    SUBSET.rouge.json     with --rouge

Usage: python scripts/generate.py --preset xsum DATA --path CKPT [--gen-subset test] [--rouge] [-- --cpu ...]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bart_ext.cli import check_at_least, run_child  # noqa: E402
from bart_ext.summarization_data import preset_args, read_generate_output  # noqa: E402


def decode_outputs(gen_file: Path, data: Path) -> tuple[list[str], list[str]]:
    """Hypotheses and references of ``gen_file`` as text, in sample id (data) order."""
    from bart_ext.bpe import FolderCodec

    codec = FolderCodec(data)  # GPT-2 BPE, or the sentencepiece model prepare_summarization.py copied there
    rows = read_generate_output(gen_file)
    if not rows:
        raise SystemExit(f"{gen_file} holds no generated samples")
    hyps, refs = [], []
    for idx in sorted(rows):
        hyps.append(codec.text(rows[idx].get("H", [])))
        refs.append(codec.text(rows[idx].get("T", [])))
    return hyps, refs


def sample_count(data: Path, subset: str) -> int | None:
    """Documents in ``data``'s ``subset`` (from the binarized source index), None when unknown."""
    idx = sorted(data.glob(f"{subset}.*-*.source.idx")) or sorted(data.glob(f"{subset}.*.idx"))
    if not idx:
        return None
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    return len(MMapIndexedDataset(str(idx[0])[: -len(".idx")]))


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="scripts/prepare_summarization.py output (OUT/bin)")
    ap.add_argument("--preset", required=True, help="xsum, cnn_dm (configs/generate/NAME.yaml)")
    ap.add_argument("--path", type=Path, required=True, help="the fine-tuned checkpoint")
    ap.add_argument("--gen-subset", default="test")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--results-path", type=Path, help="default: next to the checkpoint, generate-PRESET/")
    ap.add_argument("--rouge", action="store_true", help="score the hypotheses against the references")
    ap.add_argument("--quiet", action="store_true", help="print only errors and the summary line")
    ap.add_argument("--threads", type=int, help="CPU threads of fairseq-generate (OMP_NUM_THREADS, "
                    "MKL_NUM_THREADS); default: as the environment sets them")
    args = ap.parse_args(argv)
    check_at_least(ap, args, batch_size=1, threads=1)

    if not args.path.exists():
        raise SystemExit(f"{args.path} not found")
    if args.rouge and "--score-reference" in extra:
        raise SystemExit("--rouge with --score-reference: fairseq-generate then writes each reference as its "
                         "hypothesis (to report the model's score of it), so ROUGE would be 100; score the "
                         "references without --rouge")
    if not (args.data / "dict.source.txt").is_file():
        raise SystemExit(f"{args.data / 'dict.source.txt'} not found: DATA must be a fairseq-preprocess folder "
                         "of source/target pairs (scripts/prepare_summarization.py writes OUT/bin)")
    try:
        preset = preset_args(args.preset)
    except ValueError as err:  # an unknown preset: checked before anything is written
        raise SystemExit(str(err)) from None
    out = args.results_path or args.path.parent / f"generate-{args.preset}"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "fairseq_cli.generate", str(args.data), "--user-dir", str(ROOT / "user_dir"), "--task", "bart_summarization",
           "--path", str(args.path), "--gen-subset", args.gen_subset, "--batch-size", str(args.batch_size),
           "--results-path", str(out), "--required-batch-size-multiple", "1",  # fairseq's default 8 drops a short
           *preset, *extra]                                # last batch from the output
    print("+ fairseq-generate " + " ".join(cmd[3:]), flush=True)
    t0 = time.time()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    proc = run_child(cmd, env=env, capture_output=args.quiet, text=True)  # the demo runs two at once, in threads
    if proc.returncode != 0:
        if args.quiet:
            sys.stderr.write(proc.stderr[-5000:])
        raise SystemExit(f"fairseq-generate failed (exit {proc.returncode})")
    gen_file = out / f"generate-{args.gen_subset}.txt"
    hyps, refs = decode_outputs(gen_file, args.data)
    expected = sample_count(args.data, args.gen_subset)
    if expected is not None and len(hyps) != expected:
        raise SystemExit(f"{gen_file}: {len(hyps)} summaries for {expected} documents in {args.gen_subset} "
                         "(too long inputs are skipped with --skip-invalid-size-inputs-valid-test; see the log)")
    (out / f"{args.gen_subset}.hyp").write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    (out / f"{args.gen_subset}.ref").write_text("".join(r + "\n" for r in refs), encoding="utf-8")
    summary = [ln for ln in gen_file.read_text().splitlines() if ln.startswith("Generate")]
    print(f"{len(hyps)} summaries in {time.time() - t0:.0f}s -> {out / (args.gen_subset + '.hyp')}"
          + (f"\n{summary[-1]}" if summary else ""), flush=True)
    result = {"out": out, "hyps": hyps, "refs": refs}
    if args.rouge:
        from scripts.rouge import main as rouge_main

        result["rouge"] = rouge_main([str(out / f"{args.gen_subset}.hyp"), str(out / f"{args.gen_subset}.ref"),
                                      "--json", str(out / f"{args.gen_subset}.rouge.json")])
    return result


if __name__ == "__main__":
    from bart_ext.cli import run

    run(main)
