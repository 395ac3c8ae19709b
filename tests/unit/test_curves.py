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
