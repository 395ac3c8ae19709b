#!/usr/bin/env python
"""Generation speed with the XSum preset (beam 6, batch 32): bart_ext against fairseq, side by side.

Runs ``fairseq-generate`` on the same checkpoint, inputs and settings (``<s>`` forced first in
every run), alternating the configurations round by round, and reads fairseq's own
"Translated N sentences ... (X sentences/s)" figure, which times generation only.
Three things differ between configurations: the generator (``BART_EXT_GENERATOR``, see
bart_ext/adapters/beam_generator.py: fewer passes over the vocabulary per step), the n-gram blocking (``BART_EXT_NGRAM_BLOCK``, see
bart_ext/adapters/generation.py) and whether encoder states and cross-attention keys are kept
once per sentence under beam search (``BART_EXT_BEAM_SHARED``, see
bart_ext/adapters/fairseq_model.py):

    bart_ext          our generator (fewer full-vocabulary passes per step), our blocking,
                      states kept once per sentence
    bart_ext_fs_loop  fairseq's SequenceGenerator, our blocking, states once per sentence
    bart_ext_blocking fairseq's loop, our blocking only; states repeated per hypothesis and
                      reordered every step
    fairseq_loop      fairseq's loop and fairseq's blocking loop given the generated prefix (what
                      fairseq's blocking computes when it works: its CUDA kernel), states repeated
                      and reordered every step, as SequenceGenerator does: the baseline. Outputs
                      must be identical to bart_ext's.
    fairseq_stock     fairseq unchanged: on a CPU its loop sees padding and blocks nothing
                      (fairseq #5206), so its outputs differ; timed for reference
    hf, hf_fs         the checkpoint exported with ``scripts/convert.py to-hf --preset xsum`` and decoded
                      by transformers' ``generate`` with its generation_config.json (right-padded batches),
                      and through ``bart_ext.convert.hf_generate.generate_like_fairseq`` (fairseq's
                      scores for the forced ``<s>`` and the ``</s>`` forced at the length limit)
    ct2_fp32, ct2_int8
                      the checkpoint exported with ``scripts/convert.py to-ct2`` (fp32, and int8
                      weights) and decoded by CTranslate2 with the same preset, sources shaped as
                      bart_summarization shapes them and the target prefix ``<s>``; timed around
                      ``translate_batch`` (generation only, like fairseq's figure), with the share of
                      documents whose output is identical to bart_ext's
    ct2_fp32_fs, ct2_int8_fs
                      the same folders through ``bart_ext.convert.ct2.translate_like_fairseq``:
                      fairseq's forced ``</s>`` at the length limit and its final choice by plain
                      log-probabilities (one ``score_batch`` pass over the finished hypotheses)

After the timed rounds, untimed passes: ours and CTranslate2 without the two constraints that
CTranslate2 scores differently (n-gram blocking, minimum length), and ours with CTranslate2's rule
for them (``BART_EXT_CONSTRAINT_SCORES=renormalized``), each compared with CTranslate2's outputs.

Usage: python scripts/bench_generate.py [--path runs/demo/finetune/checkpoint_best.pt] [--rounds 3]
(`make demo` writes the default checkpoint; without it, this runs the demo's small pipeline first.)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bart_ext.summarization_data import preset_args, read_generate_output  # noqa: E402

# name -> (BART_EXT_GENERATOR, BART_EXT_NGRAM_BLOCK, BART_EXT_BEAM_SHARED)
MODES = {
    "bart_ext": ("bart_ext", "bart_ext", "1"),
    "bart_ext_fs_loop": ("fairseq", "bart_ext", "1"),
    "bart_ext_blocking": ("fairseq", "bart_ext", "0"),
    "fairseq_loop": ("fairseq", "fairseq_loop", "0"),
    "fairseq_stock": ("fairseq", "fairseq_stock", "0"),
}


# The preset without the two constraints that CTranslate2 applies before its softmax (renormalising
# what is left) and fairseq after it: repeated n-gram blocking and the minimum length.
UNCONSTRAINED = {"no_repeat_ngram_size": 0, "min_len": 1}


def run_once(mode: str, data: Path, ckpt: Path, subset: str, batch: int, out: Path,
             unconstrained: bool = False, constraint_scores: str = "fairseq") -> tuple[float, dict]:
    extra = [f"--{k.replace('_', '-')}={v}" for k, v in UNCONSTRAINED.items()] if unconstrained else []
    cmd = [sys.executable, "-m", "fairseq_cli.generate", str(data), "--user-dir", str(ROOT / "user_dir"),
           "--task", "bart_summarization",
           "--path", str(ckpt), "--gen-subset", subset, "--batch-size", str(batch), "--cpu",
           "--required-batch-size-multiple", "1", "--results-path", str(out), *preset_args("xsum"), *extra]
    generator, blocking, shared = MODES[mode]
    env = dict(os.environ, BART_EXT_GENERATOR=generator, BART_EXT_NGRAM_BLOCK=blocking, BART_EXT_BEAM_SHARED=shared,
               BART_EXT_CONSTRAINT_SCORES=constraint_scores)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"fairseq-generate ({mode}) failed:\n{proc.stderr[-3000:]}")
    text = (out / f"generate-{subset}.txt").read_text()
    m = re.search(r"Translated ([\d,]+) sentences .*?\(([\d.]+) sentences/s", proc.stderr + proc.stdout + text)
    if not m:
        raise SystemExit(f"no 'Translated ... sentences/s' line from fairseq-generate ({mode})")
    rows = read_generate_output(out / f"generate-{subset}.txt")
    return float(m.group(2)), {i: r.get("H", []) for i, r in rows.items()}


def ct2_setup(ckpt: Path, data: Path, tmp: Path) -> dict:
    """CTranslate2 folders (fp32, int8) of ``ckpt``."""
    from bart_ext.convert.commands import to_ct2

    folders = {}
    for name, quantization in (("ct2_fp32", None), ("ct2_int8", "int8")):
        folders[name] = to_ct2(ckpt, tmp / name, quantization, data=data)
        folders[name + "_fs"] = folders[name]  # the same folder through translate_like_fairseq
    return folders


def task_sources(ckpt: Path, data: Path, subset: str) -> list[list[int]]:
    """The ``subset`` sources as bart_summarization feeds them to ``ckpt``."""
    from bart_ext.adapters import import_plugin

    import_plugin()
    from fairseq import checkpoint_utils
    from fairseq.data.indexed_dataset import MMapIndexedDataset
    cfg = checkpoint_utils.load_checkpoint_to_cpu(str(ckpt))["cfg"].task
    sources = []
    ds = MMapIndexedDataset(str(next(data.glob(f"{subset}.*-*.source.idx")))[: -len(".idx")])
    for i in range(len(ds)):
        ids = ds[i].tolist()
        if cfg.truncate_source:  # as BartSummarizationTaskBase.load_dataset shapes the sources
            ids = ids[:-1][: int(cfg.max_source_positions) - 1 - int(cfg.prepend_bos)] + [2]
        sources.append(([0] if cfg.prepend_bos else []) + ids)
    return sources


def run_hf(folder: Path, sources: list[list[int]], symbols: list[str], batch: int,
           like_fairseq: bool = False) -> tuple[float, dict]:
    """sentences/s of transformers' ``generate`` with the exported XSum generation config (right-padded
    batches), or with ``like_fairseq`` through ``bart_ext.convert.hf_generate.generate_like_fairseq``,
    and its outputs as dictionary symbols."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from bart_ext.convert.hf_generate import generate_like_fairseq

    model = AutoModelForSeq2SeqLM.from_pretrained(str(folder)).eval()
    hyps = []
    t0 = time.perf_counter()
    for start in range(0, len(sources), batch):
        rows = sources[start:start + batch]
        ids = torch.full((len(rows), max(map(len, rows))), 1)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        inputs = dict(input_ids=ids, attention_mask=ids.ne(1).long())
        with torch.no_grad():
            out = generate_like_fairseq(model, **inputs) if like_fairseq else model.generate(**inputs)
        hyps += [[t for t in row[1:] if t != 1] for row in out.tolist()]  # after the start </s>, no padding
    seconds = time.perf_counter() - t0
    return len(sources) / seconds, {i: [symbols[t] for t in h] for i, h in enumerate(hyps)}


def run_ct2(folder: Path, sources: list[list[int]], symbols: list[str], batch: int,
            unconstrained: bool = False, like_fairseq: bool = False) -> tuple[float, dict]:
    """sentences/s of CTranslate2 with the XSum preset, and its outputs as dictionary symbols:
    ``translate_batch`` as a user calls it, or with ``like_fairseq`` through
    ``bart_ext.convert.ct2.translate_like_fairseq`` (fairseq's length limit and final scores)."""
    import ctranslate2

    from bart_ext.convert.ct2 import translate_like_fairseq
    from bart_ext.summarization_data import load_preset

    vocab = json.loads((folder / "shared_vocabulary.json").read_text(encoding="utf-8"))
    index = {tok: i for i, tok in enumerate(vocab)}
    p = {**load_preset("xsum"), **(UNCONSTRAINED if unconstrained else {})}
    translator = ctranslate2.Translator(str(folder), device="cpu", intra_threads=torch_threads())
    tokens = [[vocab[t] for t in src] for src in sources]
    t0 = time.perf_counter()
    if like_fairseq:
        hyps = translate_like_fairseq(translator, tokens, beam=p["beam"], max_len=p["max_len_b"], lenpen=p["lenpen"],
                                      min_len=p["min_len"], no_repeat_ngram_size=p["no_repeat_ngram_size"],
                                      max_batch_size=batch)
    else:
        hyps = [r.hypotheses[0] for r in translator.translate_batch(
            tokens, target_prefix=[["<s>"]] * len(tokens), max_batch_size=batch, beam_size=p["beam"],
            length_penalty=p["lenpen"], max_decoding_length=p["max_len_b"], min_decoding_length=p["min_len"],
            no_repeat_ngram_size=p["no_repeat_ngram_size"])]
    seconds = time.perf_counter() - t0
    return len(tokens) / seconds, {i: [symbols[index[t]] for t in h] for i, h in enumerate(hyps)}


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", type=Path, default=ROOT / "runs" / "demo" / "finetune" / "checkpoint_best.pt")
    ap.add_argument("--data", type=Path, default=None,
                    help="binarized summarization data (default: the checkpoint's own task.data, whose dictionary it has)")
    ap.add_argument("--subset", default="test")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    if not args.path.exists():
        print(f"{args.path} not found: running the demo's small pipeline for a checkpoint", flush=True)
        run = ROOT / "runs" / "bench_generate"
        subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--small", "--run-dir", str(run)],
                       check=True, stdout=subprocess.DEVNULL)
        args.path = run / "finetune" / "checkpoint_best.pt"
    if args.data is None:
        import user_dir  # noqa: F401  (fairseq's checkpoint loader, patched for torch >= 2.6)
        from bart_ext.convert.commands import load_fairseq_checkpoint

        args.data = Path(str(load_fairseq_checkpoint(args.path)[1].task.data).split(":")[0])

    speed: dict[str, list[float]] = {m: [] for m in MODES}
    outputs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ct2, hf = {}, {}
        try:
            import transformers  # noqa: F401
        except ImportError:
            print("transformers not installed: no transformers or CTranslate2 rows", flush=True)
        else:
            from fairseq.data import Dictionary

            from bart_ext.convert.commands import to_hf
            from bart_ext.summarization_data import load_preset

            sources = task_sources(args.path, args.data, args.subset)
            symbols = Dictionary.load(str(args.data / "dict.source.txt")).symbols + ["<mask>"]
            folder = to_hf(args.path, Path(tmp) / "hf", data=args.data, preset=load_preset("xsum"))
            hf = {"hf": folder, "hf_fs": folder}
            try:
                import ctranslate2  # noqa: F401
            except ImportError:
                print("ctranslate2 not installed: no CTranslate2 rows", flush=True)
            else:
                ct2 = ct2_setup(args.path, args.data, Path(tmp))
            speed.update({m: [] for m in [*hf, *ct2]})
        for r in range(args.rounds):
            for mode in [*MODES, *hf, *ct2]:
                if mode in hf:
                    s, hyps = run_hf(hf[mode], sources, symbols, args.batch_size, like_fairseq=mode.endswith("_fs"))
                elif mode in ct2:
                    s, hyps = run_ct2(ct2[mode], sources, symbols, args.batch_size, like_fairseq=mode.endswith("_fs"))
                else:
                    s, hyps = run_once(mode, args.data, args.path, args.subset, args.batch_size, Path(tmp) / mode)
                hyps = {i: [t for t in h if t not in ("<s>", "</s>")] for i, h in hyps.items()}
                speed[mode].append(s)
                if outputs.setdefault(mode, hyps) != hyps:
                    raise SystemExit(f"{mode}: outputs changed between rounds")
                print(f"round {r + 1}: {mode:<17} {s:6.2f} sentences/s", flush=True)
        unconstrained = {}
        if ct2:  # one untimed pass each: how much of the difference the two constraints explain
            _, unconstrained["bart_ext"] = run_once("bart_ext", args.data, args.path, args.subset, args.batch_size,
                                                    Path(tmp) / "unconstrained", unconstrained=True)
            for mode in ("ct2_fp32", "ct2_fp32_fs"):
                _, unconstrained[mode] = run_ct2(ct2[mode], sources, symbols, args.batch_size, True,
                                                 like_fairseq=mode.endswith("_fs"))
            # and ours with CTranslate2's rule for the two constraints (renormalised log-probabilities)
            _, unconstrained["bart_ext_renormalized"] = run_once(
                "bart_ext", args.data, args.path, args.subset, args.batch_size, Path(tmp) / "renormalized",
                constraint_scores="renormalized")
            unconstrained = {m: {i: [t for t in h if t not in ("<s>", "</s>")] for i, h in o.items()}
                             for m, o in unconstrained.items()}
    med = {m: statistics.median(v) for m, v in speed.items()}
    same = {m: outputs[m] == outputs["fairseq_loop"] for m in MODES if m != "fairseq_stock"}
    differ = sum(outputs["bart_ext"][i] != outputs["fairseq_stock"].get(i) for i in outputs["bart_ext"])
    n = len(outputs["bart_ext"])
    print(f"\nXSum preset (beam 6, lenpen 1.0, max_len_b 60, min_len 10, no_repeat_ngram_size 3), batch "
          f"{args.batch_size}, {n} {args.subset} documents, {args.path}; medians of {args.rounds} rounds:")
    for mode in speed:
        print(f"  {mode:<17} {med[mode]:6.2f} sentences/s   ({', '.join(f'{v:.2f}' for v in speed[mode])})")
    for mode in ("bart_ext", "bart_ext_fs_loop", "bart_ext_blocking"):
        per_round = statistics.median(a / b for a, b in zip(speed[mode], speed["fairseq_loop"]))
        print(f"  {mode + ' / fairseq_loop':<33} = {med[mode] / med['fairseq_loop']:.2f}x   "
              f"(median of the rounds' ratios {per_round:.2f}x)   outputs identical: {same[mode]}")
    print(f"  {'bart_ext / fairseq_stock':<33} = {med['bart_ext'] / med['fairseq_stock']:.2f}x   "
          f"outputs differ on {differ}/{n} documents (stock blocks nothing on a CPU)")
    for mode in [*hf, *ct2]:
        ident = sum(outputs[mode].get(i) == h for i, h in outputs["bart_ext"].items())
        print(f"  {mode + ' / bart_ext':<33} = {med[mode] / med['bart_ext']:.2f}x   "
              f"outputs identical to bart_ext's on {ident}/{n} documents ({100 * ident / n:.0f}%)")
    for mode in ("ct2_fp32", "ct2_fp32_fs") if unconstrained else ():
        ident = sum(unconstrained[mode].get(i) == h for i, h in unconstrained["bart_ext"].items())
        print(f"  without n-gram blocking and minimum length (no_repeat_ngram_size 0, min_len 1), {mode} is "
              f"identical to bart_ext on {ident}/{n} documents ({100 * ident / n:.0f}%)")
    renormalized = {}
    for mode in ("ct2_fp32", "ct2_fp32_fs") if unconstrained else ():
        ours = unconstrained["bart_ext_renormalized"]
        renormalized[mode] = sum(outputs[mode].get(i) == h for i, h in ours.items()) / n
        print(f"  with CTranslate2's scores for the two constraints in ours (BART_EXT_CONSTRAINT_SCORES=renormalized), "
              f"{mode} is identical to bart_ext on {round(renormalized[mode] * n)}/{n} documents "
              f"({100 * renormalized[mode]:.0f}%)")
    if not all(same.values()):
        raise SystemExit("outputs differ from fairseq_loop's: " + ", ".join(m for m, ok in same.items() if not ok))
    return {"median": med, "identical": all(same.values()),
            "ct2_identical": {m: sum(outputs[m].get(i) == h for i, h in outputs["bart_ext"].items()) / n for m in ct2},
            "hf_identical": {m: sum(outputs[m].get(i) == h for i, h in outputs["bart_ext"].items()) / n for m in hf},
            "ct2_identical_renormalized": renormalized}


if __name__ == "__main__":
    main()
