"""A plot run prints no library warnings: neither Python warnings nor matplotlib's log messages.

matplotlib reports a glyph it has to take from another font ("Substituting symbol \\oplus
from Computer Modern") through logging at INFO, not as a warning, and the CLI shows INFO:
the demo printed ~24 such lines. The check below fails on any warning, and on any log record
of matplotlib/mplhep at INFO or above; the first test proves it catches exactly that message.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_outputs import published_small  # noqa: F401  (the session fixture: a sweep + publish)

LIBRARIES = ("matplotlib", "mplhep", "PIL", "fontTools")


def library_noise(run: Callable[[], Any], caplog: pytest.LogCaptureFixture) -> list[str]:
    """Run ``run``; return every warning and every library log record (INFO and above) it produced."""
    caplog.clear()
    with caplog.at_level(logging.INFO), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
    noise = [f"warning: {w.category.__name__}: {w.message}" for w in caught]
    noise += [
        f"log {r.name} {r.levelname}: {r.getMessage()}"
        for r in caplog.records
        if r.name.split(".")[0] in LIBRARIES or r.levelno >= logging.WARNING
    ]
    return noise


def test_the_check_catches_a_substituted_glyph(caplog):
    from qgcal.plotting import setup_matplotlib

    def draw() -> None:
        plt = setup_matplotlib()
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1], label=r"stat $\oplus$ syst")  # the old legend text
        ax.legend()
        fig.savefig(io.BytesIO(), format="png")
        plt.close(fig)

    noise = library_noise(draw, caplog)
    assert any("Substituting symbol" in n for n in noise), noise


def test_combined_plots_emit_no_warnings(published_small, caplog):  # noqa: F811
    from qgcal.outputs import rebuild_report

    cfg = published_small["cfg"]
    out: dict[str, Any] = {}

    def draw() -> None:
        out["pub"] = rebuild_report(cfg, plots=True)

    assert library_noise(draw, caplog) == []
    names = {p.name for p in out["pub"].plots}
    assert {f"closure_{t}.png" for t in cfg.taggers} <= names
    assert {f"extracted_{t}.png" for t in cfg.taggers} <= names


def test_roc_plot_emits_no_warnings(tmp_path: Path, caplog):
    from qgcal.training import BinMetrics, TrainResult, write_training_outputs

    eff = np.linspace(0.0, 1.0, 50)
    curves = {"model": (eff, 1.0 - eff**3), "nTracks": (eff, 1.0 - eff**2)}
    result = TrainResult(
        model=None,
        features=("pt", "nTracks"),
        pt_bins_gev=(500.0, 600.0, 800.0),
        reference_feature="nTracks",
        metrics=[BinMetrics(500.0, 600.0, 10, 10, 0.8, 0.7), BinMetrics(600.0, 800.0, 10, 10, 0.81, 0.72)],
        roc=[curves, curves],
        training_sample_sha256="0" * 64,
    )
    out: dict[str, Any] = {}

    def draw() -> None:
        out["paths"] = write_training_outputs(result, tmp_path / "gbdt-training")

    assert library_noise(draw, caplog) == []
    assert out["paths"]["roc"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
