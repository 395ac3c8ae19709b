"""Loss curves from fairseq's JSON logs (``--log-format json``), and their plots.

fairseq writes one JSON object per log line, tagged ``[train_inner]`` (every
``--log-interval`` updates), ``[valid]`` (every validation) and ``[train]`` (end of
epoch). ``read_log`` collects the first two as (update, loss) points; the loss is in
base 2, as fairseq reports it.
"""
from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

_RECORD = re.compile(r"\]\[(train_inner|valid|train)\]\[INFO\] - (\{.*\})\s*$")


@dataclass
class Curves:
    train: list[tuple[int, float]] = field(default_factory=list)
    valid: list[tuple[int, float]] = field(default_factory=list)
    last_train: dict = field(default_factory=dict)  # the last [train] (end of epoch) record

    def scaled(self, factor: float) -> "Curves":
        """The same curves with x (the update) multiplied by ``factor``: tokens seen, say."""
        return Curves([(u * factor, v) for u, v in self.train], [(u * factor, v) for u, v in self.valid],
                      self.last_train)

    def final(self, which: str = "valid") -> float:
        points = self.valid if which == "valid" else self.train
        return points[-1][1] if points else math.nan


def parse_record(line: str) -> tuple[str, dict] | None:
    """``(tag, record)`` for a fairseq JSON log line, else None."""
    m = _RECORD.search(line)
    if not m:
        return None
    try:
        return m.group(1), json.loads(m.group(2))
    except json.JSONDecodeError:
        return None


def time_left(seconds: float) -> str:
    """``seconds`` as a progress line says it: "40 s left", "12 min left"."""
    return f"{seconds:.0f} s left" if seconds < 90 else f"{seconds / 60:.0f} min left"


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan  # fairseq logs inf/nan losses as strings too


def read_log(path: Path) -> Curves:
    """Train and validation loss by update from a fairseq log file.

    A log that a resumed run appended to holds the updates after the last checkpoint twice (as
    the interrupted run logged them and as the resumed one did): the later record of an update wins,
    and the points come in update order."""
    curves = Curves()
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} not found (a fairseq training log)")
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        rec = parse_record(line)
        if rec is None:
            continue
        tag, r = rec
        if tag == "train_inner" and "loss" in r:
            curves.train.append((int(r["num_updates"]), _number(r["loss"])))
        elif tag == "valid" and "valid_loss" in r:
            curves.valid.append((int(r["valid_num_updates"]), _number(r["valid_loss"])))
        elif tag == "train":
            curves.last_train = r
    curves.train = sorted(dict(curves.train).items())
    curves.valid = sorted(dict(curves.valid).items())
    return curves


def bar_colours(curve_labels: list[list[str]], systems: list[str], cycle: list[str]) -> dict[str, str]:
    """The colour of each bar system: a system drawn as a curve too (``curve_labels``: each panel's
    labels in order, coloured by position in ``cycle``) keeps that curve's colour; the others take
    the cycle's colours in order, skipping those."""
    curve = {}
    for labels in curve_labels:
        for i, label in enumerate(labels):
            curve.setdefault(label, cycle[i % len(cycle)])
    kept = {system: curve[system] for system in systems if system in curve}
    free = itertools.cycle([c for c in cycle if c not in kept.values()] or cycle)
    return {system: kept.get(system) or next(free) for system in systems}


def plot(panels: list[tuple[str, dict[str, Curves]]], out: Path, suptitle: str = "",
         bars: tuple[str, dict[str, dict[str, tuple[float, float, float]]]] | None = None,
         same_scale: bool = False, xlabel: str = "update") -> Path:
    """One subplot per ``(title, {label: curves})`` panel: train solid, validation dashed, same colour.
    ``same_scale`` gives every loss panel one y range (panels of one grid, compared by eye);
    ``xlabel`` names the curves' x (updates unless the caller rescaled them, see ``Curves.scaled``).

    Non-finite losses are left out of the lines and marked with an x at the top of the panel.
    ``bars`` adds a last panel ``(title, {system: {metric: (mean, low, high)}})``: grouped bars
    per metric with the intervals as error bars, a system that is also a curve in its curve's colour
    (``bar_colours``). What was drawn is listed next to the image
    (``OUT.json``: panel -> label -> points or bars).
    """
    import logging

    # matplotlib logs its start-up and font search at DEBUG, which shows when a library
    # (absl, via rouge-score) has set the root logger that low.
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(panels) + (bars is not None)
    fig, axes = plt.subplots(1, count, figsize=(6.2 * count, 4.4), squeeze=False)
    drawn: dict[str, dict[str, int]] = {}
    for ax, (title, runs) in zip(axes[0], panels):
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, (label, c) in enumerate(runs.items()):
            colour = colours[i % len(colours)]
            for points, style, suffix in ((c.train, "-", "train"), (c.valid, "--", "valid")):
                good = [(u, v) for u, v in points if math.isfinite(v)]
                drawn.setdefault(title, {})[f"{label} ({suffix})"] = len(good)
                if good:
                    # a marker on each point of a short curve and of a sparse validation one, so that
                    # a straight dashed segment is not read as measured in between
                    sparse = len(good) < 4 or (suffix == "valid" and len(good) <= 20)
                    ax.plot(*zip(*good), style, color=colour, label=f"{label} ({suffix})", linewidth=1.5,
                            marker="o" if sparse else None, markersize=4 if sparse and len(good) >= 4 else None)
                bad = [u for u, v in points if not math.isfinite(v)]
                if bad:
                    ax.plot(bad, [1.0] * len(bad), "x", color=colour, transform=ax.get_xaxis_transform(),
                            label=f"{label} ({suffix}: non-finite)")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss (base 2)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if same_scale and len(panels) > 1:
        limits = [ax.get_ylim() for ax in axes[0][: len(panels)]]
        for ax in axes[0][: len(panels)]:
            ax.set_ylim(min(lo for lo, _ in limits), max(hi for _, hi in limits))
    if bars is not None:
        title, systems = bars
        ax = axes[0][-1]
        metrics = list(next(iter(systems.values()), {}))
        width = 0.8 / max(1, len(systems))
        colour_of = bar_colours([list(runs) for _, runs in panels], list(systems),
                                plt.rcParams["axes.prop_cycle"].by_key()["color"])
        for i, (system, scores) in enumerate(systems.items()):
            xs = [m + (i - (len(systems) - 1) / 2) * width for m in range(len(metrics))]
            means = [scores[m][0] for m in metrics]
            errs = [[scores[m][0] - scores[m][1] for m in metrics], [scores[m][2] - scores[m][0] for m in metrics]]
            ax.bar(xs, means, width, yerr=errs, capsize=3, label=system, color=colour_of[system])
            drawn.setdefault(title, {})[system] = len(metrics)
        ax.set_xticks(range(len(metrics)), metrics)
        ax.set_ylabel("F1 x 100 (95% bootstrap interval)")
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    out.with_suffix(".json").write_text(json.dumps(drawn, indent=1))
    return out
