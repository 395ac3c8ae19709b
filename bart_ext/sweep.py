"""Ablation sweeps: a named grid of fairseq-hydra-train runs, their results, tables and plots.

An ablation file (``configs/ablation/NAME.yaml``)::

    name: preln_vs_postln
    description: one line for the table's title
    config: pretrain/tiny             # the hydra config every run starts from (configs/...)
    overrides: {task.data: data/aclsum/bin, optimization.max_update: 60}    # shared by every run
    scales: {real: {...}}             # more overrides (and token_budget, grid axes, description), chosen with --scale
    grid:                             # the runs: the cartesian product of the axes
      model.post_ln: [false, true]
      optimization.lr: [[0.001], [0.01]]
      optimizer: [{_label: adam, optimizer._name: adam}, {_label: nvlamb, optimizer._name: nvlamb}]
    seeds: [1]                        # every point once per seed
    lr_rule: {axis: optimization.update_freq, rule: sqrt}   # optional: lr x sqrt(k) (or x k: linear)
    token_budget: 491520              # optional: max_update = budget / (max_tokens x update_freq)
    downstream:                       # optional (also per scale): the verdict on each finished run
      config: finetune/aclsum         # fine-tuning config, from the run's checkpoint_last.pt
      overrides: {task.data: data/aclsum_summ/bin, optimization.max_update: 100}
      position_fill: {trained: 64, fill: tail-mean}   # optional: rows pretraining never reached
      generate: {preset: cnn_dm, subset: test, args: [--cpu]}   # optional: summaries and ROUGE

An axis value that is a mapping sets several keys at once (``_label`` names it); a scale may
drop an axis of the base grid with ``null``. A run is keyed by its resolved overrides and the
base config's text, so a finished run is found again whatever order the grid is read in. The
downstream stage is not part of the key: adding it to a finished sweep fine-tunes and scores
the runs it already has.
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


class SweepConfigError(ValueError):
    """An ablation file or override the runner cannot use; the message names the file or the key."""


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
            raise SweepConfigError(f"{path}: missing field {key!r}")
    if not isinstance(spec["grid"], dict) or not spec["grid"]:
        raise SweepConfigError(f"{path}: 'grid' must map override keys to lists of values")
    for axis, values in spec["grid"].items():
        if not isinstance(values, list) or not values:
            raise SweepConfigError(f"{path}: grid axis {axis!r} must be a non-empty list")
    overrides = dict(spec.get("overrides") or {})
    if scale:
        scales = spec.get("scales") or {}
        if scale not in scales:
            raise SweepConfigError(f"{path}: no scale {scale!r} (have: {', '.join(scales) or 'none'})")
        scaled = dict(scales[scale])
        if "token_budget" in scaled:
            spec["token_budget"] = scaled.pop("token_budget")
        if "description" in scaled:  # what the scale's grid asks, where it differs from the base grid's
            spec["description"] = scaled.pop("description")
        if "downstream" in scaled:
            spec["downstream"] = scaled.pop("downstream")
        # a scale may replace whole axes, add axes, or drop one (null)
        grid = {**spec["grid"], **(scaled.pop("grid", None) or {})}
        spec["grid"] = {axis: values for axis, values in grid.items() if values is not None}
        for axis, values in spec["grid"].items():
            if not isinstance(values, list) or not values:
                raise SweepConfigError(f"{path}: scale {scale!r}: grid axis {axis!r} must be a non-empty list (or null to drop it)")
        if not spec["grid"]:
            raise SweepConfigError(f"{path}: scale {scale!r} drops every grid axis")
        overrides.update(scaled)
    overrides.update(extra or {})
    spec["overrides"] = overrides
    if spec.get("downstream") is not None:
        spec["downstream"] = check_downstream(spec["downstream"], f"{path}: downstream")
    return spec


def check_downstream(down, where: str) -> dict:
    """An ablation's ``downstream`` block, checked: what each finished pretraining run is fine-tuned
    and scored with (see the module's docstring)."""
    from bart_ext.positions import FILLS  # imports torch: only where a downstream block is used

    if not isinstance(down, dict):
        raise SweepConfigError(f"{where} must be a mapping (config, overrides, position_fill, generate)")
    unknown = set(down) - {"config", "overrides", "position_fill", "generate"}
    if unknown:
        raise SweepConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    if not isinstance(down.get("config"), str):
        raise SweepConfigError(f"{where}: missing field 'config' (a fine-tuning config under configs/, e.g. finetune/aclsum)")
    if not (CONFIG_ROOT / f"{down['config']}.yaml").exists():
        raise SweepConfigError(f"{where}: config {down['config']!r}: {CONFIG_ROOT / down['config']}.yaml not found")
    if not isinstance(down.get("overrides") or {}, dict):
        raise SweepConfigError(f"{where}.overrides must map override keys to values")
    fill = down.get("position_fill")
    if fill is not None and (not isinstance(fill, dict) or set(fill) != {"trained", "fill"}
                             or fill["fill"] not in FILLS or not isinstance(fill["trained"], int)):
        raise SweepConfigError(f"{where}.position_fill must be {{trained: N, fill: {'|'.join(FILLS)}}}, not {fill!r}")
    gen = down.get("generate")
    if gen is not None:
        if not isinstance(gen, dict) or not isinstance(gen.get("preset"), str):
            raise SweepConfigError(f"{where}.generate must be {{preset: NAME, subset: test, args: [...]}}, not {gen!r}")
        unknown = set(gen) - {"preset", "subset", "args"}
        if unknown:
            raise SweepConfigError(f"{where}.generate: unknown field(s) {', '.join(sorted(unknown))}")
        if "task.data" not in (down.get("overrides") or {}):
            raise SweepConfigError(f"{where}.generate: the summaries need the data: set overrides['task.data']")
    return {"config": down["config"], "overrides": dict(down.get("overrides") or {}), "position_fill": fill,
            "generate": None if gen is None else {"preset": gen["preset"], "subset": gen.get("subset", "test"),
                                                  "args": [str(a) for a in gen.get("args") or []]}}


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


# fairseq's config groups whose fields depend on the component named by their _name
COMPONENT_GROUPS = ("task", "model", "criterion", "optimizer", "lr_scheduler")


def unknown_override_keys(config: str, overrides: dict) -> list[str]:
    """What is wrong with ``overrides``' keys for base config ``config`` (``pretrain/tiny``), one line each:
    a key fairseq's config does not have. The runner passes every override with hydra's ``++`` (some
    keys are not in the base YAML), which adds a misspelt key instead of refusing it, so a run took
    ``optimization.max_updates=20`` and trained with the default. The fields of ``task``, ``model``,
    ``criterion``, ``optimizer`` and ``lr_scheduler`` are those of the component the run names (its
    ``_name`` override, else the base config's); a component without a dataclass is not looked into."""
    import dataclasses
    import difflib

    from omegaconf import OmegaConf

    from bart_ext.adapters import import_plugin

    import_plugin()  # our tasks, models, criteria and optimizer in fairseq's registries
    from fairseq.criterions import CRITERION_DATACLASS_REGISTRY
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_DATACLASS_REGISTRY
    from fairseq.optim import OPTIMIZER_DATACLASS_REGISTRY
    from fairseq.optim.lr_scheduler import LR_SCHEDULER_DATACLASS_REGISTRY
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    def component(group: str, name):
        if group == "model":
            cls = ARCH_MODEL_REGISTRY.get(name)
            return getattr(cls, "__dataclass", None) if cls is not None else MODEL_DATACLASS_REGISTRY.get(name)
        return {"task": TASK_DATACLASS_REGISTRY, "criterion": CRITERION_DATACLASS_REGISTRY,
                "optimizer": OPTIMIZER_DATACLASS_REGISTRY, "lr_scheduler": LR_SCHEDULER_DATACLASS_REGISTRY}[group].get(name)

    base = OmegaConf.load(CONFIG_ROOT / f"{config}.yaml")
    groups = {f.name: f.type for f in dataclasses.fields(FairseqConfig) if f.name != "_name"}
    problems = []
    for key in overrides:
        group, _, rest = key.partition(".")
        if group == "hydra":
            continue
        if group not in groups:
            close = difflib.get_close_matches(group, list(groups), 1)
            problems.append(f"{key}: fairseq's config has no group {group!r}"
                            + (f" (did you mean {close[0]}?)" if close else ""))
            continue
        name = rest.split(".")[0]
        if not name or name == "_name":
            continue
        if group in COMPONENT_GROUPS:
            chosen = overrides.get(f"{group}._name", OmegaConf.select(base, f"{group}._name"))
            schema = component(group, chosen)
            what = f"{group} {chosen!r} ({schema.__name__})" if schema else None
        else:
            schema = groups[group]
            what = f"{group} ({schema.__name__})" if dataclasses.is_dataclass(schema) else None
        if what is None:
            continue
        fields = [f.name for f in dataclasses.fields(schema)]
        if name not in fields:
            close = difflib.get_close_matches(name, fields, 1)
            problems.append(f"{key}: {what} has no field {name!r}" + (f" (did you mean {group}.{close[0]}?)" if close else ""))
    return problems


def check_override_keys(spec: dict, runs: list) -> None:
    """Refuse a sweep any of whose runs (or its downstream fine-tuning) sets a key fairseq's config does not
    have, naming each (``unknown_override_keys``), before anything runs."""
    problems: list[str] = []
    for run in runs:
        problems += [p for p in unknown_override_keys(spec["config"], run.overrides) if p not in problems]
    down = spec.get("downstream")
    if down:
        problems += [f"downstream: {p}" for p in unknown_override_keys(down["config"], down.get("overrides") or {})]
    if problems:
        raise SweepConfigError("override keys that fairseq's config does not have (hydra's ++ would add them unused):\n  "
                         + "\n  ".join(problems))


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
            raise SweepConfigError(f"lr_rule.rule must be sqrt or linear, not {rule.get('rule')!r}")
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


ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


def downstream_scores(record: dict | None) -> dict[str, float]:
    """A downstream result's figures: the fine-tuned validation loss and, where it was scored, each
    ROUGE F1 with its interval (``rouge1``, ``rouge1_low``, ``rouge1_high``, ...) and the distinct summaries."""
    if not record:
        return {}
    scores = {"finetune_valid_loss": float(record.get("finetune", {}).get("final_valid", math.nan))}
    for m in ROUGE_KEYS if record.get("rouge") else ():
        cell = record["rouge"][m]
        scores.update({m: cell["f1"], f"{m}_low": cell["low"], f"{m}_high": cell["high"]})
    if "distinct" in record:
        scores["distinct"] = float(record["distinct"])
    return scores


def write_tables(out: Path, spec: dict, runs: list[Run], results: dict[str, Result],
                 downstream: dict[str, dict] | None = None) -> tuple[Path, Path]:
    """results.csv (one row per run) and results.md (one row per grid point, seeds averaged).
    ``downstream`` (run key -> its downstream result.json) adds the fine-tuned validation loss
    and ROUGE columns; with one run per point, ROUGE shows its 95% bootstrap interval."""
    downstream = downstream or {}
    with_down = bool(spec.get("downstream"))
    with_rouge = with_down and bool((spec["downstream"] or {}).get("generate"))
    axes = list(runs[0].point) if runs else []
    csv_path, md_path = out / "results.csv", out / "results.md"
    down_cols = (["downstream_status", "finetune_valid_loss"] if with_down else []) + (
        [f"{m}{s}" for m in ROUGE_KEYS for s in ("", "_low", "_high")] + ["distinct"] if with_rouge else [])
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*axes, "status", "reason", "final_train_loss", "final_valid_loss", "updates", "seconds",
                    *down_cols, "run"])
        for r in runs:
            res = results.get(r.key)
            if res is None:
                continue
            rec = downstream.get(r.key)
            scores = downstream_scores(rec)
            extra = ([rec["status"] if rec else "", f"{scores['finetune_valid_loss']:.4f}" if rec else ""]
                     if with_down else [])
            extra += [f"{scores[c]:.4f}" if c in scores else "" for c in down_cols[2:]]
            w.writerow([*(r.point[a] for a in axes), res.status, res.reason, f"{res.final_train:.4f}",
                        f"{res.final_valid:.4f}", res.updates, f"{res.seconds:.1f}", *extra, r.dirname])
    groups: dict[tuple, list[Run]] = {}
    cols = [a for a in axes if a != "seed"]
    for r in runs:
        if r.key in results:
            groups.setdefault(tuple(r.point[a] for a in cols), []).append(r)
    head = [*(c.split(".")[-1] for c in cols), "runs", "final train loss", "final valid loss", "status"]
    head += (["fine-tuned valid loss"] if with_down else []) + (
        ["ROUGE-1", "ROUGE-2", "ROUGE-L", "distinct summaries"] if with_rouge else [])
    lines = [f"# {spec['name']}", "", spec.get("description", ""), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def mean(xs, digits=3):
        xs = [x for x in xs if math.isfinite(x)]
        return f"{sum(xs) / len(xs):.{digits}f}" if xs else "-"

    for values, group in groups.items():
        rs = [results[r.key] for r in group]
        status = ", ".join(sorted({r.status for r in rs}))
        if any(r.status != "ok" for r in rs):
            status += " (" + "; ".join(r.reason for r in rs if r.status != "ok") + ")"
        cells = [*values, str(len(rs)), mean([r.final_train for r in rs]), mean([r.final_valid for r in rs]), status]
        recs = [downstream.get(r.key) for r in group]
        scores = [downstream_scores(x) for x in recs if x]
        if with_down:
            failed = [x["reason"] for x in recs if x and x["status"] != "ok"]
            cell = mean([x.get("finetune_valid_loss", math.nan) for x in scores]) if scores else "not run"
            cells.append(cell + (f" ({'; '.join(failed)})" if failed else ""))
        if with_rouge:
            scored = [x for x in scores if "rouge1" in x]
            for m in ROUGE_KEYS:
                if len(scored) == 1:
                    x = scored[0]
                    cells.append(f"{x[m]:.2f} [{x[m + '_low']:.2f}, {x[m + '_high']:.2f}]")
                else:
                    cells.append(mean([x[m] for x in scored], 2))
            cells.append(mean([x["distinct"] for x in scored], 0) if scored else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Losses are fairseq's (base 2); train is the last logged interval, valid the last validation.")
    if with_down:
        lines.append(f"Downstream: each run's last checkpoint fine-tuned with {spec['downstream']['config']}"
                     + (f", then its {spec['downstream']['generate']['subset']} set summarized with the "
                        f"{spec['downstream']['generate']['preset']} preset and scored (ROUGE F1 x 100; "
                        "[95% bootstrap interval] where the point has one run)" if with_rouge else "") + ".")
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path
