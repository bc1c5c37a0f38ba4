"""``results/combined/report.md``: the summary table, every plot, the systematics and the flags.

Plain Markdown with paths relative to the report, so the directory can be
moved, zipped or rendered by any Markdown viewer (GitLab, GitHub, VS Code).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from qgcal.artifacts import atomic_path
from qgcal.report import DASH, SF_LEGEND, WP_RULE_LINE, format_value, wp_collapses, wp_rows

__all__ = ["collect_skipped", "render_report", "write_report"]


def _sf_cell(r: Mapping[str, Any]) -> str:
    if r["sf"] is None:
        return DASH
    return f"{r['sf']:.3f} ± {format_value(r['stat'])}"


def _syst_cell(r: Mapping[str, Any]) -> str:
    if r["total_up"] is None or r["total_down"] is None:
        return DASH
    return f"+{r['total_up']:.3f} / −{r['total_down']:.3f}"


def _table(records: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "| tagger | WP | parton | pT [GeV] | SF ± stat | syst (+up / −down) | flags |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: (r["tagger"], r["working_point"], r["parton"] != "quark", r["pt_low"])):
        flags = ", ".join(r["flags"]) if r["flags"] else ""
        lines.append(
            f"| {r['tagger']} | {r['working_point']:g} | {r['parton']} | "
            f"{r['pt_low']:g}–{r['pt_high']:g} | {_sf_cell(r)} | {_syst_cell(r)} | {flags} |"
        )
    return lines


def _group_table(records: Sequence[Mapping[str, Any]], groups: Sequence[str]) -> list[str]:
    """Largest relative error per group over the defined, unflagged-or-not bins (a quick overview)."""
    lines = ["| group | largest relative up | largest relative down |", "|---|---|---|"]
    for g in groups:
        ups, downs = [], []
        for r in records:
            grp = r["groups"].get(g)
            if r["sf"] and grp and grp["up"] is not None and grp["down"] is not None:
                ups.append(grp["up"] / abs(r["sf"]))
                downs.append(grp["down"] / abs(r["sf"]))
        lines.append(
            f"| {g} | {format_value(max(ups) * 100 if ups else None, 1)} % | "
            f"{format_value(max(downs) * 100 if downs else None, 1)} % |"
        )
    return lines


def _systematics(metadata: Mapping[str, Any]) -> list[str]:
    lines = ["| variation | group | kind | combined as |", "|---|---|---|---|"]
    for name, s in sorted(metadata["systematics"].items(), key=lambda kv: (kv[1]["group"], kv[0])):
        if s["set"]:
            how = f"replica set `{s['set']}` ({s['set_combine']})"
        elif s["pair"]:
            how = f"{s['direction']} half of the pair with `{s['pair']}`"
        else:
            how = "single, symmetrised"
        lines.append(f"| `{name}` | {s['group']} | {s['kind']} | {how} |")
    return lines


def _flags(records: Sequence[Mapping[str, Any]]) -> list[str]:
    counts = Counter(f for r in records for f in r["flags"])
    if not counts:
        return ["No record is flagged."]
    head = (
        f"{sum(1 for r in records if r['flags'])} of {len(records)} records are flagged "
        "(see docs/physics.md and docs/outputs.md for the meaning of each flag):"
    )
    lines = [head, "", "| flag | records |", "|---|---|"]
    lines += [f"| `{f}` | {n} |" for f, n in sorted(counts.items())]
    undefined = sorted({v for r in records for v in r.get("undefined_variations", [])})
    if undefined:
        lines += [
            "",
            "Variations with an undefined SF in some bin (their group and total are undefined (-) there): "
            + ", ".join(f"`{v}`" for v in undefined)
            + ".",
        ]
    return lines


def _working_points(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Achieved MC quark efficiency of every WP cut, and each collapse said once."""
    header, rows = wp_rows(records)
    if not rows:
        return ["The records carry no achieved WP efficiency (made by an older qgcal)."]
    header = ["WP", "tagger", *(f"{h} GeV" for h in header[2:])]  # WP first: one row per WP cut, not per SF
    lines = [WP_RULE_LINE, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([row[1], row[0], *row[2:]]) + " |" for row in rows]
    collapses = wp_collapses(records)
    lines += [""]
    if collapses:
        lines += ["Working points that collapse onto one cut (their SFs are the same measurement):", ""]
        lines += [f"- {c}" for c in collapses]
    else:
        lines += ["No two working points share a cut."]
    return lines


def _shift_treatment(metadata: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Which shifts the policy pruned or smoothed, and how many shifts are consistent with zero."""
    pol = metadata.get("shift_policy")
    if not pol:
        return ["No shift statistics (combined by an older qgcal)."]
    n_sigma = pol["min_significance"]
    with_stat = [(r, v) for r in records for v, e in r.get("shift_stat", {}).items() if e is not None]
    if not with_stat:
        return [
            "No bootstrap replicas (`bootstrap: 0`): the shifts' statistical errors are unknown, every shift is kept."
        ]
    below = Counter(
        v
        for r, v in with_stat
        if r["shift_significance"].get(v) is not None and abs(r["shift_significance"][v]) < n_sigma
    )
    lines = [
        (
            f"Policy `{pol['policy']}` below {n_sigma:g} sigma, sigma = the bootstrap standard deviation of "
            "(variation - nominal) over replicas shared by both (per record in scale_factors.json: `shift_stat`, "
            "`shift_significance`, `shift_treatment`; `variations` holds the shift used, `variations_measured` the "
            f"measured one). Shifts pruned: {pol['pruned']}, smoothed: {pol['smoothed']}."
        ),
        "",
        f"| variation | shifts below {n_sigma:g} sigma | pruned | smoothed |",
        "|---|---|---|---|",
    ]
    names = sorted({v for _, v in with_stat})
    for v in names:
        n_tot = sum(1 for _, x in with_stat if x == v)
        pruned = sum(1 for r in records if r.get("shift_treatment", {}).get(v) == "pruned")
        smoothed = sum(1 for r in records if r.get("shift_treatment", {}).get(v) == "smoothed")
        lines.append(f"| `{v}` | {below[v]} of {n_tot} | {pruned} | {smoothed} |")
    return lines


def collect_skipped(metadata: Mapping[str, Any], output: Path) -> list[dict[str, Any]]:
    """Input files skipped as bad, from every combined systematic's ``scale_factors.json``.

    One entry per (file, tree, artifact namespace) with the systematics whose results
    lack it; an unreadable input is skipped here (the combination already checked them).
    """
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    for syst, inp in sorted((metadata.get("inputs") or {}).items()):
        try:
            doc = json.loads((output / inp["path"]).read_text(encoding="utf-8"))
            skipped = doc["metadata"].get("skipped_files") or []
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for r in skipped:
            key = (str(r.get("file")), str(r.get("tree")), str(r.get("variation")))
            entry = found.setdefault(key, {**r, "systematics": []})
            entry["systematics"].append(syst)
    return [found[k] for k in sorted(found)]


def _cell_text(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _skipped(skipped: Sequence[Mapping[str, Any]]) -> list[str]:
    """Skipped input files: never silent, so they come before the numbers."""
    if not skipped:
        return ["No input file was skipped."]
    from qgcal.contract import events_lost

    lost = events_lost(skipped)  # each file counted once, as in scale_factors.json and the command's summary
    n_files = len({str(r["file"]) for r in skipped})
    head = (
        f"**{n_files} input file(s) were skipped as unreadable** (`--skip-bad-files` / "
        f"`reading.skip_bad_files`): **{lost.text()}** (entries of their trees, before any selection). "
        "The scale factors below do not include these events."
    )
    lines = [head, "", "| file | tree | events lost | reason | systematics affected |", "|---|---|---|---|---|"]
    for r in skipped:
        n = r.get("events_lost")
        lines.append(
            f"| `{_cell_text(r['file'])}` | {_cell_text(r.get('tree'))} | "
            f"{'unknown' if n is None else n} | {_cell_text(r.get('reason'))} | "
            f"{', '.join(r.get('systematics', []))} |"
        )
    return lines


def render_report(
    title: str,
    metadata: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    plots: Sequence[Path],
    report_dir: Path,
    skipped: Sequence[Mapping[str, Any]] = (),
    corrections: Mapping[str, Any] | None = None,
) -> str:
    """The Markdown text; plot paths are written relative to ``report_dir``.

    ``corrections``: the JSON of corrections.json, summarised as ``correction summary`` does.
    """
    groups = list(metadata["groups"])
    rel = [p.relative_to(report_dir).as_posix() for p in sorted(plots)]
    intro = (
        f"qgcal {metadata.get('qgcal_version', '')}. pT in GeV. SF ± statistical error"
        f"{' [' + metadata['stat_method'] + ']' if metadata.get('stat_method') else ''}; the systematic "
        "error is the quadrature sum of the groups below (upward / downward, as magnitudes). "
        "`-`: undefined, see flags. Machine-readable: [scale_factors.json](scale_factors.json), "
        "[corrections.json](corrections.json) (correctionlib), [scale_factors.root](scale_factors.root)."
    )
    out = [f"# {title}: quark/gluon tagging scale factors", "", intro, ""]
    out += [f"- {line}" for line in SF_LEGEND] + [""]
    out += ["## Skipped input files", ""] + _skipped(skipped) + [""]
    out += ["## Summary", ""]
    out += _table(records)
    out += ["", "## Uncertainty groups", ""] + _group_table(records, groups)
    out += ["", "## Working points", ""] + _working_points(records)
    out += ["", "## Systematic variations", ""] + _systematics(metadata)
    out += ["", "## Statistical significance of the systematic shifts", ""] + _shift_treatment(metadata, records)
    out += ["", "## Flags", ""] + _flags(records)
    if corrections is not None:
        from qgcal.outputs.correction import correction_summary

        out += [
            "",
            "## corrections.json (correctionlib)",
            "",
            (
                "The corrections, their inputs in order and the values each accepts (what `correction summary "
                "corrections.json` shows); how to evaluate them: docs/outputs.md. Outside these ranges, or for "
                "another key, evaluating raises (`flow: error`; docs/outputs.md describes the clamp option)."
            ),
            "",
        ]
        out += correction_summary(corrections)
    out += ["", "## Plots", ""]
    sections = [
        ("Scale factors vs pT", "sf_"),
        ("Uncertainty breakdown", "breakdown_"),
        ("Quark fractions", "quark_fractions"),
        ("Extracted shapes (nominal)", "extracted_"),
        ("Closure on MC (extracted vs true shapes and efficiencies)", "closure_"),
    ]
    listed: set[str] = set()
    for heading, prefix in sections:
        mine = [p for p in rel if Path(p).name.startswith(prefix)]
        if not mine:
            continue
        out += [f"### {heading}", ""]
        for p in mine:
            out += [f"[{Path(p).name}]({p})", "", f"![{Path(p).stem}]({p})", ""]
            listed.add(p)
    if not rel:
        out += ["No plots were drawn (plots.enabled: false in the config, or --no-plots).", ""]
    others = [p for p in rel if p not in listed]
    if others:
        out += ["### Other", ""] + [f"- [{Path(p).name}]({p})" for p in others] + [""]
    return "\n".join(out).rstrip() + "\n"


def write_report(
    path: Path, title: str, metadata: Mapping[str, Any], records: Sequence[Mapping[str, Any]], plots: Sequence[Path]
) -> Path:
    # report.md lives in <output>/results/combined/
    skipped = collect_skipped(metadata, path.parent.parent.parent)
    cl = path.parent / "corrections.json"
    corrections = json.loads(cl.read_text(encoding="utf-8")) if cl.is_file() else None
    text = render_report(title, metadata, records, plots, path.parent, skipped, corrections)
    with atomic_path(path, ".md") as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
