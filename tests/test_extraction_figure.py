"""The extraction figure ``qgcal run`` draws: one panel per pT bin, quark and gluon on each.

The figure is read back from matplotlib's objects (the figure is caught where the drawing code
closes it), so a panel that lost a parton, a second legend or a hidden axis label shows here.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from matplotlib.colors import to_rgba

from qgcal import plotting


def _bin(k: int, n_bins: int, *, gluon_mc: bool = True, empty: bool = False) -> SimpleNamespace:
    x = np.linspace(0.0, 1.0, n_bins)
    quark = np.exp(-(((x - 0.3) / 0.1) ** 2))
    gluon = np.exp(-(((x - 0.6) / 0.15) ** 2))
    quark, gluon = quark / quark.sum(), gluon / gluon.sum()
    quark[3] = -0.01  # a bin below zero: flagged
    shapes = {"p_q_mc": quark, "p_g_mc": gluon if gluon_mc else np.full(n_bins, np.nan)}
    shapes |= {"p_q_data": 1.05 * quark, "p_g_data": 0.95 * gluon}
    if empty:
        shapes = {key: np.full(n_bins, np.nan) for key in shapes}
    errors = {f"{key}_err": np.full(n_bins, 1e-3) for key in shapes}
    return SimpleNamespace(pt_low=500.0 + 100 * k, pt_high=600.0 + 100 * k, flags=[], **shapes, **errors)


@pytest.fixture
def caught(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures the drawing code closes, kept open for the test (closed at its end)."""
    plt = plotting.setup_matplotlib()
    figures: list[Any] = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", figures.append)
    yield figures
    for fig in figures:
        real_close(fig)


def _colours(ax: Any) -> tuple[set[tuple[float, ...]], set[tuple[float, ...]]]:
    """(edge colours of the step lines, colours of the data points) on an axes."""
    from matplotlib.patches import StepPatch

    lines = {tuple(p.get_edgecolor()) for p in ax.patches if isinstance(p, StepPatch) and not p.get_fill()}
    points = {tuple(to_rgba(c.lines[0].get_color())) for c in ax.containers}
    return lines, points


def test_one_panel_per_pt_bin_with_both_partons(small_sample: Path, make_config: Any, caught: list[Any]) -> None:
    _, cfg = make_config(small_sample)
    name = min(cfg.taggers)
    n_bins = len(cfg.taggers[name].bins.bin_edges()) - 1
    bins = [_bin(k, n_bins) for k in range(5)]  # odd: the last cell of two columns stays empty
    out = Path(cfg.output_path)
    out.mkdir(parents=True)
    path = plotting._extraction_figure(cfg, "nominal", name, bins, out)
    assert path.is_file() and path.stat().st_size > 10_000
    (fig,) = caught
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(fig.axes) == 6 and len(visible) == 5
    quark, gluon = (to_rgba(plotting.PARTON_STYLE[p][0]) for p in ("quark", "gluon"))
    for ax, ex in zip(visible, bins, strict=True):
        assert ax.get_title() == f"{ex.pt_low:g} < jet pT < {ex.pt_high:g} GeV"
        lines, points = _colours(ax)
        assert lines == {quark, gluon} and points == {quark, gluon}
        assert any(t.get_text().startswith("unphysical < 0: 1 bin(s)") for t in ax.texts)
    # one legend for the figure (MC quark, data quark, MC gluon, data gluon), none on the panels
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "MC, extracted quark (stat. unc.)",
        "data, extracted quark",
        "MC, extracted gluon (stat. unc.)",
        "data, extracted gluon",
    ]
    assert all(ax.get_legend() is None for ax in fig.axes)
    # the tagger axis is labelled at the bottom of each column: the bottom row's left panel, and
    # the panel above the empty cell
    labelled = [ax for ax in visible if ax.get_xlabel()]
    assert labelled == [visible[3], visible[4]]
    assert all(ax.xaxis.get_tick_params()["labelbottom"] for ax in labelled)
    assert not any(ax.xaxis.get_tick_params()["labelbottom"] for ax in visible[:3])


def test_a_missing_shape_leaves_its_parton_out_and_an_empty_bin_says_so(
    small_sample: Path, make_config: Any, caught: list[Any]
) -> None:
    _, cfg = make_config(small_sample)
    name = min(cfg.taggers)
    n_bins = len(cfg.taggers[name].bins.bin_edges()) - 1
    bins = [_bin(0, n_bins, empty=True), _bin(1, n_bins, gluon_mc=False)]
    out = Path(cfg.output_path)
    out.mkdir(parents=True)
    plotting._extraction_figure(cfg, "nominal", name, bins, out)
    (fig,) = caught
    empty, partial = fig.axes
    assert "undefined (see flags)" in [t.get_text() for t in empty.texts]
    lines, points = _colours(partial)
    quark, gluon = (to_rgba(plotting.PARTON_STYLE[p][0]) for p in ("quark", "gluon"))
    assert lines == {quark} and points == {quark, gluon}
    # the legend comes from the first panel with something drawn
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "MC, extracted quark (stat. unc.)",
        "data, extracted quark",
        "data, extracted gluon",
    ]
