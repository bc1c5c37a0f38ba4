"""The combined scale factors as a correctionlib CorrectionSet (schema v2), usable on its own.

Corrections in ``corrections.json`` (docs/outputs.md has the full table and an example):

``qg_sf`` (tagger, working_point, parton, systematic, pt, abs_eta) -> scale factor
  ``systematic``: ``nominal``, ``stat_up``/``stat_down``, ``<group>_up``/``<group>_down``,
  ``total_up``/``total_down`` (systematic total, no stat); values SF, SF + up, SF - down.
``qg_sf_flag`` (tagger, working_point, parton, pt, abs_eta) -> bit mask, 0 = healthy
  (:data:`FLAG_BITS`; bit 1 = some value of this bin is undefined).
``qg_eff`` (tagger, working_point, parton, sample, systematic, pt, abs_eta) -> efficiency
  ``sample``: ``data`` or ``mc``; ``systematic``: ``nominal``, ``stat_up``, ``stat_down``.
  ``parton="quark"``: quark efficiency (fraction of quark jets passing the cut);
  ``parton="gluon"``: gluon rejection (fraction of gluon jets failing it).
``qg_wp_cut`` (tagger, working_point, pt, abs_eta) -> the cut on the tagger value
  (frozen per pT bin from nominal MC).
``qg_wp_eff`` (tagger, working_point, pt, abs_eta) -> the quark efficiency the cut really
  achieves on the extracted nominal MC (a cut sits on a bin edge: on an integer tagger such as
  nTracks "WP 0.5" may keep 0.55 of the quarks, and two WPs may share one cut).
``qg_quark_side`` (tagger) -> -1: quark-tagged when value < cut; +1: when value >= cut.

``working_point`` is the string ``f"{wp:g}"`` (``"0.6"``); any other spelling or value
is an error. ``pt`` (GeV) and ``abs_eta`` are binned with ``flow="error"``: outside the
calibrated phase space (the calibration's pT bins, ``0 <= |eta| < selection.abs_eta_max``)
evaluating raises. ``flow="clamp"`` is the documented option.

Undefined values (``null`` in scale_factors.json): with ``undefined="error"`` (default)
they are not in the file, evaluating them raises; with ``undefined="fallback"`` the SF
is 1.0 and an undefined SF uncertainty 100 % of the written SF (efficiencies and cuts
are never replaced). ``qg_sf_flag`` says where either happened.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from qgcal.artifacts import atomic_path
from qgcal.errors import ConfigError

__all__ = [
    "CORRECTION",
    "CUT_CORRECTION",
    "EFF_CORRECTION",
    "FLAG_BITS",
    "FLAG_CORRECTION",
    "SIDE_CORRECTION",
    "WP_EFF_CORRECTION",
    "bin_edges",
    "build_correction_set",
    "correction_summary",
    "efficiency_errors",
    "efficiency_values",
    "flag_mask",
    "group_key",
    "group_keys",
    "published_values",
    "series",
    "systematic_names",
    "wp_key",
    "write_corrections",
]

CORRECTION = "qg_sf"
FLAG_CORRECTION = "qg_sf_flag"
EFF_CORRECTION = "qg_eff"
CUT_CORRECTION = "qg_wp_cut"
WP_EFF_CORRECTION = "qg_wp_eff"
SIDE_CORRECTION = "qg_quark_side"
FALLBACK_SF = 1.0

Flow = Literal["error", "clamp"]
Undefined = Literal["error", "fallback"]

#: Bits of ``qg_sf_flag`` (and of the ROOT ``flags`` histograms). 0 = healthy. Fixed order:
#: new flags are appended, a flag not listed here sets ``other``.
FLAG_BITS: dict[str, int] = {
    name: 1 << i
    for i, name in enumerate(
        (
            "undefined_value",  # some published value of the bin is undefined (not evaluable, or the fallback)
            "empty_mc_bin",
            "empty_data_bin",
            "low_stats",
            "reweighting_empty_bins",
            "singular_fraction_matrix",
            "ill_conditioned",
            "unphysical_fraction",
            "wp_unreachable",
            "unphysical_efficiency",
            "bootstrap_unstable",
            "variation_undefined",
            "variation_flagged",
            "undefined",
            "other",
        )
    )
}


def group_key(group: str) -> str:
    """A group name as it appears in systematic names: non-alphanumeric runs become '_'."""
    return re.sub(r"[^A-Za-z0-9]+", "_", group).strip("_")


def group_keys(groups: Iterable[str]) -> dict[str, str]:
    """group name -> key; two groups mapping to one key, or a reserved key, is an error."""
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for g in sorted(groups):
        k = group_key(g)
        if not k or k in {"nominal", "stat", "total"}:
            raise ConfigError(
                f"variations: group {g!r} gives the systematic name {k!r}_up, which is reserved; rename the group"
            )
        if k in seen:
            raise ConfigError(f"variations: groups {seen[k]!r} and {g!r} both publish as {k!r}; rename one")
        seen[k] = g
        out[g] = k
    return out


def systematic_names(groups: Iterable[str]) -> list[str]:
    keys = sorted(group_keys(groups).values())
    names = ["nominal", "stat_up", "stat_down"]
    for k in keys:
        names += [f"{k}_up", f"{k}_down"]
    return names + ["total_up", "total_down"]


def wp_key(wp: float) -> str:
    """The one key format of a working point: ``f"{wp:g}"`` (0.6 -> "0.6", 0.55 -> "0.55")."""
    return f"{float(wp):g}"


def _check_wp_keys(wps: Iterable[float]) -> None:
    by_key: dict[str, float] = {}
    for wp in sorted({float(w) for w in wps}):
        k = wp_key(wp)
        if float(k) != wp:
            raise ConfigError(f"working_points: {wp!r} is published as {k!r}, which is another number; round it")
        if k in by_key:
            raise ConfigError(f"working_points: {by_key[k]!r} and {wp!r} both publish as {k!r}")
        by_key[k] = wp


def _band(sf: float | None, up: float | None, down: float | None, undefined: Undefined) -> tuple[Any, Any, bool]:
    if sf is None:
        return None, None, True
    if up is None or down is None:
        return (2.0 * sf, 0.0, True) if undefined == "fallback" else (None, None, True)
    return sf + up, sf - down, False


def published_values(
    rec: Mapping[str, Any], groups: Iterable[str], undefined: Undefined = "error"
) -> tuple[dict[str, float | None], bool]:
    """Systematic name -> value written for one record (None: not evaluable), and whether
    any value is undefined. The one place the rule lives: correctionlib and ROOT write these.
    """
    no_sf = rec["sf"] is None
    missing = no_sf
    sf: float | None = None if no_sf else float(rec["sf"])
    if no_sf and undefined == "fallback":
        sf = FALLBACK_SF
    out: dict[str, float | None] = {"nominal": sf}
    bands = [("stat", rec["stat"], rec["stat"])]
    for g, k in group_keys(groups).items():
        grp = rec["groups"].get(g, {"up": None, "down": None})
        bands.append((k, grp["up"], grp["down"]))
    bands.append(("total", rec["total_up"], rec["total_down"]))
    for name, up, down in bands:
        hi, lo, fb = _band(sf, None if no_sf else up, None if no_sf else down, undefined)
        out[f"{name}_up"], out[f"{name}_down"] = hi, lo
        missing |= fb
    return out, missing


def efficiency_errors(rec: Mapping[str, Any]) -> dict[str, tuple[float | None, float | None]]:
    """sample ("data", "mc") -> (efficiency, statistical error), None where undefined.

    The record's quantity (quark efficiency or gluon rejection). Its statistical error is
    the first-order one the SF's ``stat_data`` / ``stat_mc`` are made of:
    sigma(eff_data) = stat_data x eff_mc, sigma(eff_mc) = stat_mc x eff_mc^2 / eff_data.
    """
    e_d, e_m = rec.get("eff_data"), rec.get("eff_mc")
    s_d = s_m = None
    if e_d is not None and e_m is not None:
        if rec.get("stat_data") is not None:
            s_d = float(rec["stat_data"]) * float(e_m)
        if rec.get("stat_mc") is not None and e_d != 0:
            s_m = float(rec["stat_mc"]) * float(e_m) * float(e_m) / float(e_d)
    return {
        "data": (None if e_d is None else float(e_d), s_d if s_d is not None and math.isfinite(s_d) else None),
        "mc": (None if e_m is None else float(e_m), s_m if s_m is not None and math.isfinite(s_m) else None),
    }


def efficiency_values(rec: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """sample -> systematic ("nominal", "stat_up", "stat_down") -> value written in ``qg_eff``."""
    out = {}
    for sample, (e, s) in efficiency_errors(rec).items():
        out[sample] = {
            "nominal": e,
            "stat_up": None if e is None or s is None else e + s,
            "stat_down": None if e is None or s is None else e - s,
        }
    return out


def flag_mask(rec: Mapping[str, Any], groups: Iterable[str]) -> int:
    """The ``qg_sf_flag`` value of a record: its flags as bits of :data:`FLAG_BITS`."""
    _, missing = published_values(rec, groups)
    mask = FLAG_BITS["undefined_value"] if missing else 0
    for f in rec["flags"]:
        mask |= FLAG_BITS.get(f, FLAG_BITS["other"])
    return mask


def bin_edges(records: Sequence[Mapping[str, Any]]) -> list[float]:
    """Contiguous pT edges of one (tagger, WP, parton) series, sorted by pt_low."""
    recs = sorted(records, key=lambda r: r["pt_low"])
    edges = [float(recs[0]["pt_low"])]
    for r in recs:
        if float(r["pt_low"]) != edges[-1]:
            raise ValueError(f"pT bins are not contiguous at {r['pt_low']} GeV")
        edges.append(float(r["pt_high"]))
    return edges


def series(records: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str], list[Mapping[str, Any]]]:
    """(tagger, WP key, parton) -> records sorted by pT."""
    out: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in records:
        out.setdefault((r["tagger"], wp_key(r["working_point"]), r["parton"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["pt_low"]) for k, v in sorted(out.items())}


# ----------------------------------------------------------------------------- building


class _Builder:
    def __init__(self, abs_eta_max: float, flow: Flow) -> None:
        import correctionlib.schemav2 as cs

        if flow not in ("error", "clamp"):
            raise ValueError(f"flow must be 'error' or 'clamp', not {flow!r}")
        if not abs_eta_max > 0:
            raise ValueError(f"abs_eta_max must be > 0, not {abs_eta_max!r}")
        self.cs, self.abs_eta_max, self.flow = cs, float(abs_eta_max), flow

    def error(self, name: str) -> Any:
        """A node that raises when evaluated (an empty category): an undefined value."""
        return self.cs.Category(nodetype="category", input=name, content=[])

    def category(self, name: str, items: Iterable[tuple[str, Any]]) -> Any:
        content = [self.cs.CategoryItem(key=k, value=v) for k, v in items]
        return self.cs.Category(nodetype="category", input=name, content=content)

    def values(self, name: str, items: Iterable[tuple[str, float | None]]) -> Any:
        """A category holding only the defined values: an undefined key raises."""
        return self.category(name, [(k, v) for k, v in items if v is not None])

    def pt(self, edges: list[float], content: list[Any]) -> Any:
        return self.cs.Binning(nodetype="binning", input="pt", edges=edges, content=content, flow=self.flow)

    def eta(self, content: Any) -> Any:
        return self.cs.Binning(
            nodetype="binning", input="abs_eta", edges=[0.0, self.abs_eta_max], content=[content], flow=self.flow
        )

    def nest(self, tree: Mapping[str, Any], names: Sequence[str]) -> Any:
        """Nested categories over ``names`` from a nested dict whose leaves are nodes."""
        if not names:
            return tree
        return self.category(names[0], [(k, self.nest(v, names[1:])) for k, v in sorted(tree.items())])

    def variables(self) -> dict[str, Any]:
        v = self.cs.Variable
        eta_range = f"0 <= |eta| < {self.abs_eta_max:g}"
        outside = "outside: error" if self.flow == "error" else "outside: clamped to the nearest bin"
        return {
            "tagger": v(name="tagger", type="string", description="tagger name of the qgcal config, e.g. 'ntrk'"),
            "working_point": v(
                name="working_point",
                type="string",
                description="quark-efficiency working point as f'{wp:g}', e.g. '0.6' ('0.60', 0.6: error)",
            ),
            "parton": v(
                name="parton",
                type="string",
                description="true parton of the jet: 'quark' (quark-efficiency SF) or 'gluon' (gluon-rejection SF)",
            ),
            "pt": v(name="pt", type="real", description=f"jet pT in GeV, the calibration's pT bins; {outside}"),
            "abs_eta": v(name="abs_eta", type="real", description=f"jet |eta|, calibrated for {eta_range}; {outside}"),
            "sample": v(name="sample", type="string", description="'data' or 'mc'"),
        }


def build_correction_set(
    records: Sequence[Mapping[str, Any]],
    groups: Sequence[str],
    *,
    abs_eta_max: float,
    description: str = "",
    flow: Flow = "error",
    undefined: Undefined = "error",
) -> Any:
    """The CorrectionSet (pydantic models: built = validated); see the module docstring."""
    if undefined not in ("error", "fallback"):
        raise ValueError(f"undefined must be 'error' or 'fallback', not {undefined!r}")
    b = _Builder(abs_eta_max, flow)
    cs = b.cs
    _check_wp_keys(r["working_point"] for r in records)
    systs = systematic_names(groups)
    sf_tree: dict[str, Any] = {}
    flag_tree: dict[str, Any] = {}
    eff_tree: dict[str, Any] = {}
    cut_tree: dict[str, Any] = {}
    wp_eff_tree: dict[str, Any] = {}
    sides: dict[str, str] = {}
    for (tagger, wp, parton), recs in series(records).items():
        edges = bin_edges(recs)
        sf_bins = []
        for r in recs:
            vals, _ = published_values(r, groups, undefined)
            sf_bins.append(b.values("systematic", [(s, vals[s]) for s in systs]))
        sf_tree.setdefault(tagger, {}).setdefault(wp, {})[parton] = b.pt(edges, sf_bins)
        flag_tree.setdefault(tagger, {}).setdefault(wp, {})[parton] = b.pt(
            edges, [float(flag_mask(r, groups)) for r in recs]
        )
        per_sample = {}
        for sample in ("data", "mc"):
            per_sample[sample] = b.pt(
                edges, [b.values("systematic", efficiency_values(r)[sample].items()) for r in recs]
            )
        eff_tree.setdefault(tagger, {}).setdefault(wp, {})[parton] = b.category("sample", sorted(per_sample.items()))
        cuts = [b.error("working_point") if r["cut"] is None else float(r["cut"]) for r in recs]
        old = cut_tree.setdefault(tagger, {}).get(wp)
        if old is not None and old.content != cuts:
            raise ValueError(f"{tagger} WP {wp}: the quark and gluon records have different cuts")
        cut_tree[tagger][wp] = b.pt(edges, cuts)
        achieved = [
            b.error("working_point") if r.get("wp_efficiency") is None else float(r["wp_efficiency"]) for r in recs
        ]
        old_eff = wp_eff_tree.setdefault(tagger, {}).get(wp)
        if old_eff is not None and old_eff.content != achieved:
            raise ValueError(f"{tagger} WP {wp}: the quark and gluon records have different achieved efficiencies")
        wp_eff_tree[tagger][wp] = b.pt(edges, achieved)
        for r in recs:
            side = r.get("quark_side")
            if side not in ("low", "high") or sides.setdefault(tagger, side) != side:
                raise ValueError(f"{tagger}: quark_side {side!r} is not one 'low' or 'high'")

    var = b.variables()
    syst = cs.Variable(name="systematic", type="string", description=", ".join(systs))
    eff_syst = cs.Variable(name="systematic", type="string", description="nominal, stat_up, stat_down")
    undefined_text = (
        "an undefined value is not in the file: evaluating it raises (qg_sf_flag has bit 1 set)"
        if undefined == "error"
        else "an undefined SF is written as 1.0 and an undefined SF uncertainty as 100 % of it (qg_sf_flag bit 1)"
    )
    corrections = [
        cs.Correction(
            name=CORRECTION,
            version=2,
            description="quark/gluon tagging scale factor eps(data)/eps(MC) of the jet's true parton at the "
            "working point: parton 'quark': quark efficiency, 'gluon': gluon rejection (1 - mis-tag rate). "
            "systematic: nominal, SF + up or SF - down per uncertainty group, stat, and the systematic total "
            f"(no stat). {undefined_text[0].upper() + undefined_text[1:]}. Check qg_sf_flag: 0 is healthy.",
            inputs=[var["tagger"], var["working_point"], var["parton"], syst, var["pt"], var["abs_eta"]],
            output=cs.Variable(name="sf", type="real", description="scale factor"),
            data=b.eta(b.nest(sf_tree, ["tagger", "working_point", "parton"])),
        ),
        cs.Correction(
            name=FLAG_CORRECTION,
            version=2,
            description="0: healthy; otherwise a sum of bits: "
            + ", ".join(f"{bit} {name}" for name, bit in FLAG_BITS.items())
            + " (flags: see docs/physics.md; the record itself: combined/scale_factors.json)",
            inputs=[var["tagger"], var["working_point"], var["parton"], var["pt"], var["abs_eta"]],
            output=cs.Variable(name="flag", type="real", description="bit mask, an integer; 0 healthy"),
            data=b.eta(b.nest(flag_tree, ["tagger", "working_point", "parton"])),
        ),
        cs.Correction(
            name=EFF_CORRECTION,
            version=2,
            description="the efficiencies the SF is the ratio of, in data and MC (after the extraction): "
            "parton 'quark': fraction of quark jets passing the cut; 'gluon': fraction of gluon jets failing it "
            "(gluon rejection). Mis-tag SF of a gluon passing the cut: (1 - eff_data) / (1 - eff_mc); of a quark "
            "failing it: the same with the quark efficiency. systematic: nominal, stat_up, stat_down (first-order "
            "statistical error). An undefined value raises.",
            inputs=[
                var["tagger"],
                var["working_point"],
                var["parton"],
                var["sample"],
                eff_syst,
                var["pt"],
                var["abs_eta"],
            ],
            output=cs.Variable(name="eff", type="real", description="efficiency (quark) or rejection (gluon)"),
            data=b.eta(b.nest(eff_tree, ["tagger", "working_point", "parton"])),
        ),
        cs.Correction(
            name=CUT_CORRECTION,
            version=2,
            description="working-point cut on the tagger value, per pT bin (frozen from nominal MC); a jet is "
            "quark-tagged when value < cut (qg_quark_side -1) or value >= cut (+1). An unreachable WP raises.",
            inputs=[var["tagger"], var["working_point"], var["pt"], var["abs_eta"]],
            output=cs.Variable(name="cut", type="real", description="cut on the tagger value"),
            data=b.eta(b.nest(cut_tree, ["tagger", "working_point"])),
        ),
        cs.Correction(
            name=WP_EFF_CORRECTION,
            version=1,
            description="the quark efficiency the working-point cut achieves on the extracted nominal MC, per pT "
            "bin: a cut sits on a bin edge, so on a discrete tagger (nTracks) it differs from the WP's label "
            "(calibration.wp_rule: at_least: the tightest edge reaching the WP, >= the label; nearest: the closest "
            "edge). WPs that share one cut have the same value and qg_wp_cut (scale_factors.json: wp_shared_with). "
            "An unreachable WP raises.",
            inputs=[var["tagger"], var["working_point"], var["pt"], var["abs_eta"]],
            output=cs.Variable(name="eff", type="real", description="achieved MC quark efficiency"),
            data=b.eta(b.nest(wp_eff_tree, ["tagger", "working_point"])),
        ),
        cs.Correction(
            name=SIDE_CORRECTION,
            version=2,
            description="-1: quark-tagged when the tagger value < qg_wp_cut; +1: when value >= qg_wp_cut",
            inputs=[var["tagger"]],
            output=cs.Variable(name="side", type="real", description="-1 or +1"),
            data=b.category("tagger", [(t, -1.0 if s == "low" else 1.0) for t, s in sorted(sides.items())]),
        ),
    ]
    return cs.CorrectionSet(schema_version=2, description=description or "qgcal scale factors", corrections=corrections)


def write_corrections(
    path: Path,
    records: Sequence[Mapping[str, Any]],
    groups: Sequence[str],
    *,
    abs_eta_max: float,
    description: str = "",
    flow: Flow = "error",
    undefined: Undefined = "error",
) -> Path:
    """Validate (pydantic models, then correctionlib's own loader) and write atomically (sorted keys)."""
    import correctionlib

    cset = build_correction_set(
        records, groups, abs_eta_max=abs_eta_max, description=description, flow=flow, undefined=undefined
    )
    text = json.dumps(cset.model_dump(mode="json", exclude_unset=True), sort_keys=True, indent=1) + "\n"
    correctionlib.CorrectionSet.from_string(text)  # the C++ evaluator accepts it
    with atomic_path(path, ".json") as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- summary


def _ranges(node: Any, out: dict[str, set[Any]]) -> None:
    if not isinstance(node, dict):
        return
    if node.get("nodetype") == "category":
        keys = out.setdefault(node["input"], set())
        for item in node["content"]:
            keys.add(item["key"])
            _ranges(item["value"], out)
    elif node.get("nodetype") == "binning":
        edges = out.setdefault(node["input"], set())
        edges.add((float(node["edges"][0]), float(node["edges"][-1]), node.get("flow")))
        for c in node["content"]:
            _ranges(c, out)


def correction_summary(doc: Mapping[str, Any]) -> list[str]:
    """What ``correction summary`` shows, as a Markdown table (one row per input), from the file's JSON."""
    lines = ["| correction | input | type | values / range | output |", "|---|---|---|---|---|"]
    for c in doc["corrections"]:
        seen: dict[str, set[Any]] = {}
        _ranges(c["data"], seen)
        out = f"`{c['output']['name']}` ({c['output']['type']})"
        for i, v in enumerate(c["inputs"]):
            got = seen.get(v["name"], set())
            if v["type"] == "real":
                lo = min(x[0] for x in got)
                hi = max(x[1] for x in got)
                flows = ", ".join(sorted({str(x[2]) for x in got}))
                values = f"[{lo:g}, {hi:g}), flow: {flows}"
            else:
                values = ", ".join(f"`{k}`" for k in sorted(got, key=str))
            name = f"`{c['name']}`" if i == 0 else ""
            lines.append(f"| {name} | `{v['name']}` | {v['type']} | {values} | {out if i == 0 else ''} |")
    return lines
