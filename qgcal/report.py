"""Terminal tables of scale factors (rich on a terminal, plain text otherwise)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "DASH",
    "SF_LEGEND",
    "format_sf",
    "format_value",
    "print_sf_table",
    "print_table",
    "print_wp_table",
    "wp_collapses",
    "wp_rows",
]

# What a null (undefined) number prints as, everywhere; its record's flags say why.
DASH = "-"

#: What a working point and the two SF quantities are, one line each (tables and report.md).
_WP_LINE = (
    "WP x: the cut on the tagger, per pT bin (frozen from nominal MC), that keeps a fraction x of quark jets "
    "(quark efficiency x)."
)
_SF_LINE = (
    "quark SF = quark efficiency in data / MC (true quark jets passing the cut); gluon SF = gluon rejection in "
    "data / MC (true gluon jets failing it)."
)
SF_LEGEND = (_WP_LINE, _SF_LINE)


def format_value(x: float | None, digits: int = 3) -> str:
    return DASH if x is None else f"{x:.{digits}f}"


def format_sf(rec: Mapping[str, Any]) -> str:
    """``SF ± stat``; a null SF or stat prints as a dash followed by the record's flags."""
    if rec["sf"] is None or rec["stat"] is None:
        return f"{format_value(rec['sf'])} ± {DASH} [" + ",".join(rec["flags"]) + "]"
    return f"{rec['sf']:.3f} ± {rec['stat']:.3f}" + (" *" if rec["flags"] else "")


def _rows(records: Sequence[Mapping[str, Any]], wp: float | None) -> tuple[list[str], list[list[str]]]:
    bins = sorted({(r["pt_low"], r["pt_high"]) for r in records})
    header = ["tagger", "WP", "parton"] + [f"{lo:g}-{hi:g}" for lo, hi in bins]
    index = {(r["tagger"], r["working_point"], r["parton"], r["pt_low"]): r for r in records}
    rows = []
    for tagger in sorted({r["tagger"] for r in records}):
        for w in sorted({r["working_point"] for r in records}):
            if wp is not None and w != wp:
                continue
            for parton in ("quark", "gluon"):
                row = [tagger, f"{w:g}", parton]
                for lo, _ in bins:
                    rec = index.get((tagger, w, parton, lo))
                    row.append(format_sf(rec) if rec else "")
                rows.append(row)
    return header, rows


def print_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, title: str, file: Any = None, footer: str | None = None
) -> None:
    """A rich table on a terminal, aligned plain text otherwise (logs, batch jobs)."""
    out = file or sys.stdout
    if out.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for h in header:
            table.add_column(h)
        for row in rows:
            table.add_row(*row)
        console = Console(file=out)
        console.print(table)
        if footer:
            console.print(footer)
        return
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    print(title, file=out)
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), file=out)
    if footer:
        print(footer, file=out)


def print_sf_table(
    records: Sequence[Mapping[str, Any]], *, title: str = "scale factors", wp: float | None = None, file: Any = None
) -> None:
    """SF ± stat per tagger, WP, parton (rows) and pT bin in GeV (columns); * = flagged.

    Nominal records are followed by the working points' achieved MC efficiencies
    (:func:`print_wp_table`); a variation's cuts are nominal's, so its table would repeat them.
    """
    header, rows = _rows(records, wp)
    print_table(header, rows, title=f"{title}  (pT bins in GeV; * flagged)", file=file, footer="\n".join(SF_LEGEND))
    if any(r.get("systematic", "nominal") == "nominal" for r in records):
        print_wp_table(records, wp=wp, file=file)


def _quark_records(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in records if r["parton"] == "quark" and "wp_efficiency" in r]


def wp_rows(records: Sequence[Mapping[str, Any]], wp: float | None = None) -> tuple[list[str], list[list[str]]]:
    """Achieved nominal-MC quark efficiency of each WP cut: rows tagger x WP, columns pT bins; '=' shared cut."""
    recs = _quark_records(records)
    bins = sorted({(r["pt_low"], r["pt_high"]) for r in recs})
    header = ["tagger", "WP"] + [f"{lo:g}-{hi:g}" for lo, hi in bins]
    index = {(r["tagger"], r["working_point"], r["pt_low"]): r for r in recs}
    rows = []
    for tagger in sorted({r["tagger"] for r in recs}):
        for w in sorted({r["working_point"] for r in recs}):
            if wp is not None and w != wp:
                continue
            row = [tagger, f"{w:g}"]
            for lo, _ in bins:
                r = index.get((tagger, w, lo))
                if r is None:
                    row.append("")
                    continue
                row.append(format_value(r.get("wp_efficiency")) + (" =" if r.get("wp_shared_with") else ""))
            rows.append(row)
    return header, rows


def wp_collapses(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """One sentence per (tagger, pT bin, cut) that two or more WPs share, in a fixed order."""
    seen: set[tuple[str, float, float]] = set()
    out = []
    for r in sorted(_quark_records(records), key=lambda r: (r["tagger"], r["pt_low"], r["working_point"])):
        if not r.get("wp_shared_with") or r.get("cut") is None:
            continue
        key = (r["tagger"], float(r["pt_low"]), float(r["cut"]))
        if key in seen:
            continue
        seen.add(key)
        wps = sorted({float(r["working_point"]), *(float(w) for w in r["wp_shared_with"])})
        op = "<" if r.get("quark_side") == "low" else ">="
        out.append(
            f"{r['tagger']} {r['pt_low']:g}-{r['pt_high']:g} GeV: WPs {', '.join(f'{w:g}' for w in wps)} share one "
            f"cut (quark-tagged when value {op} {r['cut']:g}), achieved MC quark efficiency "
            f"{format_value(r.get('wp_efficiency'))}"
        )
    return out


#: How a WP cut is chosen and what the achieved-efficiency table shows (tables and report.md).
WP_RULE_LINE = (
    "A cut sits on a bin edge of the tagger histogram, so the achieved MC quark efficiency differs from the WP "
    "label on a discrete tagger (calibration.wp_rule: at_least = the tightest edge reaching the label, "
    "nearest = the closest edge); '=': this cut is shared with another WP."
)


def print_wp_table(records: Sequence[Mapping[str, Any]], *, wp: float | None = None, file: Any = None) -> None:
    """The achieved MC quark efficiency of every WP cut and the WPs that collapse onto one cut."""
    header, rows = wp_rows(records, wp)
    if not rows:
        return
    collapses = wp_collapses([r for r in records if wp is None or r["working_point"] == wp])
    footer = "\n".join([WP_RULE_LINE, *collapses])
    print_table(
        header, rows, title="achieved MC quark efficiency of each WP cut (pT bins in GeV)", file=file, footer=footer
    )
