"""Publication plots of the combined results (mplhep, ATLAS style, Agg backend).

Files in ``results/combined/plots/``:

* ``sf_<tagger>_wp<wp>.png``: SF vs pT, quark and gluon panels: statistical
  error bars, the total (stat + syst) and systematic bands, one outline per
  uncertainty group; open markers = flagged bins; undefined bins are omitted;
* ``breakdown_<tagger>_wp<wp>.png``: relative uncertainty (%) per group vs pT,
  upward errors above zero and downward errors below, with stat and total;
* ``quark_fractions.png``: f_Fq and f_Cq vs pT, one panel per tagger (from
  ``results/nominal/extraction.json``);
* ``extracted_<tagger>.png``: the nominal extracted quark/gluon shapes, data vs
  MC (copied from ``results/nominal/plots`` when up to date, else drawn).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from qgcal.artifacts import atomic_path
from qgcal.config import Config
from qgcal.errors import ArtifactError
from qgcal.outputs.correction import bin_edges, series
from qgcal.plotting import plot_extractions, setup_matplotlib

__all__ = [
    "DPI",
    "extraction_plots",
    "plot_breakdown",
    "plot_fractions",
    "plot_scale_factors",
    "write_plots",
]

DPI = 80
_PARTON_LABEL = {"quark": "quark efficiency SF", "gluon": "gluon rejection SF"}


def _arr(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def _save(fig: Any, path: Path) -> Path:
    plt = setup_matplotlib()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)
    return path


def _label(ax: Any, cfg: Config) -> None:
    """'ATLAS <label>' and the energy/luminosity line, as mplhep.atlas.label draws them.

    Built from offset boxes: mplhep's label redraws the whole figure to place the
    text (about 1 s per figure here), these need no extra draw.
    """
    from matplotlib.offsetbox import AnchoredOffsetbox, HPacker, TextArea, VPacker

    atlas = TextArea("ATLAS", textprops={"fontweight": "bold", "fontstyle": "italic", "fontsize": 13})
    label = TextArea(f" {cfg.plots.label}", textprops={"fontsize": 13})
    lumi = f"{cfg.lumi_pb / 1000.0:.3g} fb" if cfg.lumi_pb >= 1000.0 else f"{cfg.lumi_pb:.3g} pb"
    sub = TextArea(rf"√s = {cfg.plots.com_energy_tev:g} TeV, {lumi}$^{{-1}}$", textprops={"fontsize": 10})
    box = VPacker(children=[HPacker(children=[atlas, label], pad=0, sep=0), sub], pad=0, sep=3, align="left")
    ax.add_artist(AnchoredOffsetbox(loc="upper left", child=box, frameon=False, pad=0.2, borderpad=0.4))


def _by_tagger_wp(records: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, list[Mapping[str, Any]]]]:
    out: dict[tuple[str, str], dict[str, list[Mapping[str, Any]]]] = {}
    for (tagger, wp, parton), recs in series(records).items():
        out.setdefault((tagger, wp), {})[parton] = recs
    return out


def _group_arrays(recs: Sequence[Mapping[str, Any]], group: str) -> tuple[np.ndarray, np.ndarray]:
    up = _arr([r["groups"].get(group, {}).get("up") for r in recs])
    down = _arr([r["groups"].get(group, {}).get("down") for r in recs])
    return up, down


def _sf_panel(ax: Any, recs: Sequence[Mapping[str, Any]], groups: Sequence[str], parton: str) -> None:
    edges = np.asarray(bin_edges(recs))
    centres, half = 0.5 * (edges[1:] + edges[:-1]), 0.5 * (edges[1:] - edges[:-1])
    sf, stat = _arr([r["sf"] for r in recs]), _arr([r["stat"] for r in recs])
    up, down = _arr([r["total_up"] for r in recs]), _arr([r["total_down"] for r in recs])
    tot_up, tot_down = np.hypot(up, stat), np.hypot(down, stat)
    ax.stairs(sf + tot_up, edges, baseline=sf - tot_down, fill=True, color="#f5d76e", label=r"stat $\oplus$ syst")
    ax.stairs(sf + up, edges, baseline=sf - down, fill=True, color="#8fd19e", label="syst (total)")
    colours = [f"C{i}" for i in range(10)]
    for i, g in enumerate(groups):
        g_up, g_down = _group_arrays(recs, g)
        ax.stairs(sf + g_up, edges, baseline=sf - g_down, fill=False, color=colours[i % 10], linewidth=1.2, label=g)
    flagged = np.array([bool(r["flags"]) for r in recs])
    ok = ~flagged
    ax.errorbar(centres[ok], sf[ok], yerr=stat[ok], xerr=half[ok], fmt="o", color="k", markersize=4, label="SF ± stat")
    if flagged.any():
        ax.errorbar(
            centres[flagged],
            sf[flagged],
            yerr=stat[flagged],
            xerr=half[flagged],
            fmt="o",
            color="k",
            markerfacecolor="white",
            markersize=4,
            label="flagged",
        )
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel("jet $p_{T}$ [GeV]", fontsize=12)
    ax.set_ylabel(_PARTON_LABEL[parton], fontsize=12)
    finite = np.isfinite(sf)
    if finite.any():
        lo = np.nanmin(np.where(finite, sf - np.nan_to_num(tot_down, nan=0.0), np.nan))
        hi = np.nanmax(np.where(finite, sf + np.nan_to_num(tot_up, nan=0.0), np.nan))
        span = max(hi - lo, 0.1)
        ax.set_ylim(lo - 0.15 * span, hi + 0.6 * span)
    else:
        ax.text(0.5, 0.5, "undefined (see flags)", transform=ax.transAxes, ha="center")
    ax.legend(fontsize=7, loc="upper right", ncol=2)


def _per_tagger_wp(
    cfg: Config,
    records: Sequence[Mapping[str, Any]],
    groups: Sequence[str],
    out_dir: Path,
    panel: Any,
    title: str,
    prefix: str,
) -> list[Path]:
    """One PNG per tagger and WP with ``panel`` drawn for quark and gluon side by side."""
    plt = setup_matplotlib()
    written = []
    for (tagger, wp), by_parton in _by_tagger_wp(records).items():
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        for ax, parton in zip(axes, ("quark", "gluon")):
            if parton in by_parton:
                panel(ax, by_parton[parton], groups, parton)
            ax.set_title(title.format(tagger=tagger, wp=wp, parton=parton), fontsize=11)
        _label(axes[0], cfg)
        fig.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.92, wspace=0.25)
        written.append(_save(fig, out_dir / f"{prefix}_{tagger}_wp{wp}.png"))
    return written


def plot_scale_factors(
    cfg: Config, records: Sequence[Mapping[str, Any]], groups: Sequence[str], out_dir: Path
) -> list[Path]:
    """SF vs pT with stat error bars, per-group bands and the total band."""
    return _per_tagger_wp(cfg, records, groups, out_dir, _sf_panel, "{tagger}, WP {wp}, {parton}", "sf")


def _breakdown_panel(ax: Any, recs: Sequence[Mapping[str, Any]], groups: Sequence[str], parton: str) -> None:
    edges = np.asarray(bin_edges(recs))
    sf = _arr([r["sf"] for r in recs])
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = 100.0 / np.abs(sf)
        stat = _arr([r["stat"] for r in recs]) * rel
        up, down = _arr([r["total_up"] for r in recs]) * rel, _arr([r["total_down"] for r in recs]) * rel
    ax.stairs(
        np.hypot(up, stat),
        edges,
        baseline=-np.hypot(down, stat),
        fill=True,
        color="#dddddd",
        label=r"stat $\oplus$ syst",
    )
    ax.stairs(stat, edges, baseline=-stat, fill=False, color="k", linestyle="--", label="stat")
    for i, g in enumerate(groups):
        g_up, g_down = _group_arrays(recs, g)
        colour = f"C{i % 10}"
        ax.stairs(g_up * rel, edges, color=colour, linewidth=1.5, label=g)
        ax.stairs(-g_down * rel, edges, color=colour, linewidth=1.5)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlim(edges[0], edges[-1])
    reach = np.concatenate([np.hypot(up, stat), np.hypot(down, stat), stat])
    reach = reach[np.isfinite(reach)]
    if reach.size:
        top = max(float(reach.max()), 1.0)
        ax.set_ylim(-1.15 * top, 1.9 * top)  # room for the legend
    ax.set_xlabel("jet $p_{T}$ [GeV]", fontsize=12)
    ax.set_ylabel(f"relative uncertainty on {parton} SF [%]", fontsize=11)
    ax.legend(fontsize=7, loc="upper right", ncol=2)


def plot_breakdown(
    cfg: Config, records: Sequence[Mapping[str, Any]], groups: Sequence[str], out_dir: Path
) -> list[Path]:
    """Relative uncertainty per group vs pT; one PNG per tagger and WP."""
    return _per_tagger_wp(
        cfg, records, groups, out_dir, _breakdown_panel, "{tagger}, WP {wp}, {parton}: up > 0, down < 0", "breakdown"
    )


def _read_extraction(cfg: Config) -> dict[str, Any]:
    path = cfg.output_path / "results" / "nominal" / "extraction.json"
    if not path.is_file():
        raise ArtifactError(f"{path}: not found; run 'qgcal run --config C' (nominal) first")
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


def plot_fractions(cfg: Config, extraction: Mapping[str, Any], out_dir: Path) -> Path:
    """f_Fq and f_Cq vs pT (nominal MC after reweighting), one panel per tagger."""
    plt = setup_matplotlib()
    taggers = sorted(extraction)
    fig, axes = plt.subplots(1, len(taggers), figsize=(6 * len(taggers), 5), squeeze=False)
    for ax, tagger in zip(axes[0], taggers):
        bins = extraction[tagger]
        edges = np.asarray(bin_edges(bins))
        ax.stairs(_arr([b["f_forward_quark"] for b in bins]), edges, color="C0", linewidth=2, label="forward jets")
        ax.stairs(
            _arr([b["f_central_quark"] for b in bins]),
            edges,
            color="C1",
            linewidth=2,
            linestyle="--",
            label="central jets",
        )
        ax.set_ylim(0.0, 1.0)
        ax.set_xlim(edges[0], edges[-1])
        ax.set_xlabel("jet $p_{T}$ [GeV]", fontsize=12)
        ax.set_ylabel("quark fraction (MC)", fontsize=12)
        ax.set_title(f"{tagger} (central jets reweighted)", fontsize=11)
        ax.legend(fontsize=9, loc="lower right")
    _label(axes[0][0], cfg)
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.13, top=0.92, wspace=0.25)
    return _save(fig, out_dir / "quark_fractions.png")


def extraction_plots(cfg: Config, extraction: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Nominal extracted shapes: copied from results/nominal/plots when newer than the data, else drawn."""
    nominal = cfg.output_path / "results" / "nominal"
    data_mtime = (nominal / "extraction.json").stat().st_mtime_ns
    written, to_draw = [], {}
    for tagger, bins in sorted(extraction.items()):
        src = nominal / "plots" / f"extracted_{tagger}.png"
        dst = out_dir / src.name
        if src.is_file() and src.stat().st_mtime_ns >= data_mtime:
            with atomic_path(dst, ".png") as tmp:
                shutil.copyfile(src, tmp)
            written.append(dst)
        elif tagger in cfg.taggers:
            to_draw[tagger] = [
                SimpleNamespace(
                    pt_low=b["pt_low"],
                    pt_high=b["pt_high"],
                    flags=b["flags"],
                    **{k: _arr(b[k]) for k in ("p_q_mc", "p_g_mc", "p_q_data", "p_g_data")},
                )
                for b in bins
            ]
    if to_draw:
        written += plot_extractions(cfg, "nominal", to_draw, out_dir)
    return sorted(written)


def write_plots(cfg: Config, records: Sequence[Mapping[str, Any]], groups: Sequence[str], out_dir: Path) -> list[Path]:
    """Every plot of the combined results; returns the files, sorted."""
    extraction = _read_extraction(cfg)
    paths = plot_scale_factors(cfg, records, groups, out_dir)
    paths += plot_breakdown(cfg, records, groups, out_dir)
    paths.append(plot_fractions(cfg, extraction, out_dir))
    paths += extraction_plots(cfg, extraction, out_dir)
    return sorted(paths)
