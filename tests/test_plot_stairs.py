"""qgcal.plotting.stairs draws what matplotlib's ``Axes.stairs`` draws, byte for byte.

The helper only skips matplotlib's Bezier search for a step's data limits; if it got a limit,
a sticky baseline or a NaN gap wrong, the autoscaled axes (so the PNG) would differ.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from qgcal.plotting import setup_matplotlib, stairs

EDGES = np.linspace(0.0, 60.0, 61)


def _values() -> list[np.ndarray]:
    base = np.abs(np.sin(np.arange(60.0))) * 0.03 - 0.005  # some bins below zero
    gap = base.copy()
    gap[5:9] = np.nan  # an undefined stretch, as an extraction with empty bins gives
    return [base, gap, 3.0 * base, -base]


def _png(draw: Callable[..., Any]) -> bytes:
    plt = setup_matplotlib()
    fig, axes = plt.subplots(2, 2)
    for ax, values in zip(axes.flat, _values(), strict=True):
        err = 0.1 * np.abs(values) + 1e-3
        draw(ax, values, EDGES, color="C0", label="line")
        draw(ax, values + err, EDGES, baseline=values - err, fill=True, color="C0", alpha=0.3, label="band")
        draw(ax, values, EDGES, baseline=None, color="C1", linestyle="--")
        ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=70)
    plt.close(fig)
    return buf.getvalue()


def test_stairs_draws_the_same_bytes_as_matplotlib() -> None:
    ours = _png(stairs)
    theirs = _png(lambda ax, values, edges, **kw: ax.stairs(values, edges, **kw))
    assert ours[:8] == b"\x89PNG\r\n\x1a\n"
    assert ours == theirs


@pytest.mark.parametrize("baseline", [0.0, -0.02, None])
def test_stairs_sets_the_same_limits(baseline: float | None) -> None:
    plt = setup_matplotlib()
    fig, (a, b) = plt.subplots(1, 2)
    values = _values()[1]
    stairs(a, values, EDGES, baseline=baseline, color="C0")
    b.stairs(values, EDGES, baseline=baseline, color="C0")
    assert a.get_xlim() == b.get_xlim()
    assert a.get_ylim() == b.get_ylim()
    assert a.dataLim.bounds == b.dataLim.bounds
    plt.close(fig)
