#!/usr/bin/env python
"""What pretraining buys for comprehension: aclsum's sentence roles, pretrained vs random initialisation.

Fine-tunes the pretrained checkpoint's architecture (the demo's bart_small_preln;
configs/finetune/roles.yaml) on aclsum's sentence roles (challenge / approach / outcome / none;
scripts/prepare_roles.py) twice with the same settings and seed: from the demo's pretrained
checkpoint, and from random initialisation. Scores the best validation checkpoint of each on the
100 test papers (sentences the demo's pretraining never read), beside the majority class, with 95%
bootstrap intervals over papers and paired intervals for the differences. Writes RUN/results.json.

Usage: python scripts/roles_experiment.py [--pretrained runs/demo/pretrain/checkpoint_last.pt]
           [--updates 600] [--run-dir runs/roles] [--small]   (`make demo` writes the checkpoint)
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bart_ext.cli import check_at_least  # noqa: E402
from bart_ext.classify.predict import (  # noqa: E402
    accuracy, bootstrap, label_names, load_classifier, macro_f1, paired_difference, predict_split)
from scripts.demo import hydra_train, say  # noqa: E402
from scripts.prepare_roles import main as prepare_roles  # noqa: E402


def checkpoint_arch_and_data(path: Path) -> tuple[str, Path]:
    """The ``--arch`` a fairseq checkpoint was trained with and the data folder it trained on (its
    ``task.data``; an LDDL folder holds the ``dict.txt`` and the GPT-2 BPE files of the model)."""
    from fairseq import checkpoint_utils

    import user_dir  # noqa: F401  (bart_ext's patches: fairseq's own checkpoints load under torch >= 2.6)

    cfg = checkpoint_utils.load_checkpoint_to_cpu(str(path))["cfg"]
    arch = cfg["model"]._name if "_name" in cfg["model"] else cfg["model"].arch
    return arch, Path(str(cfg["task"].data).split(":")[0])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrained", type=Path, default=ROOT / "runs" / "demo" / "pretrain" / "checkpoint_last.pt")
    ap.add_argument("--data", type=Path, default=None, help="default data/aclsum_roles (prepared if missing)")
    ap.add_argument("--dict", type=Path, default=None, help="the pretrained model's dict.txt (default: its task.data's)")
    ap.add_argument("--gpt2", type=Path, default=None,
                    help="folder with the pretrained model's encoder.json and vocab.bpe (default: its task.data)")
    ap.add_argument("--updates", type=int, default=600)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "roles")
    ap.add_argument("--small", action="store_true", help="CI: 4 papers per split, 20 updates, 200 resamples")
    args = ap.parse_args(argv)
    check_at_least(ap, args, updates=1, rounds=1, seed=0)
    if not args.pretrained.exists():
        sys.exit(f"roles_experiment.py: pretrained checkpoint {args.pretrained} not found (run `make demo`, "
                 "or pass --pretrained)")
    if args.small:
        args.updates, args.rounds = 20, 200
    data_root = args.data or (args.run_dir / "data" if args.small else ROOT / "data" / "aclsum_roles")
    arch, trained_on = checkpoint_arch_and_data(args.pretrained)  # both runs: the pretrained model's architecture
    vocab_dict, gpt2 = args.dict or trained_on / "dict.txt", args.gpt2 or trained_on
    for need in (vocab_dict, gpt2 / "encoder.json", gpt2 / "vocab.bpe"):
        if not need.is_file():
            sys.exit(f"roles_experiment.py: {need} not found: the role data is encoded in the pretrained model's "
                     f"dictionary and BPE, by default those of the data it trained on ({trained_on}, the "
                     "checkpoint's task.data); pass --dict and --gpt2")
    say(f"1/4 aclsum sentence roles: raw text, the pretrained model's BPE ({gpt2}) and dictionary ({vocab_dict})")
    data = prepare_roles(["--out", str(data_root), "--dict", str(vocab_dict), "--gpt2", str(gpt2),
                          *(["--max-papers", "4"] if args.small else [])])
    run = args.run_dir.resolve()
    results = {}
    for i, init in enumerate(("pretrained", "random"), start=2):
        say(f"{i}/4 fine-tuning from {'the pretrained checkpoint' if init == 'pretrained' else 'random initialisation'}"
            f" for {args.updates} updates")
        out = run / init
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        restore = args.pretrained.resolve() if init == "pretrained" else None
        hydra_train("finetune", "roles", [
            f"task.data={data}", f"model._name={arch}", f"checkpoint.save_dir={out}",
            f"checkpoint.finetune_from_model={restore or 'null'}",
            f"common.seed={args.seed}", f"optimization.max_update={args.updates}",
            f"lr_scheduler.total_num_update={args.updates}", f"lr_scheduler.warmup_updates={max(1, args.updates * 6 // 100)}",
            f"dataset.validate_interval_updates={max(10, args.updates // 6)}", f"hydra.run.dir={out / 'hydra'}",
        ], out / "train.log", args.updates)
        log = (out / "train.log").read_text()
        if init == "pretrained" and f"Loaded checkpoint {restore}" not in log:
            sys.exit(f"fine-tuning did not start from {restore} (see {out / 'train.log'})")
        model, task, head = load_classifier(out / "checkpoint_best.pt", data)
        results[init] = predict_split(model, task, head, "test")

    say("4/4 test scores (95% bootstrap intervals over papers)")
    names = label_names(task)
    gold = results["pretrained"][1]
    train_labels = (data_root / "raw" / "train.label").read_text().split()
    majority = Counter(train_labels).most_common(1)[0][0]
    preds = {"majority class": np.full_like(gold, names.index(majority)),
             "random initialisation": results["random"][0], "pretrained (demo)": results["pretrained"][0]}
    papers = (data_root / "raw" / "test.paper").read_text().split()
    k = len(names)
    scores = {"accuracy": bootstrap(accuracy, preds, gold, papers, args.rounds),
              "macro-F1": bootstrap(lambda p, g: macro_f1(p, g, k), preds, gold, papers, args.rounds)}
    print(f"  {len(gold)} test sentences of {len(set(papers))} papers; labels {', '.join(names)}; "
          f"majority class '{majority}'")
    print(f"\n  | {'model':<22} | {'accuracy':<22} | {'macro-F1':<22} |\n  |{'-' * 24}|{'-' * 24}|{'-' * 24}|")
    for system in preds:
        cells = [f"{100 * v:5.1f} [{100 * lo:5.1f}, {100 * hi:5.1f}]" for v, lo, hi in
                 (scores[m][system] for m in ("accuracy", "macro-F1"))]
        print(f"  | {system:<22} | {cells[0]:<22} | {cells[1]:<22} |")
    diffs = {}
    for other in ("random initialisation", "majority class"):
        for metric, fn in (("accuracy", accuracy), ("macro-F1", lambda p, g: macro_f1(p, g, k))):
            d = paired_difference(fn, preds["pretrained (demo)"], preds[other], gold, papers, args.rounds)
            diffs[f"pretrained - {other}: {metric}"] = d
            print(f"  pretrained - {other:<21} {metric:<8} {100 * d[0]:+5.1f} points [{100 * d[1]:+5.1f}, "
                  f"{100 * d[2]:+5.1f}]")
    summary = {"scores": scores, "differences": diffs, "labels": names, "updates": args.updates,
               "test_sentences": int(len(gold)), "test_papers": len(set(papers))}
    (run / "results.json").write_text(json.dumps(summary, indent=1))
    print(f"\n  {run / 'results.json'}  ({time.time() - START:.0f}s)")
    return summary


START = time.time()

if __name__ == "__main__":
    from bart_ext.cli import run

    run(main)
