#!/usr/bin/env python
"""Training words/s on this machine: 1 process against 2 ranks under torchrun (gloo, CPU).

Same model (bart_tiny_preln), data (the default data's binarized aclsum), batch per
rank (--max-tokens) and number of updates; 2 ranks process twice the tokens per
update. The figure is fairseq's own `train_wps` (target tokens per second, whole
job) over the run, median of --rounds runs, rounds alternating the order. Scaling
efficiency = wps(2 ranks) / (2 x wps(1 rank)). Both ranks share the machine's cores,
so each gets one thread.

Usage: python scripts/bench_ddp.py [--rounds 3] [--updates 40]
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train_cmd(save: str, updates: int) -> list[str]:
    return [str(ROOT / "data" / "aclsum" / "bin"), "--user-dir", str(ROOT / "user_dir"), "--arch", "bart_tiny_preln",
            "--cpu", "--task", "bart_denoising", "--tokens-per-sample", "128", "--criterion", "cross_entropy",
            "--optimizer", "nvlamb", "--lr", "0.01", "--max-tokens", "2048", "--max-update", str(updates),
            "--seed", "1", "--num-workers", "0", "--log-format", "json", "--log-interval", "10", "--save-dir", save,
            "--no-save", "--disable-validation"]


def wps(ranks: int, updates: int) -> float:
    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, 2 // ranks)))
    with tempfile.TemporaryDirectory() as tmp:
        if ranks == 1:
            cmd = [os.path.join(bindir, "fairseq-train"), *train_cmd(tmp, updates)]
        else:
            cmd = [os.path.join(bindir, "torchrun"), "--nproc-per-node", str(ranks), "--master-port", "29591",
                   os.path.join(bindir, "fairseq-train"), *train_cmd(tmp, updates)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    log = out.stdout + out.stderr
    if out.returncode != 0:
        raise RuntimeError(log[-3000:])
    m = re.findall(r"\| train \| (\{.*\})", log)
    if not m:
        raise RuntimeError("no end-of-epoch train stats in the log:\n" + log[-2000:])
    return float(json.loads(m[-1])["train_wps"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--updates", type=int, default=40)
    args = ap.parse_args()
    res: dict[int, list[float]] = {1: [], 2: []}
    for r in range(args.rounds):
        for ranks in ((1, 2) if r % 2 == 0 else (2, 1)):
            res[ranks].append(wps(ranks, args.updates))
            print(f"  round {r + 1}, {ranks} rank(s): {res[ranks][-1]:,.0f} words/s", flush=True)
    one, two = statistics.median(res[1]), statistics.median(res[2])
    print(f"bart_tiny_preln, 128 tokens, --max-tokens 2048 per rank, {args.updates} updates, median of {args.rounds}:")
    print(f"  1 process  {one:>9,.0f} words/s")
    print(f"  2 ranks    {two:>9,.0f} words/s  (scaling efficiency {two / (2 * one):.0%}; 2 cores shared)")


if __name__ == "__main__":
    main()
