#!/usr/bin/env python
"""The main job end to end on the embedded default data (aclsum), on a CPU:

    1. LDDL preprocessing of the pretraining text (scripts/lddl_preprocess.py)
    2. bart_tiny_preln pretraining: --task bart_denoising, --optimizer nvlamb (configs/pretrain/tiny.yaml)
    3. fine-tuning on aclsum summarization from that checkpoint (configs/finetune/aclsum.yaml)
    4. fairseq-generate on the test papers with the XSum preset (scripts/generate.py --preset xsum)
    5. ROUGE-1/2/L/Lsum with bootstrap intervals, and the loss curves as a PNG

The test papers are held out of the pretraining text (scripts/prepare_data.py). A
model this small, trained for minutes, writes poor summaries: the demo shows the
pipeline working, not a result. Everything goes under --run-dir (default runs/demo).

Usage: python scripts/demo.py [--pretrain-updates 300] [--finetune-updates 300] [--run-dir runs/demo] [--small]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bart_ext.curves import parse_record, plot, read_log  # noqa: E402

STARTED = time.time()


def say(msg: str) -> None:
    print(f"\n=== {msg}  [{time.time() - STARTED:.0f}s]", flush=True)


def stream(cmd: list[str], log: Path, show) -> int:
    """Run ``cmd``; every output line goes to ``log``, and ``show(line)`` decides what is printed."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            shown = show(line)
            if shown:
                print(shown, flush=True)
        return proc.wait()


def train_progress(total: int):
    t0 = time.time()

    def show(line: str) -> str | None:
        rec = parse_record(line)
        if rec is None:
            return line.rstrip() if re.search(r"Error|error:|Traceback", line) else None
        tag, r = rec
        if tag == "valid":
            return f"  valid  update {r['valid_num_updates']:>5}  loss {r['valid_loss']}"
        if tag == "train_inner":
            n = int(r["num_updates"])
            return (f"  train  update {n:>5}/{total} ({100 * n / total:3.0f}%)  loss {r['loss']}  "
                    f"{r['wps']} tokens/s  {time.time() - t0:5.0f}s")
        return None

    return show


def show_fill_mask(checkpoint: Path, papers: Path) -> None:
    """What the pretrained model puts into masked spans of a sentence it never read (the Python API,
    ``bart_ext.load(...).fill_mask``)."""
    import bart_ext
    from bart_ext.classify.roles import detokenize

    model = bart_ext.load(checkpoint)
    logging.getLogger("bart_ext.adapters.beam_generator").setLevel(logging.WARNING)  # its fallback note
    sentence = detokenize(papers.read_text(encoding="utf-8").splitlines()[0].split(" . ")[0]) + "."
    words = sentence.split()
    cut = max(1, len(words) // 2 - 1)
    masked = " ".join(words[:cut] + ["<mask>"] + words[cut + 2:])
    print(f"  a held-out test paper's sentence, two words masked (bart_ext.load(...).fill_mask):\n"
          f"    original: {sentence}\n    input   : {masked}")
    for text, score in model.fill_mask([masked], topk=3)[0]:
        print(f"    {score:7.3f}  {text}")


def hydra_train(config_dir: str, name: str, overrides: list[str], log: Path, total: int) -> None:
    cmd = [sys.executable, "-m", "fairseq_cli.hydra_train", "--config-dir", str(ROOT / "configs" / config_dir), "--config-name", name,
           f"common.user_dir={ROOT / 'user_dir'}", *overrides]
    rc = stream(cmd, log, train_progress(total))
    if rc != 0:
        sys.exit(f"training failed (exit {rc}); full log: {log}")
    curves = read_log(log)
    if len(curves.valid) >= 2:
        (u0, l0), (u1, l1) = curves.valid[0], curves.valid[-1]
        print(f"  validation loss {l0:.3f} at update {u0} -> {l1:.3f} at update {u1} "
              f"({'falling' if l1 < l0 else 'NOT falling'})")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain-updates", type=int, default=300)
    ap.add_argument("--finetune-updates", type=int, default=300)
    ap.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "demo")
    ap.add_argument("--data", type=Path, default=ROOT / "data", help="prepared by `make data`")
    ap.add_argument("--small", action="store_true", help="CI: 20 pretraining and 40 fine-tuning updates")
    ap.add_argument("--examples", type=int, default=2, help="summaries to print")
    args = ap.parse_args(argv)
    if args.small:
        args.pretrain_updates, args.finetune_updates = 20, 40

    run = args.run_dir.resolve()
    if run.exists():
        shutil.rmtree(run)  # a demo starts from scratch; real runs resume instead
    run.mkdir(parents=True)
    data = args.data.resolve()
    pretrain_dict, summ = data / "aclsum" / "bin" / "dict.txt", data / "aclsum_summ" / "bin"
    for need in (pretrain_dict, data / "aclsum" / "raw" / "train.txt", summ / "dict.source.txt"):
        if not need.exists():
            sys.exit(f"{need} is missing: run `make data` first")

    say("1/5 LDDL preprocessing: aclsum paper text -> balanced parquet shards of <= 256 BPE tokens")
    lddl = run / "lddl"
    # The corpus' own 18.6k BPE types as the vocabulary (not all 50k GPT-2 ids): a 36-wide model's
    # output softmax is most of its cost on a CPU.
    rc = stream([sys.executable, "scripts/lddl_preprocess.py", "--aclsum", "--out", str(lddl),
                 "--target-seq-length", "256", "--num-shards", "4", "--workers", "2", "--dict", str(pretrain_dict)],
                run / "lddl.log", lambda line: "  " + line.rstrip() if re.match(r"(train|valid):", line) else None)
    if rc != 0:
        sys.exit(f"LDDL preprocessing failed (exit {rc}); log: {run / 'lddl.log'}")

    say(f"2/5 pretraining bart_tiny_preln (bart_denoising, nvlamb) for {args.pretrain_updates} updates")
    pre = run / "pretrain"
    hydra_train("pretrain", "tiny", [
        f"task.data={lddl}", "task.tokens_per_sample=256", "dataset.batch_size=8", "dataset.max_tokens=null",
        f"checkpoint.save_dir={pre}", f"optimization.max_update={args.pretrain_updates}",
        f"lr_scheduler.total_num_update={args.pretrain_updates}",
        f"lr_scheduler.warmup_updates={max(1, args.pretrain_updates // 10)}",
        f"dataset.validate_interval_updates={max(10, args.pretrain_updates // 3)}", f"hydra.run.dir={pre / 'hydra'}",
    ], run / "pretrain.log", args.pretrain_updates)

    show_fill_mask(pre / "checkpoint_last.pt", data / "aclsum_summ" / "raw" / "test.source")

    say(f"3/5 fine-tuning on aclsum summarization (100 papers) for {args.finetune_updates} updates")
    ft = run / "finetune"
    hydra_train("finetune", "aclsum", [
        f"task.data={summ}", f"checkpoint.save_dir={ft}", f"checkpoint.restore_file={pre / 'checkpoint_last.pt'}",
        f"optimization.max_update={args.finetune_updates}", f"lr_scheduler.total_num_update={args.finetune_updates}",
        f"lr_scheduler.warmup_updates={max(1, args.finetune_updates // 10)}",
        f"dataset.validate_interval_updates={max(10, args.finetune_updates // 6)}", f"hydra.run.dir={ft / 'hydra'}",
    ], run / "finetune.log", args.finetune_updates)

    say("4/5 generating summaries of the 100 test papers: XSum preset (beam 6, no repeated trigrams), <s> forced")
    from scripts.generate import main as generate

    gen = generate([str(summ), "--preset", "xsum", "--path", str(ft / "checkpoint_best.pt"), "--gen-subset", "test",
                    "--results-path", str(run / "generate"), "--quiet", "--rouge", "--", "--cpu"])
    for hyp, ref in list(zip(gen["hyps"], gen["refs"]))[: args.examples]:
        print(f"  reference: {ref[:200]}\n  model    : {hyp[:200]}\n")

    say("5/5 loss curves")
    png = plot([("pretraining: bart_denoising + nvlamb", {"bart_tiny_preln": read_log(run / "pretrain.log")}),
                ("fine-tuning: aclsum summarization", {"bart_tiny_preln": read_log(run / "finetune.log")})],
               run / "loss_curves.png", "bart_ext demo (aclsum, CPU)")
    print(f"  {png}")

    say("where everything went")
    rows = [("run directory", run), ("LDDL shards", lddl), ("pretrained checkpoint", pre / "checkpoint_last.pt"),
            ("fine-tuned checkpoint", ft / "checkpoint_best.pt"), ("logs", run / "{pretrain,finetune}.log"),
            ("summaries (text)", run / "generate" / "test.hyp"), ("references", run / "generate" / "test.ref"),
            ("ROUGE (json)", run / "generate" / "test.rouge.json"), ("loss curves", png)]
    for what, path in rows:
        print(f"  {what:<22} {path}")
    print(f"  total time {time.time() - STARTED:.0f}s")
    summary = {"rouge": gen["rouge"], "seconds": time.time() - STARTED}
    (run / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
