"""``qgcal combine``: every systematic's shift, grouped and total uncertainties, and the outputs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "combine",
        help="combine all systematics into uncertainties; write correctionlib, ROOT, plots, report",
        description="Reads <output>/results/<syst>/scale_factors.json of nominal and every configured variation "
        "(run 'qgcal sweep' first), computes each variation's shift (cuts frozen from nominal), the per-group "
        "and total uncertainties, and writes <output>/results/combined/: scale_factors.json, corrections.json "
        "(correctionlib), scale_factors.root (TH1D), plots/*.png and report.md. See docs/outputs.md.",
    )
    p.add_argument("--config", "-c", required=True, type=Path, help="YAML config")
    p.add_argument(
        "--plots",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draw the plots (default: plots.enabled of the config)",
    )
    p.add_argument(
        "--allow-stale",
        action="store_true",
        help="combine even when some systematic's results are stale (warned, and recorded in "
        "results/combined/stale_inputs.json); by default combine refuses",
    )
    p.add_argument(
        "--flow",
        choices=["error", "clamp"],
        default="error",
        help="corrections.json outside the calibrated pT / |eta|: raise (default) or clamp to the edge bins",
    )
    p.add_argument(
        "--undefined",
        choices=["error", "fallback"],
        default="error",
        help="undefined SFs in corrections.json / the ROOT file: left out (default) or a conservative "
        "fallback (docs/outputs.md)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from qgcal.api import combine
    from qgcal.config import load_config

    cfg = load_config(args.config)
    out = combine(
        cfg,
        plots=args.plots,
        allow_stale=args.allow_stale,
        config_path=str(args.config),
        flow=args.flow,
        undefined=args.undefined,
    )
    wp = cfg.working_points[0]
    print_combined(out.combined.records, title=f"{cfg.name}: combined, WP {wp:g}", wp=wp)
    print(f"results: {out.scale_factors.parent}  (report: {out.report})")
    return 0


def print_combined(records: Any, *, title: str, wp: float, file: Any = None) -> None:
    """SF ± stat +up/-down (syst) for one WP: rows tagger x parton, columns pT bins (GeV); * flagged."""
    from qgcal.report import SF_LEGEND, print_table, print_wp_table

    recs = [r for r in records if r["working_point"] == wp]
    bins = sorted({(r["pt_low"], r["pt_high"]) for r in recs})
    header = ["tagger", "parton"] + [f"{lo:g}-{hi:g}" for lo, hi in bins]
    index = {(r["tagger"], r["parton"], r["pt_low"]): r for r in recs}
    rows = []
    for tagger in sorted({r["tagger"] for r in recs}):
        for parton in ("quark", "gluon"):
            row = [tagger, parton]
            for lo, _ in bins:
                r = index.get((tagger, parton, lo))
                row.append(_cell(r) if r else "")
            rows.append(row)
    print_table(
        header, rows, title=f"{title}  (SF ± stat +up/-down syst; * flagged)", file=file, footer="\n".join(SF_LEGEND)
    )
    print_wp_table(records, wp=wp, file=file)


def _cell(r: Any) -> str:
    from qgcal.report import DASH, format_value

    if r["sf"] is None:
        return f"{DASH} [" + ",".join(r["flags"]) + "]"
    if r["total_up"] is None or r["total_down"] is None:
        syst = f" syst {DASH}"
    else:
        syst = f" +{r['total_up']:.3f}/-{r['total_down']:.3f}"
    return f"{r['sf']:.3f} ± {format_value(r['stat'])}{syst}" + (" *" if r["flags"] else "")
