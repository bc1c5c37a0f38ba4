"""Plots of the extracted quark and gluon shapes, data vs MC, per pT bin (mplhep, ATLAS style).

Every figure carries the experiment label (:func:`experiment_label`). Text uses only glyphs
the style's fonts have (no mathtext symbols such as ``\\oplus`` that matplotlib would
substitute with a warning): tests/test_plot_warnings.py checks a plot run logs and warns nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qgcal.artifacts import atomic_path
from qgcal.config import Config

__all__ = [
    "DATA_STYLE",
    "experiment_label",
    "label_lines",
    "plot_extractions",
    "setup_matplotlib",
    "shape_errors",
]

DATA_STYLE = {"fmt": "o", "color": "k", "markersize": 3, "elinewidth": 1}


def setup_matplotlib() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    plt.style.use(mplhep.style.ATLAS)
    return plt


def label_lines(cfg: Config | None, label: str | None = None, *, simulation: bool = False) -> tuple[str, str]:
    """('<label>', 'sqrt(s) = 13 TeV, 20 fb^-1') for a config; without one, a simulation label."""
    if cfg is None:
        return (label or "Simulation Internal"), ""
    text = label or cfg.plots.label
    if simulation and not text.startswith("Simulation"):
        text = f"Simulation {text}"
    lumi = f"{cfg.lumi_pb / 1000.0:.3g} fb" if cfg.lumi_pb >= 1000.0 else f"{cfg.lumi_pb:.3g} pb"
    sub = rf"√s = {cfg.plots.com_energy_tev:g} TeV" + ("" if simulation else rf", {lumi}$^{{-1}}$")
    return text, sub


def experiment_label(target: Any, label: str, sub: str = "", *, loc: str = "upper left", figure: bool = False) -> None:
    """'ATLAS <label>' (bold italic ATLAS) and an energy/luminosity line, as mplhep.atlas.label draws them.

    Built from offset boxes: mplhep's label redraws the whole figure to place the text
    (about 1 s per figure here), these need no extra draw. ``figure=True``: ``target``
    is a figure and the label goes in its top-left corner.
    """
    from matplotlib.offsetbox import AnchoredOffsetbox, HPacker, TextArea, VPacker

    atlas = TextArea("ATLAS", textprops={"fontweight": "bold", "fontstyle": "italic", "fontsize": 13})
    text = TextArea(f" {label}", textprops={"fontsize": 13})
    rows: list[Any] = [HPacker(children=[atlas, text], pad=0, sep=0)]
    if sub:
        rows.append(TextArea(sub, textprops={"fontsize": 10}))
    box = VPacker(children=rows, pad=0, sep=3, align="left")
    if figure:
        anchored = AnchoredOffsetbox(
            loc="upper left",
            child=box,
            frameon=False,
            pad=0.2,
            borderpad=0.3,
            bbox_to_anchor=(0.0, 1.0),
            bbox_transform=target.transFigure,
        )
        target.add_artist(anchored)
    else:
        target.add_artist(AnchoredOffsetbox(loc=loc, child=box, frameon=False, pad=0.2, borderpad=0.4))


def _normalised_variance(values: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """Per-bin variance of h_i / sum(h): (B^2 V_A + A^2 V_B) / (A + B)^4, A = bin i, B = the rest."""
    tot, vtot = float(np.sum(values)), float(np.sum(variances))
    if not tot > 0:
        return np.full_like(values, np.nan, dtype=float)
    a, va = values, variances
    b, vb = tot - a, vtot - variances
    return (b * b * va + a * a * vb) / tot**4


def shape_errors(ex: Any) -> dict[str, np.ndarray] | None:
    """Statistical errors of the extracted shapes (p_q/p_g, MC and data), first order with
    the fractions fixed, as the efficiencies' errors (qgcal.calibration.efficiencies).

    From the histograms of an :class:`qgcal.extraction.Extraction`; from extraction.json,
    the ``*_err`` entries when it has them; None when neither is there.
    """
    stored = {k: getattr(ex, f"{k}_err", None) for k in ("p_q_mc", "p_g_mc", "p_q_data", "p_g_data")}
    if all(v is not None for v in stored.values()):
        return {k: np.asarray(v, dtype=float) for k, v in stored.items()}
    if not all(hasattr(ex, k) for k in ("mc_forward", "mc_central", "data_forward", "data_central")):
        return None
    inv = ex.fractions().inverse()
    out = {}
    with np.errstate(all="ignore"):
        for sample, fwd, cen in (("mc", ex.mc_forward, ex.mc_central), ("data", ex.data_forward, ex.data_central)):
            v_f = _normalised_variance(fwd.values, fwd.variances)
            v_c = _normalised_variance(cen.values, cen.variances)
            out[f"p_q_{sample}"] = np.sqrt(inv[0, 0] ** 2 * v_f + inv[0, 1] ** 2 * v_c)
            out[f"p_g_{sample}"] = np.sqrt(inv[1, 0] ** 2 * v_f + inv[1, 1] ** 2 * v_c)
    return out


def _flag_negative(ax: Any, edges: np.ndarray, shapes: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> int:
    """Mark the bins where a shape is below zero (no fraction of jets is): red triangles on every
    negative value, and the bins more than 1 sigma below zero shaded. Returns how many are shaded."""
    significant = np.zeros(len(edges) - 1, dtype=bool)
    n_negative = 0
    centres = 0.5 * (edges[1:] + edges[:-1])
    for values, err in shapes:
        v = np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)
        neg = v < 0
        n_negative = max(n_negative, int(neg.sum()))
        if neg.any():
            ax.plot(centres[neg], v[neg], "v", color="red", markersize=3, linestyle="none")
        e = np.zeros_like(v) if err is None else np.nan_to_num(np.asarray(err, dtype=float), nan=0.0)
        significant |= v + e < 0
    for i in np.nonzero(significant)[0]:
        ax.axvspan(edges[i], edges[i + 1], color="red", alpha=0.18, linewidth=0)
    if n_negative:
        ax.text(
            0.98,
            0.62,
            f"unphysical < 0: {n_negative} bin(s) (red), {int(significant.sum())} by > 1 sigma (shaded)",
            transform=ax.transAxes,
            ha="right",
            fontsize=7,
            color="red",
        )
    return int(significant.sum())


def _shape_panel(ax: Any, edges: np.ndarray, parton: str, mc: np.ndarray, data: np.ndarray, err: Any) -> None:
    centres = 0.5 * (edges[1:] + edges[:-1])
    if not np.isnan(mc).all():
        ax.stairs(mc, edges, label=f"MC, extracted {parton}", color="C0")
        if err is not None:
            e = err[f"p_{parton[0]}_mc"]
            ax.stairs(mc + e, edges, baseline=mc - e, fill=True, color="C0", alpha=0.3, label="MC stat. unc.")
    if not np.isnan(data).all():
        yerr = None if err is None else err[f"p_{parton[0]}_data"]
        ax.errorbar(centres, data, yerr=yerr, label=f"data, extracted {parton}", **DATA_STYLE)
    ax.axhline(0.0, color="grey", linewidth=0.6)
    key = f"p_{parton[0]}"
    _flag_negative(
        ax,
        edges,
        [(mc, None if err is None else err[f"{key}_mc"]), (data, None if err is None else err[f"{key}_data"])],
    )


def plot_extractions(cfg: Config, syst: str, extractions: Mapping[str, Sequence[Any]], out_dir: Path) -> list[Path]:
    """One PNG per tagger: rows = pT bins, columns = quark, gluon; stat errors on data and MC."""
    plt = setup_matplotlib()
    written = []
    for name, bins in sorted(extractions.items()):
        edges = np.asarray(cfg.taggers[name].bins.bin_edges())
        n = len(bins)
        fig, axes = plt.subplots(n, 2, figsize=(11, 3.2 * n + 0.6), squeeze=False)
        top = 1.0 - 0.75 / (3.2 * n + 0.6)
        fig.subplots_adjust(left=0.09, right=0.98, bottom=0.04, top=top, hspace=0.45, wspace=0.25)
        for i, ex in enumerate(bins):
            err = shape_errors(ex)
            for j, (parton, mc, data) in enumerate(
                (("quark", ex.p_q_mc, ex.p_q_data), ("gluon", ex.p_g_mc, ex.p_g_data))
            ):
                ax = axes[i][j]
                _shape_panel(ax, edges, parton, np.asarray(mc, float), np.asarray(data, float), err)
                ax.set_title(f"{ex.pt_low:g} < jet pT < {ex.pt_high:g} GeV", fontsize=11)
                ax.set_xlabel(f"{name} (tagger value)", fontsize=11)
                ax.set_ylabel("fraction of jets per bin", fontsize=10)
                if ex.flags:
                    ax.text(0.02, 0.9, ",".join(sorted(set(ex.flags))), transform=ax.transAxes, fontsize=8, color="red")
                if err is None:
                    ax.text(0.02, 0.8, "no errors stored", transform=ax.transAxes, fontsize=7, color="grey")
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=8, loc="upper right")
                else:
                    ax.text(0.5, 0.5, "undefined (see flags)", transform=ax.transAxes, ha="center")
        label, sub = label_lines(cfg)
        experiment_label(fig, label, sub, figure=True)
        fig.text(0.98, 0.998, f"{cfg.name}: {name}, {syst}", ha="right", va="top", fontsize=12)
        path = out_dir / f"extracted_{name}.png"
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, format="png", dpi=70)
        plt.close(fig)
        written.append(path)
    return written
