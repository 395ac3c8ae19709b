"""Ablation sweeps: a named grid of fairseq-hydra-train runs, their results, tables and plots.

An ablation file (``configs/ablation/NAME.yaml``)::

    name: preln_vs_postln
    description: one line for the table's title
    config: pretrain/tiny             # the hydra config every run starts from (configs/...)
    overrides: {task.data: data/aclsum/bin, optimization.max_update: 60}    # shared by every run
    scales: {real: {...}}             # more overrides (and token_budget, grid axes), chosen with --scale
    grid:                             # the runs: the cartesian product of the axes
      model.post_ln: [false, true]
      optimization.lr: [[0.001], [0.01]]
      optimizer: [{_label: adam, optimizer._name: adam}, {_label: nvlamb, optimizer._name: nvlamb}]
    seeds: [1]                        # every point once per seed
    lr_rule: {axis: optimization.update_freq, rule: sqrt}   # optional: lr x sqrt(k) (or x k: linear)
    token_budget: 491520              # optional: max_update = budget / (max_tokens x update_freq)

An axis value that is a mapping sets several keys at once (``_label`` names it). A run is
keyed by its resolved overrides and the base config's text, so a finished run is found
again whatever order the grid is read in.
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from bart_ext.curves import Curves

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class Run:
    label: str                      # "model.post_ln=true, lr=0.01, seed=1"
    point: dict[str, str]           # axis name -> value label (the table's columns), seed included
    overrides: dict[str, object]    # every hydra override of the run, shared ones included
    key: str = ""

    @property
    def dirname(self) -> str:
        return self.key[:12]


@dataclass
class Result:
    status: str                     # ok | diverged | failed
    reason: str = ""
    final_train: float = math.nan
    final_valid: float = math.nan
    updates: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def hydra_value(value) -> str:
    """A Python value as a hydra command-line override value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    return str(value)


def _label(value) -> str:
    if isinstance(value, dict):
        return str(value.get("_label") or ",".join(f"{k}={hydra_value(v)}" for k, v in value.items()))
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return hydra_value(value[0])
    return hydra_value(value)


def load_ablation(path: Path, scale: str | None = None, extra: dict | None = None) -> dict:
    from omegaconf import OmegaConf

    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.exists() else []
        raise FileNotFoundError(f"{path} not found (known ablations: {', '.join(known) or 'none'})")
    spec = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    for key in ("name", "config", "grid"):
        if key not in spec:
            raise ValueError(f"{path}: missing field {key!r}")
    if not isinstance(spec["grid"], dict) or not spec["grid"]:
        raise ValueError(f"{path}: 'grid' must map override keys to lists of values")
    for axis, values in spec["grid"].items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{path}: grid axis {axis!r} must be a non-empty list")
    overrides = dict(spec.get("overrides") or {})
    if scale:
        scales = spec.get("scales") or {}
        if scale not in scales:
            raise ValueError(f"{path}: no scale {scale!r} (have: {', '.join(scales) or 'none'})")
        scaled = dict(scales[scale])
        if "token_budget" in scaled:
            spec["token_budget"] = scaled.pop("token_budget")
        spec["grid"] = {**spec["grid"], **scaled.pop("grid", {})}  # a scale may replace whole axes
        overrides.update(scaled)
    overrides.update(extra or {})
    spec["overrides"] = overrides
    return spec


def expand(spec: dict) -> list[Run]:
    """The runs of an ablation, in grid order (seeds innermost)."""
    base_text = (CONFIG_ROOT / f"{spec['config']}.yaml").read_text()
    axes = list(spec["grid"].items())
    seeds = spec.get("seeds") or [None]
    runs = []
    for values in itertools.product(*[v for _, v in axes]):
        for seed in seeds:
            overrides = dict(spec["overrides"])
            point = {}
            for (axis, _), value in zip(axes, values):
                point[axis] = _label(value)
                if isinstance(value, dict):
                    overrides.update({k: v for k, v in value.items() if k != "_label"})
                else:
                    overrides[axis] = value
            if seed is not None:
                overrides["common.seed"] = seed
                point["seed"] = str(seed)
            _apply_rules(spec, overrides)
            label = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in point.items())
            run = Run(label, point, overrides)
            blob = json.dumps({"config": spec["config"], "base": base_text,
                               "overrides": {k: hydra_value(v) for k, v in sorted(overrides.items())}})
            run.key = hashlib.sha1(blob.encode()).hexdigest()
            runs.append(run)
    return runs


def tokens_per_update(overrides: dict) -> int:
    """The tokens one update of a run sees (``token_budget``'s unit): ``dataset.max_tokens``, or
    ``dataset.batch_size`` x ``task.tokens_per_sample`` where batches count sequences (LDDL), times
    ``optimization.update_freq`` (at most that, where ``max_tokens`` caps batches)."""
    uf = overrides.get("optimization.update_freq", [1])
    uf = int(uf[0] if isinstance(uf, list) else uf)
    tokens = overrides.get("dataset.max_tokens")
    if tokens is None:  # batches by sequence count (LDDL): sequences x their length
        tokens = int(overrides["dataset.batch_size"]) * int(overrides["task.tokens_per_sample"])
    return int(tokens) * uf


def _apply_rules(spec: dict, overrides: dict) -> None:
    rule = spec.get("lr_rule")
    if rule:
        k = float(overrides.get(rule["axis"], [1])[0] if isinstance(overrides.get(rule["axis"]), list)
                  else overrides.get(rule["axis"], 1))
        factor = {"sqrt": math.sqrt(k), "linear": k}.get(rule.get("rule", "sqrt"))
        if factor is None:
            raise ValueError(f"lr_rule.rule must be sqrt or linear, not {rule.get('rule')!r}")
        lr = overrides["optimization.lr"]
        overrides["optimization.lr"] = [round(float(x) * factor, 10) for x in (lr if isinstance(lr, list) else [lr])]
    budget = spec.get("token_budget")
    if budget:
        updates = max(1, int(budget) // tokens_per_update(overrides))
        overrides["optimization.max_update"] = updates
        if "lr_scheduler.total_num_update" in overrides:
            overrides["lr_scheduler.total_num_update"] = updates


def classify(curves: Curves, returncode: int, log_text: str) -> Result:
    """ok, diverged (a non-finite loss, fairseq's NaN/Inf gradient stop, or a loss that rose), or failed."""
    res = Result("ok", final_train=curves.final("train"), final_valid=curves.final("valid"),
                 updates=curves.train[-1][0] if curves.train else 0)
    bad = [(u, v) for u, v in curves.train + curves.valid if not math.isfinite(v)]
    if bad:
        return Result("diverged", f"non-finite loss at update {bad[0][0]}", res.final_train, res.final_valid,
                      res.updates)
    if "FloatingPointError" in log_text or "gradients are Nan/Inf" in log_text:
        return Result("diverged", "fairseq stopped: gradients are NaN/Inf", res.final_train, res.final_valid,
                      res.updates)
    if returncode != 0:
        lines = [ln.strip() for ln in log_text.splitlines() if ln.strip() and "HYDRA_FULL_ERROR" not in ln]
        errors = [ln for ln in lines if "Error" in ln or "error" in ln or "not in struct" in ln] or lines[-1:] or [""]
        return Result("failed", f"exit {returncode}: {errors[-1][:200]}", res.final_train, res.final_valid, res.updates)
    if len(curves.train) >= 2 and curves.train[-1][1] > curves.train[0][1]:
        return Result("diverged", f"loss rose from {curves.train[0][1]:.3f} to {curves.train[-1][1]:.3f}",
                      res.final_train, res.final_valid, res.updates)
    return res


def write_tables(out: Path, spec: dict, runs: list[Run], results: dict[str, Result]) -> tuple[Path, Path]:
    """results.csv (one row per run) and results.md (one row per grid point, seeds averaged)."""
    axes = list(runs[0].point) if runs else []
    csv_path, md_path = out / "results.csv", out / "results.md"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*axes, "status", "reason", "final_train_loss", "final_valid_loss", "updates", "seconds", "run"])
        for r in runs:
            res = results.get(r.key)
            if res is None:
                continue
            w.writerow([*(r.point[a] for a in axes), res.status, res.reason, f"{res.final_train:.4f}",
                        f"{res.final_valid:.4f}", res.updates, f"{res.seconds:.1f}", r.dirname])
    groups: dict[tuple, list[Result]] = {}
    cols = [a for a in axes if a != "seed"]
    for r in runs:
        if r.key in results:
            groups.setdefault(tuple(r.point[a] for a in cols), []).append(results[r.key])
    lines = [f"# {spec['name']}", "", spec.get("description", ""), "",
             "| " + " | ".join([*(c.split(".")[-1] for c in cols), "runs", "final train loss", "final valid loss",
                                "status"]) + " |",
             "|" + "---|" * (len(cols) + 4)]
    for values, rs in groups.items():
        def mean(xs):
            xs = [x for x in xs if math.isfinite(x)]
            return f"{sum(xs) / len(xs):.3f}" if xs else "-"
        status = ", ".join(sorted({r.status for r in rs}))
        if any(r.status != "ok" for r in rs):
            status += " (" + "; ".join(r.reason for r in rs if r.status != "ok") + ")"
        lines.append("| " + " | ".join([*values, str(len(rs)), mean([r.final_train for r in rs]),
                                        mean([r.final_valid for r in rs]), status]) + " |")
    lines.append("")
    lines.append("Losses are fairseq's (base 2); train is the last logged interval, valid the last validation.")
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path
