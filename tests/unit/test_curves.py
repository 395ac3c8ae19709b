"""Loss-curve figures: panels of one grid share a y range when asked."""
from __future__ import annotations

from bart_ext.curves import Curves, plot


def _ylims(monkeypatch, tmp_path, same_scale: bool) -> list[tuple[float, float]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to read its axes
    panels = [("low", {"a": Curves(train=[(1, 3.0), (2, 2.0)])}), ("high", {"a": Curves(train=[(1, 12.0), (2, 9.0)])})]
    plot(panels, tmp_path / "f.png", same_scale=same_scale)
    assert (tmp_path / "f.png").stat().st_size > 0
    return [ax.get_ylim() for ax in figures[0].axes]


def test_same_scale_gives_every_loss_panel_one_range(monkeypatch, tmp_path):
    low, high = _ylims(monkeypatch, tmp_path, same_scale=False)
    assert low[1] < 4 and high[0] > 8  # each panel fits its own curves
    shared = _ylims(monkeypatch, tmp_path, same_scale=True)
    assert shared[0] == shared[1] and shared[0][0] < 2 and shared[0][1] > 12


def _train_log(path, points):
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"[2026-12-05 17:11:57,493][train_inner][INFO] - "
                            f"{json.dumps({'num_updates': str(u), 'loss': str(v)})}\n" for u, v in points))


def test_token_budget_sweeps_are_drawn_against_tokens_seen(monkeypatch, tmp_path):
    """Runs of one token budget at update_freq 1 and 4 end at the same x (tokens), not at 4x apart."""
    import json

    import scripts.sweep as sweep_script
    from bart_ext.sweep import Run, tokens_per_update

    assert Curves(train=[(2, 5.0)], valid=[(4, 4.0)]).scaled(10).train == [(20, 5.0)]
    base = {"dataset.max_tokens": None, "dataset.batch_size": 32, "task.tokens_per_sample": 64}
    runs = []
    for k, updates in ((1, 8), (4, 2)):
        run = Run(f"update_freq={k}", {"optimizer": "adam", "optimization.update_freq": str(k)},
                  {**base, "optimization.update_freq": [k]})
        run.key = f"k{k}"
        (tmp_path / run.dirname).mkdir(parents=True)
        (tmp_path / run.dirname / "result.json").write_text(json.dumps({"result": {"status": "ok"}}))
        _train_log(tmp_path / run.dirname / "train.log", [(u, 9.0 - u / updates) for u in range(1, updates + 1)])
        runs.append(run)
    assert tokens_per_update(runs[1].overrides) == 4 * 32 * 64
    drawn = {}
    monkeypatch.setattr(sweep_script, "plot", lambda panels, out, title, **kw: drawn.update(panels=panels, **kw))
    for budget, xlabel in ((16384, "tokens seen"), (None, "update")):
        sweep_script.figure({"name": "t", "grid": {"optimizer": [], "optimization.update_freq": []},
                             "token_budget": budget}, runs, tmp_path, tmp_path)
        assert drawn["xlabel"].startswith(xlabel)
        ends = [c.train[-1][0] for c in drawn["panels"][0][1].values()]
        assert ends == ([8 * 2048, 2 * 8192] if budget else [8, 2])


def test_a_bar_system_drawn_as_a_curve_keeps_the_curves_colour(monkeypatch, tmp_path):
    """The demo's figure: 'pretrained' and 'from scratch' are curves in the fine-tuning panel and
    bars in the ROUGE panel; each keeps one colour, and the baselines take colours no curve has."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.colors
    import matplotlib.container
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    curve = Curves(train=[(1, 3.0), (2, 2.0)], valid=[(2, 2.5)])
    panels = [("pretraining", {"model": curve}), ("fine-tuning", {"pretrained": curve, "from scratch": curve})]
    scores = {"rouge1": (30.0, 29.0, 31.0), "rouge2": (9.0, 8.0, 10.0)}
    systems = {name: scores for name in ("lead-1", "lead-3", "from scratch", "pretrained")}
    plot(panels, tmp_path / "f.png", bars=("ROUGE", systems))
    fine_tuning, rouge = figures[0].axes[1], figures[0].axes[2]
    line = {ln.get_label(): matplotlib.colors.to_hex(ln.get_color()) for ln in fine_tuning.get_lines()}
    bar = {c.get_label(): matplotlib.colors.to_hex(c.patches[0].get_facecolor()) for c in rouge.containers
           if isinstance(c, matplotlib.container.BarContainer)}
    assert bar["pretrained"] == line["pretrained (train)"] == line["pretrained (valid)"]
    assert bar["from scratch"] == line["from scratch (train)"]
    assert bar["pretrained"] != bar["from scratch"]
    assert len(set(bar.values())) == 4  # the baselines get colours of their own


def test_bar_colours_skip_the_curves_colours_and_wrap_around():
    from bart_ext.curves import bar_colours

    cycle = ["c0", "c1", "c2"]
    assert bar_colours([["a", "b"]], ["x", "b", "y"], cycle) == {"x": "c0", "b": "c1", "y": "c2"}
    assert bar_colours([["a", "b"]], ["b", "x", "y", "z"], cycle) == {"b": "c1", "x": "c0", "y": "c2", "z": "c0"}
    assert bar_colours([], ["x", "y"], cycle) == {"x": "c0", "y": "c1"}
