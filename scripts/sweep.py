#!/usr/bin/env python
"""Run an ablation: a named grid of fairseq-hydra-train runs -> CSV, markdown table, loss-curve PNG.

    python scripts/sweep.py preln_vs_postln              # configs/ablation/preln_vs_postln.yaml, tiny scale
    python scripts/sweep.py noise --jobs 2               # two runs at once
    python scripts/sweep.py nvlamb_vs_adam --scale real  # the documented larger setting
    python scripts/sweep.py preln_vs_postln --hydra-multirun   # print the same grid as one hydra multirun
                                                                # (e.g. + hydra/launcher=submitit_slurm)

Output in --out (default runs/sweeps/NAME; runs/sweeps/NAME_SCALE with --scale): runs/<key>/
(train.log, checkpoints, result.json), results.csv (one row per run), results.md (one row per grid
point), NAME.png.

Resumable: a run with a result.json is skipped (runs are keyed by their resolved config), an
unfinished one is started again (fairseq resumes from its checkpoint_last.pt). A run whose loss
goes NaN/inf, or that fairseq stops for NaN/Inf gradients, is recorded as diverged; a crash
is recorded as failed; the sweep goes on either way.
"""
from __future__ import annotations

import time

STARTED = time.time()  # the runner's own start-up counts as overhead

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bart_ext.cli import check_at_least, children_stopped_on_interrupt, run_child, stopping  # noqa: E402
from bart_ext.curves import Curves, plot, read_log, time_left  # noqa: E402
from bart_ext.files import exclusive  # noqa: E402
from bart_ext.sweep import (CONFIG_ROOT, ROUGE_KEYS, Result, Run, check_override_keys, classify, expand,  # noqa: E402
                            hydra_value, load_ablation, tokens_per_update, write_tables)


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def resolve_paths(overrides: dict) -> dict:
    """Relative data and user-dir paths are relative to the repository, wherever the sweep is started."""
    out = dict(overrides)
    for key in ("task.data", "common.user_dir"):
        if key in out and isinstance(out[key], str) and not os.path.isabs(out[key]):
            out[key] = str(ROOT / out[key])
    return out


def command(spec: dict, run: Run, run_dir: Path) -> list[str]:
    config = Path(spec["config"])
    overrides = resolve_paths({"common.user_dir": "user_dir", **run.overrides})
    return [sys.executable, "-m", "fairseq_cli.hydra_train", "--config-dir", str(CONFIG_ROOT / config.parent),
            "--config-name", config.name, *(f"++{k}={hydra_value(v)}" for k, v in overrides.items()),
            f"checkpoint.save_dir={run_dir / 'checkpoints'}", f"hydra.run.dir={run_dir / 'hydra'}",
            "++common.log_format=json"]


# Exit statuses of a child ended by SIGINT, SIGTERM or SIGHUP (subprocess gives -signum; a shell,
# 128 + signum): stopped, not failed.
STOPPED = {-2, -15, -1, 130, 143, 129}


def stopped(rc: int) -> bool:
    """Whether a run's process was stopped (this runner interrupted, or a signal to the run itself)
    rather than finished: its result is not recorded, so the next sweep continues it from its
    checkpoint_last.pt instead of listing it as failed."""
    return rc != 0 and (stopping() or rc in STOPPED)  # a run that ended as it was stopped did finish


def execute(spec: dict, run: Run, run_dir: Path, threads: int) -> Result | None:
    """Train one run into ``run_dir`` and record its result; None, and nothing recorded, when it was stopped."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = command(spec, run, run_dir)
    log = run_dir / "train.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.time()
    with open(log, "a") as f:  # an interrupted attempt's lines stay; fairseq resumes from checkpoint_last.pt
        f.write(f"# bart_ext sweep attempt at {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(cmd)}\n")
        f.flush()
        rc = run_child(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env).returncode
    if stopped(rc):
        return None
    seconds = time.time() - t0
    result = classify(read_log(log), rc, log.read_text(errors="replace")[-20000:])
    result.seconds = seconds
    record = {"label": run.label, "point": run.point, "key": run.key,
              "overrides": {k: hydra_value(v) for k, v in run.overrides.items()}, "result": asdict(result)}
    tmp = run_dir / "result.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    tmp.rename(run_dir / "result.json")  # written last and atomically: its presence means finished
    return result


def downstream_command(spec: dict, run: Run, run_dir: Path, start: Path) -> list[str]:
    """fairseq-hydra-train of the ablation's fine-tuning config from ``start`` (the run's checkpoint),
    with the run's seed, into ``run_dir/downstream``."""
    down = spec["downstream"]
    config = Path(down["config"])
    overrides = resolve_paths({"common.user_dir": "user_dir", **down["overrides"]})
    if "common.seed" in run.overrides and "common.seed" not in overrides:
        overrides["common.seed"] = run.overrides["common.seed"]
    d = run_dir / "downstream"
    return [sys.executable, "-m", "fairseq_cli.hydra_train", "--config-dir", str(CONFIG_ROOT / config.parent),
            "--config-name", config.name, *(f"++{k}={hydra_value(v)}" for k, v in overrides.items()),
            f"++checkpoint.finetune_from_model={start}", f"checkpoint.save_dir={d / 'checkpoints'}",
            f"hydra.run.dir={d / 'hydra'}", "++common.log_format=json"]


def execute_downstream(spec: dict, run: Run, run_dir: Path, threads: int) -> dict | None:
    """Fine-tune a finished run's last checkpoint with the ablation's ``downstream`` block and, when it
    names a generation preset, summarize its test set and score it (ROUGE with 95% bootstrap
    intervals). Writes ``run_dir/downstream/result.json`` last (its presence means finished); an
    interrupted fine-tuning continues from its checkpoint_last.pt. None, and nothing recorded,
    when its fine-tuning or generation was stopped."""
    down = spec["downstream"]
    d = run_dir / "downstream"
    d.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.time()
    record: dict = {"status": "ok", "reason": ""}
    start = run_dir / "checkpoints" / "checkpoint_last.pt"
    if not start.exists():
        record.update(status="failed", reason=f"{start} not found")
    elif down["position_fill"]:
        from bart_ext.positions import fill_checkpoint_positions

        filled = d / "start.pt"
        if not filled.exists():  # written under a temporary name first
            info = fill_checkpoint_positions(start, filled, down["position_fill"]["trained"], down["position_fill"]["fill"])
            print(f"[sweep] {run.label}: position rows {info['trained']} and later filled ({info['fill']}) "
                  f"-> {filled}", flush=True)
        start = filled
    if record["status"] == "ok":
        cmd = downstream_command(spec, run, run_dir, start)
        log = d / "train.log"
        with open(log, "a") as f:
            f.write(f"# bart_ext sweep downstream attempt at {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(cmd)}\n")
            f.flush()
            rc = run_child(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env).returncode
        if stopped(rc):
            return None
        tuned = classify(read_log(log), rc, log.read_text(errors="replace")[-20000:])
        record["finetune"] = asdict(tuned)
        if tuned.status != "ok":
            record.update(status=tuned.status, reason=f"fine-tuning: {tuned.reason} (log: {log})")
    gen = down["generate"]
    if record["status"] == "ok" and gen:
        data = resolve_paths(down["overrides"])["task.data"]
        results = d / "generate"
        cmd = [sys.executable, str(ROOT / "scripts" / "generate.py"), str(data), "--preset", gen["preset"],
               "--path", str(d / "checkpoints" / "checkpoint_best.pt"), "--gen-subset", gen["subset"],
               "--results-path", str(results), "--quiet", "--rouge", "--", *gen["args"]]
        log = d / "generate.log"
        with open(log, "w") as f:
            rc = run_child(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env).returncode
        if stopped(rc):
            return None
        if rc != 0:
            last = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:] or [""]
            record.update(status="failed", reason=f"generation: exit {rc}: {last[0][:200]} (log: {log})")
        else:
            hyps = (results / f"{gen['subset']}.hyp").read_text(encoding="utf-8").splitlines()
            record.update(rouge=json.loads((results / f"{gen['subset']}.rouge.json").read_text()),
                          distinct=len(set(hyps)), summaries=len(hyps))
    record["seconds"] = time.time() - t0
    tmp = d / "result.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    tmp.rename(d / "result.json")
    return record


def load_downstream(run_dir: Path) -> dict | None:
    path = run_dir / "downstream" / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


def load_result(run_dir: Path) -> Result | None:
    path = run_dir / "result.json"
    if not path.exists():
        return None
    return Result(**json.loads(path.read_text())["result"])


def figure(spec: dict, runs: list[Run], out: Path, run_root: Path, downstream: dict[str, dict] | None = None) -> Path:
    """One panel per value of the first grid axis; one colour per run within it (one panel for all
    when each value has a single run, as one axis with one seed has). Against updates, or,
    for an ablation with a ``token_budget`` (runs of different batch sizes over the same tokens),
    against the tokens seen, so that the runs end at the same x. Downstream ROUGE, where scored,
    is a last panel of bars with their 95% intervals."""
    axes = list(spec["grid"])
    by_tokens = bool(spec.get("token_budget"))
    panels: dict[str, dict] = {}
    single: dict[str, tuple[str, Curves]] = {}  # run key -> (its first axis value, curves)
    # an axis with one value in every run (a single seed) says nothing in a label
    varying = {k for r in runs for k in r.point if len({str(q.point.get(k)) for q in runs}) > 1}
    for r in runs:
        if not (run_root / r.dirname / "result.json").exists():
            continue
        first = f"{axes[0].split('.')[-1]}={r.point[axes[0]]}"
        rest = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in r.point.items() if k != axes[0] and k in varying) or r.label
        status = load_result(run_root / r.dirname).status
        suffix = "" if status == "ok" else f" [{status}]"
        curves = read_log(run_root / r.dirname / "train.log")
        curves = curves.scaled(tokens_per_update(r.overrides)) if by_tokens else curves
        panels.setdefault(first, {})[rest + suffix] = curves
        single[r.key] = (f"{r.point[axes[0]]}{suffix}", curves)
    labels = {r.key: r.label for r in runs}
    if len(panels) > 1 and all(len(curves) == 1 for curves in panels.values()):
        # a run per value of the axis (one axis, one seed): the curves read better side by side in
        # one panel, and the bars take the same short labels, so each run keeps one colour throughout
        panels = {axes[0].split(".")[-1]: dict(single.values())}
        labels.update({key: label for key, (label, _) in single.items()})
    bars = {labels[r.key]: {m: (x["rouge"][m]["f1"], x["rouge"][m]["low"], x["rouge"][m]["high"]) for m in ROUGE_KEYS}
            for r in runs if (x := (downstream or {}).get(r.key)) and x.get("rouge")}
    return plot(list(panels.items()), out / f"{spec['name']}.png", spec.get("description", spec["name"]),
                bars=("downstream ROUGE (fine-tuned)", bars) if bars else None, same_scale=True, xlabel="tokens seen (updates x tokens per update)" if by_tokens else "update")


PATH_KEYS = ("task.data", "checkpoint.finetune_from_model", "checkpoint.restore_file")


def hydra_multirun(spec: dict, sweep_dir: str | None = None, launcher: str = "submitit_slurm") -> str:
    """The grid as one ``fairseq-hydra-train -m`` command line (for a shell).

    hydra runs each job in its own ``SWEEP_DIR/N``: relative data paths are given from the current
    directory (``$PWD``), and each job writes its checkpoints into ``SWEEP_DIR/N/checkpoints``.
    """
    config = Path(spec["config"])
    parts = ["fairseq-hydra-train", "-m", "--config-dir", str(Path("configs") / config.parent),
             "--config-name", config.name, "common.user_dir=$PWD/user_dir", "checkpoint.save_dir=checkpoints"]
    for k, v in spec["overrides"].items():
        if k in PATH_KEYS and v is not None and not str(v).startswith(("/", "$")):
            parts.append(f'"++{k}=$PWD/{v}"')  # double quotes: the shell expands $PWD
        else:
            parts.append(f"'++{k}={hydra_value(v)}'")
    for axis, values in spec["grid"].items():
        if any(isinstance(v, dict) for v in values):
            raise SystemExit(f"--hydra-multirun: axis {axis!r} sets several keys per value; hydra's basic sweeper "
                             "sweeps one key per axis (use the runner, or split the axis)")
        parts.append(f"'++{axis}=" + ",".join(hydra_value(v) for v in values) + "'")
    if spec.get("seeds"):
        parts.append("common.seed=" + ",".join(str(s) for s in spec["seeds"]))
    parts.append(f"hydra.sweep.dir={sweep_dir or 'multirun/' + spec['name']}")
    if launcher:
        parts.append(f"hydra/launcher={launcher}")
    if spec.get("lr_rule") or spec.get("token_budget"):
        parts.append("# note: lr_rule / token_budget are applied by scripts/sweep.py only")
    if spec.get("downstream"):
        parts.append("# note: the downstream fine-tuning and scoring are run by scripts/sweep.py only")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ablation", help="a name in configs/ablation/ or a path to a .yaml")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once on this machine")
    ap.add_argument("--out", type=Path, help="default runs/sweeps/NAME (NAME_SCALE with --scale)")
    ap.add_argument("--scale", help="a scale of the ablation file (e.g. real)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="one more shared override (hydra syntax), e.g. optimization.max_update=20")
    ap.add_argument("--hydra-multirun", action="store_true", help="print the grid as a hydra multirun and exit")
    ap.add_argument("--dry-run", action="store_true", help="list the runs and their state, run nothing")
    args = ap.parse_args(argv)
    check_at_least(ap, args, jobs=1)

    path = Path(args.ablation)
    if path.suffix != ".yaml":
        path = CONFIG_ROOT / "ablation" / f"{args.ablation}.yaml"
    import yaml

    extra = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        extra[key] = yaml.safe_load(value) if value else value  # typed: [0.01] is a list, 20 an int
    spec = load_ablation(path, args.scale, extra)
    if args.hydra_multirun:
        check_override_keys(spec, expand(spec))  # the printed command passes them with ++ too
        print(hydra_multirun(spec))
        return {}
    data = resolve_paths(spec["overrides"]).get("task.data")
    if isinstance(data, str) and not args.dry_run and not Path(data.split(":")[0]).exists():  # not six failures
        raise SystemExit(f"task.data {data} not found: prepare it as the comment of {args.scale or 'the overrides'} in "
                         f"{path} says (runs/demo/lddl: `make demo`; data/lddl: scripts/lddl_preprocess.py), or "
                         "pass --set task.data=DIR")
    down_data = resolve_paths((spec.get("downstream") or {}).get("overrides") or {}).get("task.data")
    if isinstance(down_data, str) and not args.dry_run and not Path(down_data).exists():
        raise SystemExit(f"downstream task.data {down_data} not found: prepare it as the comment of "
                         f"{args.scale or 'the downstream block'} in {path} says, or pass another in the file")
    runs = expand(spec)
    check_override_keys(spec, runs)  # a misspelt key is refused, not added unused by hydra's ++
    # a scale's sweep has its own folder: its tables and plot are not overwritten by another scale's
    out = (args.out or ROOT / "runs" / "sweeps" / (spec["name"] + (f"_{args.scale}" if args.scale else ""))).resolve()
    run_root = out / "runs"
    # One sweep at a time in a folder: two would run the same unfinished runs at once into the same
    # checkpoints (a --dry-run only reads).
    held = contextlib.ExitStack()
    if not args.dry_run:
        held.enter_context(exclusive(out / ".sweep.lock", f"the sweep folder {out}"))
    with held:
        todo = [r for r in runs if load_result(run_root / r.dirname) is None]
        down = spec.get("downstream")

        def needs_downstream(r: Run) -> bool:
            res = load_result(run_root / r.dirname)
            return bool(down) and res is not None and res.status == "ok" and load_downstream(run_root / r.dirname) is None

        print(f"[sweep] {spec['name']}: {plural(len(runs), 'run')} ({len(runs) - len(todo)} finished before), "
              f"{args.jobs} at a time -> {out}" + (f"; each then fine-tuned with {down['config']}" if down else ""),
              flush=True)
        for r in runs:
            if r not in todo:
                print(f"[sweep] skip {r.label}: finished ({load_result(run_root / r.dirname).status})"
                      + ("; downstream to do" if needs_downstream(r) else ""), flush=True)
        if args.dry_run:
            for r in todo:
                print(f"[sweep] would run {r.label} ({r.dirname})")
            return {}
        run_root.mkdir(parents=True, exist_ok=True)
        (out / "sweep.json").write_text(json.dumps({"ablation": str(path), "spec": spec,
                                                    "runs": [{"key": r.key, "label": r.label} for r in runs]}, indent=1))

        threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
        done = 0
        down_seconds: list[float] = []

        def one(run: Run) -> Result | None:
            nonlocal done
            print(f"[sweep] start {run.label} ({run.dirname})", flush=True)
            res = execute(spec, run, run_root / run.dirname, threads)
            if res is None:
                print(f"[sweep] {run.label}: stopped, not recorded; the same command continues it", flush=True)
                return None
            done += 1
            note = f" ({res.reason})" if res.reason else ""
            print(f"[sweep] {done}/{len(todo)} {run.label}: {res.status}{note}, train {res.final_train:.3f}, "
                  f"valid {res.final_valid:.3f}, {res.seconds:.0f}s", flush=True)
            return res

        def downstream(run: Run) -> dict | None:
            print(f"[sweep] downstream {run.label}: fine-tuning with {down['config']}", flush=True)
            rec = execute_downstream(spec, run, run_root / run.dirname, threads)
            if rec is None:
                print(f"[sweep] downstream {run.label}: stopped, not recorded; the same command continues it", flush=True)
                return None
            down_seconds.append(rec["seconds"])
            rouge = rec.get("rouge")
            scores = (", ROUGE-1/2/L " + "/".join(f"{rouge[m]['f1']:.2f}" for m in ("rouge1", "rouge2", "rougeL"))
                      if rouge else "")
            valid = rec.get("finetune", {}).get("final_valid", math.nan)
            print(f"[sweep] downstream {run.label}: {rec['status']}{' (' + rec['reason'] + ')' if rec['reason'] else ''}, "
                  f"fine-tuned valid {valid:.3f}{scores}, {rec['seconds']:.0f}s", flush=True)
            return rec

        work = [r for r in runs if r in todo or needs_downstream(r)]
        finished = 0
        lock = threading.Lock()
        t_work = time.time()

        def one_and_downstream(run: Run) -> None:
            nonlocal finished
            if stopping():  # interrupted: start nothing more
                return
            if run in todo and one(run) is None:
                return  # stopped: not done
            if needs_downstream(run) and downstream(run) is None:
                return
            with lock:
                finished += 1
                n = finished
            if n < len(work):  # at the pace so far (with --jobs N, N runs at a time)
                left = (time.time() - t_work) / n * (len(work) - n)
                print(f"[sweep] {n} of {plural(len(work), 'run')} done, about {time_left(left)}", flush=True)

        pool = ThreadPoolExecutor(max_workers=max(1, args.jobs))
        try:
            with children_stopped_on_interrupt():  # Ctrl-C, SIGTERM (bart_ext.cli.run): the runs under way are stopped
                list(pool.map(one_and_downstream, work))
        except KeyboardInterrupt:
            finished_now = sum(load_result(run_root / r.dirname) is not None for r in runs)
            print(f"[sweep] interrupted: {finished_now} of {plural(len(runs), 'run')} recorded; the same command "
                  "continues with the rest, each from its checkpoint_last.pt", flush=True)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        t1 = time.time()
        results = {r.key: load_result(run_root / r.dirname) for r in runs}
        results = {k: v for k, v in results.items() if v is not None}
        downs = {r.key: load_downstream(run_root / r.dirname) for r in runs} if down else {}
        downs = {k: v for k, v in downs.items() if v is not None}
        csv_path, md_path = write_tables(out, spec, runs, results, downs)
        png = figure(spec, runs, out, run_root, downs)
        print(f"[sweep] tables and plot in {time.time() - t1:.2f}s", flush=True)
        run_seconds = sum(results[r.key].seconds for r in todo if r.key in results)
        # Everything this process spent outside fairseq-hydra-train: its start-up, scheduling, log
        # parsing, tables and plot (exact with --jobs 1; with more, runs overlap and this is approximate).
        # (the downstream stages' fine-tuning and generation are work too, not overhead)
        overhead = (time.time() - STARTED) - (run_seconds + sum(down_seconds)) / max(1, args.jobs)
        print(md_path.read_text())
        print(f"[sweep] {csv_path}\n[sweep] {md_path}\n[sweep] {png}")
        if down_seconds:
            print(f"[sweep] downstream: {len(down_seconds)} fine-tuned and scored, {sum(down_seconds):.0f}s", flush=True)
        if todo:
            per_run = run_seconds / len(todo)
            print(f"[sweep] runner overhead: {overhead:.2f}s in all ({overhead / len(todo):.2f}s per run: start-up, "
                  f"log parsing, tables and plot), {100 * overhead / len(todo) / per_run:.1f}% of a run's "
                  f"{per_run:.1f}s", flush=True)
        return {"out": out, "results": results, "overhead_s": overhead, "run_seconds": run_seconds, "runs": runs}


if __name__ == "__main__":
    from bart_ext.cli import run

    run(main)
