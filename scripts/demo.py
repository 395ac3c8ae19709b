#!/usr/bin/env python
"""The main job on the embedded default data: pretrain bart_tiny_preln, then generate from it.

Runs ``fairseq-hydra-train`` with ``configs/pretrain/tiny.yaml`` on the aclsum
paper bodies (prepared by ``make data``), shows progress and the loss curve,
then ``fairseq-generate`` reconstructs noised validation text from the
checkpoint. Everything goes under ``--run-dir`` (default ``runs/demo``).

Usage: python scripts/demo.py [--updates 300] [--run-dir runs/demo]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def say(msg: str) -> None:
    print(f"\n=== {msg}", flush=True)


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


def json_record(line: str, tag: str) -> dict | None:
    m = re.search(r"\]\[" + tag + r"\]\[INFO\] - (\{.*\})\s*$", line)
    return json.loads(m.group(1)) if m else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--updates", type=int, default=300)
    ap.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "demo")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "aclsum")
    ap.add_argument("--examples", type=int, default=3, help="generated examples to print")
    args = ap.parse_args()

    run = args.run_dir.resolve()
    if run.exists():
        shutil.rmtree(run)  # a demo starts from scratch; real runs resume instead
    (run / "checkpoints").mkdir(parents=True)
    bin_dir, gpt2 = args.data.resolve() / "bin", args.data.resolve() / "gpt2"
    if not (bin_dir / "dict.txt").exists():
        sys.exit(f"{bin_dir}/dict.txt is missing: run `make data` (scripts/prepare_data.py) first")

    say(f"1/2 pretraining bart_tiny_preln for {args.updates} updates (configs/pretrain/tiny.yaml)")
    train_log = run / "train.log"
    curve: list[tuple[int, float]] = []
    started = time.time()

    def show_train(line: str) -> str | None:
        rec = json_record(line, "train_inner") or json_record(line, "valid")
        if rec is None:
            return line.rstrip() if re.search(r"Error|error:|Traceback", line) else None
        if "valid_loss" in rec:
            return f"  valid  update {rec['valid_num_updates']:>5}  loss {rec['valid_loss']}"
        curve.append((int(rec["num_updates"]), float(rec["loss"])))
        pct = 100 * int(rec["num_updates"]) / args.updates
        return (f"  train  update {rec['num_updates']:>5}/{args.updates} ({pct:3.0f}%)  loss {rec['loss']}  "
                f"{rec['wps']} words/s  {time.time() - started:5.0f}s")

    rc = stream(
        ["fairseq-hydra-train", "--config-dir", str(ROOT / "configs" / "pretrain"), "--config-name", "tiny",
         f"task.data={bin_dir}", f"common.user_dir={ROOT / 'user_dir'}", f"checkpoint.save_dir={run / 'checkpoints'}",
         f"optimization.max_update={args.updates}", f"lr_scheduler.total_num_update={args.updates}",
         f"hydra.run.dir={run / 'hydra'}"],
        train_log, show_train,
    )
    if rc != 0:
        sys.exit(f"training failed (exit {rc}); full log: {train_log}")
    if len(curve) >= 2:
        print(f"  loss: {curve[0][1]:.3f} at update {curve[0][0]} -> {curve[-1][1]:.3f} at update {curve[-1][0]} "
              f"(base 2, {'falling' if curve[-1][1] < curve[0][1] else 'NOT falling'})")

    say("2/2 generating from the checkpoint: reconstruct noised validation text (beam 4)")
    ckpt = run / "checkpoints" / "checkpoint_last.pt"
    gen_out = run / "generate.txt"
    rc = stream(
        ["fairseq-generate", str(bin_dir), "--user-dir", str(ROOT / "user_dir"), "--task", "bart_denoising",
         "--path", str(ckpt), "--cpu", "--gen-subset", "valid", "--batch-size", "8", "--beam", "4",
         "--max-len-b", "60", "--tokens-per-sample", "128", "--seed", "1", "--results-path", str(run / "generate")],
        run / "generate.log", lambda line: line.rstrip() if "Error" in line or "Traceback" in line else None,
    )
    if rc != 0:
        sys.exit(f"generation failed (exit {rc}); log: {run / 'generate.log'}")
    # fairseq writes BPE ids; decode them here (its own GPT-2 decoder fails on <<unk>>).
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    from bart_ext.text import gpt2_detokenize

    bpe = get_encoder(str(gpt2 / "encoder.json"), str(gpt2 / "vocab.bpe"))
    lines = (run / "generate" / "generate-valid.txt").read_text().splitlines()
    rows = {}
    for line in lines:
        tag, _, rest = line.partition("\t")
        if tag[:2] in ("S-", "T-", "H-") and tag[2:].isdigit():
            text = gpt2_detokenize(rest.split("\t")[-1].split(), bpe.decode)
            rows.setdefault(int(tag[2:]), {})[tag[0]] = text
    with open(gen_out, "w") as f:
        for idx in sorted(rows):
            r = rows[idx]
            f.write(f"{idx}\tnoised: {r.get('S', '')}\n{idx}\tclean:  {r.get('T', '')}\n{idx}\tmodel:  {r.get('H', '')}\n")
    for idx in sorted(rows)[: args.examples]:
        r = rows[idx]
        print(f"  noised: {r.get('S', '')[:150]}")
        print(f"  clean : {r.get('T', '')[:150]}")
        print(f"  model : {r.get('H', '')[:150]}\n")
    summary = [ln for ln in lines if ln.startswith("Generate")]
    if summary:
        print("  " + summary[-1])

    say("where everything went")
    for what, path in [("run directory", run), ("checkpoint", ckpt), ("training log", train_log),
                       ("generation output", gen_out), ("data (binarized)", bin_dir)]:
        print(f"  {what:<18} {path}")
    print(f"  total time {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
