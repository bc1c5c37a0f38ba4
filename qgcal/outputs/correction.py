"""The combined scale factors as a correctionlib CorrectionSet (schema v2).

Two corrections in ``corrections.json``:

``qg_sf`` (output: the scale factor), inputs
  * ``tagger`` (string): a tagger name of the config, e.g. ``"ntrk"``;
  * ``working_point`` (string): the quark-efficiency working point written as
    ``f"{wp:g}"``, e.g. ``"0.6"`` (correctionlib categories are strings or
    integers; a real input would need bins around each WP);
  * ``parton`` (string): ``"quark"`` (SF of the quark efficiency) or ``"gluon"``
    (SF of the gluon rejection);
  * ``systematic`` (string): ``nominal``, ``stat_up``, ``stat_down``,
    ``<group>_up``, ``<group>_down`` (group names with every run of characters
    other than letters and digits replaced by ``_``: ``parton shower`` ->
    ``parton_shower``), ``total_up``, ``total_down`` (systematic total, no stat);
  * ``pt`` (real, GeV): binned with the calibration's pT bins; ``flow="clamp"``:
    below the first edge the first bin is used, at or above the last edge the last.
  Values are SF, SF + up or SF - down.

``qg_sf_flags`` (same inputs without ``systematic``): 0 healthy, 1 flagged
  (numbers defined, see combined/scale_factors.json for the flags), 2 something
  undefined was replaced by the fallback below.

Fallback (correctionlib has no NaN): an undefined SF is written as 1.0, and an
undefined uncertainty as 100 % of the written SF (up = 2 x SF, down = 0).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qgcal.artifacts import atomic_path
from qgcal.errors import ConfigError

__all__ = [
    "CORRECTION",
    "FLAGS_CORRECTION",
    "bin_edges",
    "build_correction_set",
    "flag_code",
    "group_key",
    "group_keys",
    "published_values",
    "series",
    "systematic_names",
    "wp_key",
    "write_corrections",
]

CORRECTION = "qg_sf"
FLAGS_CORRECTION = "qg_sf_flags"
FALLBACK_SF = 1.0
FLAG_HEALTHY, FLAG_FLAGGED, FLAG_FALLBACK = 0, 1, 2


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
    return f"{float(wp):g}"


def _band(sf: float, up: float | None, down: float | None) -> tuple[float, float, bool]:
    if up is None or down is None:
        return 2.0 * sf, 0.0, True
    return sf + up, sf - down, False


def published_values(rec: Mapping[str, Any], groups: Iterable[str]) -> tuple[dict[str, float], bool]:
    """Systematic name -> value written for one record, and whether a fallback was used.

    The one place the fallback rule lives: correctionlib and ROOT write exactly these.
    """
    fallback = rec["sf"] is None
    sf = FALLBACK_SF if rec["sf"] is None else float(rec["sf"])
    out = {"nominal": sf}
    up, down, fb = _band(sf, rec["stat"], rec["stat"])
    out["stat_up"], out["stat_down"] = up, down
    fallback |= fb
    for g, k in group_keys(groups).items():
        grp = rec["groups"].get(g, {"up": None, "down": None})
        up, down, fb = _band(sf, grp["up"], grp["down"])
        out[f"{k}_up"], out[f"{k}_down"] = up, down
        fallback |= fb
    up, down, fb = _band(sf, rec["total_up"], rec["total_down"])
    out["total_up"], out["total_down"] = up, down
    return out, fallback | fb


def flag_code(rec: Mapping[str, Any], groups: Iterable[str]) -> int:
    _, fallback = published_values(rec, groups)
    if fallback:
        return FLAG_FALLBACK
    return FLAG_FLAGGED if rec["flags"] else FLAG_HEALTHY


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


def _category(schema: Any, name: str, items: Sequence[tuple[str, Any]]) -> Any:
    return schema.Category(
        nodetype="category", input=name, content=[schema.CategoryItem(key=k, value=v) for k, v in items]
    )


def _binning(schema: Any, edges: list[float], content: list[float]) -> Any:
    return schema.Binning(nodetype="binning", input="pt", edges=edges, content=content, flow="clamp")


def build_correction_set(records: Sequence[Mapping[str, Any]], groups: Sequence[str], *, description: str = "") -> Any:
    """The CorrectionSet (pydantic models: built = validated)."""
    import correctionlib.schemav2 as cs

    systs = systematic_names(groups)
    tree: dict[str, dict[str, dict[str, Any]]] = {}
    flag_tree: dict[str, dict[str, dict[str, Any]]] = {}
    for (tagger, wp, parton), recs in series(records).items():
        edges = bin_edges(recs)
        values = [published_values(r, groups)[0] for r in recs]
        by_syst = [(s, _binning(cs, edges, [v[s] for v in values])) for s in systs]
        tree.setdefault(tagger, {}).setdefault(wp, {})[parton] = _category(cs, "systematic", by_syst)
        codes = [float(flag_code(r, groups)) for r in recs]
        flag_tree.setdefault(tagger, {}).setdefault(wp, {})[parton] = _binning(cs, edges, codes)

    def nest(t: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> Any:
        return _category(
            cs,
            "tagger",
            [
                (
                    tagger,
                    _category(
                        cs,
                        "working_point",
                        [
                            (wp, _category(cs, "parton", sorted(by_parton.items())))
                            for wp, by_parton in sorted(by_wp.items())
                        ],
                    ),
                )
                for tagger, by_wp in sorted(t.items())
            ],
        )

    head = [
        cs.Variable(name="tagger", type="string", description="tagger name from the qgcal config"),
        cs.Variable(
            name="working_point",
            type="string",
            description="quark-efficiency working point as written by f'{wp:g}', e.g. '0.6'",
        ),
        cs.Variable(
            name="parton",
            type="string",
            description="'quark' (SF of the quark efficiency) or 'gluon' (SF of the gluon rejection)",
        ),
    ]
    pt = cs.Variable(name="pt", type="real", description="jet pT in GeV; clamped to the first/last bin")
    syst = cs.Variable(name="systematic", type="string", description=", ".join(systs))
    sf = cs.Correction(
        name=CORRECTION,
        version=1,
        description="quark/gluon tagging scale factors (qgcal): nominal, stat, per-group and total systematic "
        "variations (SF + up or SF - down). Undefined values: SF 1.0, uncertainty 100 % (see qg_sf_flags).",
        inputs=[*head, syst, pt],
        output=cs.Variable(name="sf", type="real", description="scale factor"),
        data=nest(tree),
    )
    flags = cs.Correction(
        name=FLAGS_CORRECTION,
        version=1,
        description="0: healthy; 1: flagged (see combined/scale_factors.json); 2: an undefined value was "
        "replaced by the fallback (SF 1.0, uncertainty 100 %)",
        inputs=[*head, pt],
        output=cs.Variable(name="flag", type="real", description="0, 1 or 2"),
        data=nest(flag_tree),
    )
    return cs.CorrectionSet(schema_version=2, description=description or "qgcal scale factors", corrections=[sf, flags])


def write_corrections(
    path: Path, records: Sequence[Mapping[str, Any]], groups: Sequence[str], *, description: str = ""
) -> Path:
    """Validate (pydantic models, then correctionlib's own loader) and write atomically."""
    import correctionlib

    cset = build_correction_set(records, groups, description=description)
    text = json.dumps(cset.model_dump(mode="json", exclude_unset=True), sort_keys=True, indent=1) + "\n"
    correctionlib.CorrectionSet.from_string(text)  # the C++ evaluator accepts it
    with atomic_path(path, ".json") as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
