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
  MC with statistical errors, bins below zero shaded (copied from
  ``results/nominal/plots`` when up to date, else drawn);
* ``closure_<tagger>.png``: MC closure: extracted vs MC-truth shapes per pT bin (and
  the true data shapes on a generated sample), and extracted / true MC efficiency per WP vs pT;
* ``closure_sf.png`` (generated samples only, :mod:`qgcal.outputs.closure`): calibrated
  vs true SF per WP vs pT, for every branch tagger.

Every figure has the ATLAS label; no text needs a glyph the fonts lack.
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
from qgcal.outputs.closure import true_efficiency
from qgcal.outputs.correction import bin_edges, series
from qgcal.plotting import (
    DATA_STYLE,
    FIGURE_INDEX,
    experiment_label,
    label_lines,
    plot_workers,
    render,
    render_cached,
    setup_matplotlib,
    stairs,
)

__all__ = [
    "DPI",
    "extraction_plots",
    "plain_extraction_bins",
    "plot_breakdown",
    "plot_closure",
    "plot_fractions",
    "plot_scale_factors",
    "plot_sf_closure",
    "write_plots",
]

DPI = 80
_SHAPES = ("p_q_mc", "p_g_mc", "p_q_data", "p_g_data")
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
    """'ATLAS <label>' and the energy/luminosity line (qgcal.plotting.experiment_label)."""
    experiment_label(ax, *label_lines(cfg))


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
    stairs(
        ax, sf + tot_up, edges, baseline=sf - tot_down, fill=True, color="#f5d76e", label="stat + syst (in quadrature)"
    )
    stairs(ax, sf + up, edges, baseline=sf - down, fill=True, color="#8fd19e", label="syst (total)")
    colours = [f"C{i}" for i in range(10)]
    for i, g in enumerate(groups):
        g_up, g_down = _group_arrays(recs, g)
        stairs(ax, sf + g_up, edges, baseline=sf - g_down, fill=False, color=colours[i % 10], linewidth=1.2, label=g)
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


_PANELS = {  # kind -> (panel, title)
    "sf": ("_sf_panel", "{tagger}, WP {wp}, {parton}"),
    "breakdown": ("_breakdown_panel", "{tagger}, WP {wp}, {parton}: up > 0, down < 0"),
}


def _tagger_wp_jobs(
    cfg: Config, records: Sequence[Mapping[str, Any]], groups: Sequence[str], out_dir: Path, kind: str
) -> list[tuple[Any, tuple[Any, ...]]]:
    """One job per tagger and WP: the ``kind`` panel for quark and gluon side by side."""
    return [
        (_tagger_wp_figure, (cfg, tagger, wp, by_parton, list(groups), out_dir, kind))
        for (tagger, wp), by_parton in _by_tagger_wp(records).items()
    ]


def _tagger_wp_figure(
    cfg: Config,
    tagger: str,
    wp: str,
    by_parton: Mapping[str, Sequence[Mapping[str, Any]]],
    groups: Sequence[str],
    out_dir: Path,
    kind: str,
) -> Path:
    plt = setup_matplotlib()
    panel_name, title = _PANELS[kind]
    panel = globals()[panel_name]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, parton in zip(axes, ("quark", "gluon")):
        if parton in by_parton:
            panel(ax, by_parton[parton], groups, parton)
        ax.set_title(title.format(tagger=tagger, wp=wp, parton=parton), fontsize=11)
    _label(axes[0], cfg)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.92, wspace=0.25)
    return _save(fig, out_dir / f"{kind}_{tagger}_wp{wp}.png")


def plot_scale_factors(
    cfg: Config, records: Sequence[Mapping[str, Any]], groups: Sequence[str], out_dir: Path
) -> list[Path]:
    """SF vs pT with stat error bars, per-group bands and the total band."""
    return render(_tagger_wp_jobs(cfg, records, groups, out_dir, "sf"), plot_workers(cfg))


def _breakdown_panel(ax: Any, recs: Sequence[Mapping[str, Any]], groups: Sequence[str], parton: str) -> None:
    edges = np.asarray(bin_edges(recs))
    sf = _arr([r["sf"] for r in recs])
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = 100.0 / np.abs(sf)
        stat = _arr([r["stat"] for r in recs]) * rel
        up, down = _arr([r["total_up"] for r in recs]) * rel, _arr([r["total_down"] for r in recs]) * rel
    stairs(
        ax,
        np.hypot(up, stat),
        edges,
        baseline=-np.hypot(down, stat),
        fill=True,
        color="#dddddd",
        label="stat + syst (in quadrature)",
    )
    stairs(ax, stat, edges, baseline=-stat, fill=False, color="k", linestyle="--", label="stat")
    for i, g in enumerate(groups):
        g_up, g_down = _group_arrays(recs, g)
        colour = f"C{i % 10}"
        stairs(ax, g_up * rel, edges, color=colour, linewidth=1.5, label=g)
        stairs(ax, -g_down * rel, edges, color=colour, linewidth=1.5)
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
    return render(_tagger_wp_jobs(cfg, records, groups, out_dir, "breakdown"), plot_workers(cfg))


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
        stairs(ax, _arr([b["f_forward_quark"] for b in bins]), edges, color="C0", linewidth=2, label="forward jets")
        stairs(
            ax,
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
    written, jobs = _extraction_jobs(cfg, extraction, out_dir)
    return sorted(written + render(jobs, plot_workers(cfg)))


def _extraction_jobs(
    cfg: Config, extraction: Mapping[str, Any], out_dir: Path
) -> tuple[list[Path], list[tuple[Any, tuple[Any, ...]]]]:
    """(the figures copied from results/nominal/plots, the jobs drawing the others)."""
    from qgcal.plotting import _extraction_figure

    nominal = cfg.output_path / "results" / "nominal"
    data_mtime = (nominal / "extraction.json").stat().st_mtime_ns
    written, jobs = [], []
    for tagger, bins in sorted(extraction.items()):
        src = nominal / "plots" / f"extracted_{tagger}.png"
        dst = out_dir / src.name
        if src.is_file() and src.stat().st_mtime_ns >= data_mtime:
            with atomic_path(dst, ".png") as tmp:
                shutil.copyfile(src, tmp)
            written.append(dst)
        elif tagger in cfg.taggers:
            jobs.append((_extraction_figure, (cfg, "nominal", tagger, plain_extraction_bins(bins), out_dir)))
    return written, jobs


def plain_extraction_bins(bins: Sequence[Mapping[str, Any]]) -> list[SimpleNamespace]:
    """One tagger's bins of extraction.json as the extraction figure takes them (stored errors included)."""
    from qgcal.plotting import _plain_bin

    return [
        _plain_bin(
            SimpleNamespace(
                pt_low=b["pt_low"],
                pt_high=b["pt_high"],
                flags=b["flags"],
                **{k: _arr(b[k]) for k in _SHAPES},
                **{f"{k}_err": _arr(b[f"{k}_err"]) for k in _SHAPES if f"{k}_err" in b},
            )
        )
        for b in bins
    ]


def plot_closure(
    cfg: Config,
    extraction: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    out_dir: Path,
    truth: Any = None,
) -> list[Path]:
    """MC closure, one PNG per tagger: the extracted MC quark/gluon shapes against the MC truth
    shapes per pT bin (data extracted on top; with ``truth``, a generated sample's
    :class:`qgcal.outputs.closure.DataTruth`, the true data shapes too), and the extracted MC
    efficiencies (what the SF divides by) over the true ones per WP vs pT: 1 when the method closes."""
    return render(_closure_jobs(cfg, extraction, records, out_dir, truth), plot_workers(cfg))


def _closure_jobs(
    cfg: Config, extraction: Mapping[str, Any], records: Sequence[Mapping[str, Any]], out_dir: Path, truth: Any
) -> list[tuple[Any, tuple[Any, ...]]]:
    """One job per tagger of the config (each gets only its own records)."""
    return [
        (_closure_figure, (cfg, tagger, bins, [r for r in records if r["tagger"] == tagger], out_dir, truth))
        for tagger, bins in sorted(extraction.items())
        if tagger in cfg.taggers
    ]


def _closure_figure(
    cfg: Config,
    tagger: str,
    bins: Sequence[Mapping[str, Any]],
    records: Sequence[Mapping[str, Any]],
    out_dir: Path,
    truth: Any,
) -> Path:
    plt = setup_matplotlib()
    edges = np.asarray(cfg.taggers[tagger].bins.bin_edges())
    n = len(bins)
    fig, axes = plt.subplots(n + 1, 2, figsize=(11, 3.0 * (n + 1) + 0.6), squeeze=False)
    top = 1.0 - 0.75 / (3.0 * (n + 1) + 0.6)
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.03, top=top, hspace=0.5, wspace=0.25)
    centres = 0.5 * (edges[1:] + edges[:-1])
    for i, b in enumerate(bins):
        for j, parton in enumerate(("quark", "gluon")):
            ax = axes[i][j]
            if i:  # the shape panels of a column share its tagger axis (labelled on the last of them)
                ax.sharex(axes[0][j])
            p = parton[0]
            ext, true, data = _arr(b[f"p_{p}_mc"]), _arr(b[f"truth_{p}_mc"]), _arr(b[f"p_{p}_data"])
            stairs(ax, true, edges, color="C1", linewidth=2, linestyle="--", label=f"MC truth {parton}")
            stairs(ax, ext, edges, color="C0", label=f"MC extracted {parton}")
            if truth is not None and tagger in truth.quark:
                shape = (truth.quark if parton == "quark" else truth.gluon)[tagger][i]
                stairs(ax, shape, edges, color="k", linestyle=":", linewidth=1.5, label=f"data truth {parton}")
            if not np.isnan(data).all():
                ax.errorbar(centres, data, label=f"data extracted {parton}", **{**DATA_STYLE, "markersize": 2})
            ax.axhline(0.0, color="grey", linewidth=0.6)
            ax.set_title(f"{b['pt_low']:g} < jet pT < {b['pt_high']:g} GeV", fontsize=11)
            if i == n - 1:
                ax.set_xlabel(f"{tagger} (tagger value)", fontsize=11)
            else:
                ax.tick_params(labelbottom=False)
            ax.set_ylabel("fraction of jets per bin", fontsize=10)
            if i == 0:  # the same entries in every row: one legend per column
                ax.legend(fontsize=7, loc="upper right")
    recs = {
        (r["working_point"], r["parton"], r["pt_low"]): r
        for r in records
        if r["tagger"] == tagger and r["eff_mc"] is not None and r["cut"] is not None
    }
    mc_truth = {b["pt_low"]: (_arr(b["truth_q_mc"]), _arr(b["truth_g_mc"])) for b in bins}
    pt_edges = np.asarray(bin_edges(bins))
    pt_c = 0.5 * (pt_edges[1:] + pt_edges[:-1])
    for j, parton in enumerate(("quark", "gluon")):
        ax = axes[n][j]
        for k, wp in enumerate(sorted({w for w, _, _ in recs})):
            ratio = []
            for b in bins:
                r = recs.get((wp, parton, b["pt_low"]))
                if r is None:
                    ratio.append(np.nan)
                    continue
                eq, rg = true_efficiency(*mc_truth[b["pt_low"]], edges, r["cut"], r["quark_side"])
                true_eff = eq if parton == "quark" else rg
                ratio.append(r["eff_mc"] / true_eff if true_eff > 0 else np.nan)
            ax.plot(pt_c + (k - 1.5) * 4.0, ratio, "o-", markersize=4, label=f"WP {wp:g}")
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlim(pt_edges[0], pt_edges[-1])
        ax.set_xlabel("jet pT [GeV]", fontsize=11)
        what = "quark efficiency" if parton == "quark" else "gluon rejection"
        ax.set_ylabel(f"MC {what}: extracted / true", fontsize=10)
        ax.set_title(f"MC closure of the {parton} SF denominator", fontsize=11)
        ax.legend(fontsize=7, loc="upper right", ncol=2)
    experiment_label(fig, *label_lines(cfg, simulation=True), figure=True)
    fig.text(0.98, 0.998, f"{cfg.name}: {tagger}, closure on MC (nominal)", ha="right", va="top", fontsize=12)
    return _save(fig, out_dir / f"closure_{tagger}.png")


def plot_sf_closure(
    cfg: Config, records: Sequence[Mapping[str, Any]], extraction: Mapping[str, Any], truth: Any, out_dir: Path
) -> Path | None:
    """Generated samples only: the calibrated SF (± stat) against the true SF = true eps(data) /
    true eps(MC) at the same cut, per WP vs pT; rows = branch taggers, columns = quark, gluon."""
    from qgcal.outputs.closure import true_sf

    expected = true_sf(records, extraction, truth, cfg)
    taggers = sorted({k[0] for k in expected})
    if not taggers:
        return None
    plt = setup_matplotlib()
    fig, axes = plt.subplots(len(taggers), 2, figsize=(11, 4.2 * len(taggers) + 0.6), squeeze=False)
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.08, top=1.0 - 0.8 / (4.2 * len(taggers) + 0.6))
    fig.subplots_adjust(hspace=0.4, wspace=0.25)
    for row, tagger in enumerate(taggers):
        for j, parton in enumerate(("quark", "gluon")):
            ax = axes[row][j]
            recs = [r for r in records if r["tagger"] == tagger and r["parton"] == parton]
            wps = sorted({r["working_point"] for r in recs})
            edges = np.asarray(bin_edges([r for r in recs if r["working_point"] == wps[0]]))
            centres = 0.5 * (edges[1:] + edges[:-1])
            for k, wp in enumerate(wps):
                series_ = sorted((r for r in recs if r["working_point"] == wp), key=lambda r: r["pt_low"])
                x = centres + (k - (len(wps) - 1) / 2) * 0.012 * (edges[-1] - edges[0])
                sf, stat = _arr([r["sf"] for r in series_]), _arr([r["stat"] for r in series_])
                true = _arr([expected.get((tagger, wp, parton, r["pt_low"])) for r in series_])
                colour = f"C{k % 10}"
                ax.errorbar(x, sf, yerr=stat, fmt="o", color=colour, markersize=4, label=f"WP {wp:g} calibrated")
                ax.plot(x, true, "_", color=colour, markersize=14, markeredgewidth=2.5, label=f"WP {wp:g} true")
            ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
            ax.set_xlim(edges[0], edges[-1])
            ax.set_xlabel("jet pT [GeV]", fontsize=11)
            ax.set_ylabel(_PARTON_LABEL[parton], fontsize=11)
            ax.set_title(f"{tagger}: calibrated SF (points) vs true SF (bars)", fontsize=11)
            lo, hi = ax.get_ylim()
            ax.set_ylim(lo, hi + 0.45 * (hi - lo))
            ax.legend(fontsize=6, loc="upper right", ncol=4)
    experiment_label(fig, *label_lines(cfg), figure=True)
    fig.text(0.98, 0.998, f"{cfg.name}: closure against the generator's truth", ha="right", va="top", fontsize=12)
    return _save(fig, out_dir / "closure_sf.png")


def write_plots(cfg: Config, records: Sequence[Mapping[str, Any]], groups: Sequence[str], out_dir: Path) -> list[Path]:
    """Every plot of the combined results; returns the files, sorted.

    On a sample written by ``qgcal generate`` (truth.json next to the data), the closure plots
    also show the true data shapes, and ``closure_sf.png`` the calibrated vs the true SFs.
    One figure per job, drawn in parallel (:func:`qgcal.plotting.render`, ``executor.workers``
    processes): the figures that need no truth start while this process reads it, then the
    closure figures (the largest) go first. A figure already drawn from the same inputs is not
    drawn again (:func:`qgcal.plotting.render_cached`, index ``plots/.qgcal-figures.json``).
    """
    extraction = _read_extraction(cfg)
    # as scale_factors.json holds them: the records of 'qgcal combine' (computed) and of 'qgcal report'
    # (read back) then draw, and key (render_cached), the same figures
    records = json.loads(json.dumps(list(records), sort_keys=True))
    groups = list(groups)
    copied, jobs = _extraction_jobs(cfg, extraction, out_dir)
    jobs.append((plot_fractions, (cfg, extraction, out_dir)))
    jobs += _tagger_wp_jobs(cfg, records, groups, out_dir, "sf")
    jobs += _tagger_wp_jobs(cfg, records, groups, out_dir, "breakdown")

    def with_truth() -> list[tuple[Any, tuple[Any, ...]]]:
        from qgcal.outputs.closure import data_truth

        truth = data_truth(cfg)
        late = _closure_jobs(cfg, extraction, records, out_dir, truth)
        if truth is not None:
            late.append((plot_sf_closure, (cfg, records, extraction, truth, out_dir)))
        return late

    drawn = render_cached(jobs, plot_workers(cfg), out_dir / FIGURE_INDEX, then=with_truth)
    return sorted(copied + [p for p in drawn if p is not None])
