"""Combine every systematic's scale factors into grouped and total uncertainties.

Pure functions over the JSON records of ``results/<syst>/scale_factors.json``;
events and histograms are never touched. Conventions (docs/outputs.md):

* shift = SF(variation) - SF(nominal), per tagger, working point, parton and pT
  bin; the cuts are the nominal ones (checked, not assumed);
* an up/down **pair** is one nuisance parameter: of its two shifts, the largest
  positive one is the upward error and the largest negative one (as a
  magnitude) the downward error, so signs are kept and a same-sign pair gives
  a one-sided error;
* a **single** variation (any kind, including sample and reweighting
  variations, unless declared as a pair) is symmetrised: +-|shift|;
* a replica **set** (``pdf_weight[1..N]``) is the sample standard deviation
  (ddof = 1; |shift| for a set of one) of its members' shifts (Monte Carlo
  replicas, NNPDF), or with ``set_combine: envelope`` the largest |shift|, or
  with ``set_combine: hessian`` the sum in quadrature of the shifts (symmetric
  Hessian eigenvectors, CT / MSHT / PDF4LHC Hessian sets), then symmetrised;
* every shift has a statistical error, the standard deviation over the bootstrap
  replicas of (variation - nominal), replica by replica (replicas are keyed by
  event identity, so nominal and a variation of the same events share them and
  their correlation cancels; for another MC sample the data replicas are shared
  and the MC ones independent, which is the error of that difference too);
  ``calibration.shift_policy`` keeps, prunes or smooths across pT bins the
  shifts below ``calibration.shift_min_significance`` of it (singles and pairs;
  set members are kept), and each record says which;
* components add in quadrature within a group, groups add in quadrature to
  ``total_up`` / ``total_down``; the statistical error stays separate;
* errors are magnitudes: the upward band is SF + up, the downward SF - down;
* a null shift (a variation whose SF is undefined) makes its component, group
  and total null and flags the record ``variation_undefined``: never a silent 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from qgcal import __version__
from qgcal.artifacts import sha256_file, write_json_atomic
from qgcal.config import Config
from qgcal.errors import ArtifactError, ConfigError

__all__ = [
    "RESERVED_GROUPS",
    "BinKey",
    "Combined",
    "Component",
    "VariationSpec",
    "combine",
    "combine_bin",
    "combine_records",
    "combined_path",
    "components",
    "load_combined",
    "load_results",
    "nonclosure_variations",
    "pair_errors",
    "quadrature",
    "set_errors",
    "shift_stat",
    "single_errors",
    "specs_from_config",
    "treat_shifts",
]

Direction = Literal["up", "down", "single"]
SetCombine = Literal["std", "envelope", "hessian"]
ShiftPolicy = Literal["keep", "prune", "smooth"]
Errors = tuple[float, float] | None  # (up, down) magnitudes, None = undefined
BinKey = tuple[str, float, str, float, float]  # tagger, working point, parton, pt_low, pt_high

#: Group names that would collide with the systematic names of the published files.
RESERVED_GROUPS = frozenset({"nominal", "stat", "total"})
FLAG_UNDEFINED = "variation_undefined"
FLAG_VARIATION = "variation_flagged"

CONVENTIONS = {
    "shift": "SF(variation) - SF(nominal), cuts frozen from nominal",
    "pair": "up = largest positive shift of the pair, down = |largest negative shift| (0 if none)",
    "single": "symmetrised: up = down = |shift|",
    "set": "std: sample standard deviation (ddof=1) of the members' shifts; envelope: max |shift|; "
    "hessian: sqrt(sum of squared shifts); symmetrised",
    "shift_stat": "standard deviation (ddof=1) over the bootstrap replicas of SF_r(variation) - SF_r(nominal); "
    "null without replicas",
    "shift_policy": "keep: every shift as measured; prune: a single or a pair (both halves) with |shift| < N "
    "shift_stat counts as 0; smooth: runs of adjacent insignificant pT bins merged (inverse-variance mean "
    "of the shifts) until |mean| >= N sigma, each bin of a merged group gets the mean, significant bins kept; "
    "set members are kept",
    "group": "components added in quadrature",
    "total": "groups added in quadrature; statistical error separate ('stat')",
    "errors": "magnitudes: the band is [sf - down, sf + up]",
    "null": "undefined (NaN); a null shift makes its group and the total null and flags the record",
    "nonclosure": "<sample variation>_nonclosure: SF extracted on that MC as pseudo-data (nominal templates, cuts "
    "and reweighting) minus its true SF (MC truth), a single in the variation's 'nonclosure' group",
}


@dataclass(frozen=True)
class VariationSpec:
    """What the combination needs to know about one variation."""

    name: str
    group: str
    kind: str = "weight"
    direction: Direction = "single"
    pair: str | None = None
    set: str | None = None
    set_combine: SetCombine = "std"


@dataclass(frozen=True)
class Component:
    """One independent source of uncertainty: a pair, a single variation or a replica set."""

    name: str
    group: str
    rule: Literal["pair", "single", "std", "envelope", "hessian"]
    members: tuple[str, ...]  # a pair: (up, down)


@dataclass
class Combined:
    """The combined records and their metadata (what ``combined/scale_factors.json`` holds)."""

    metadata: dict[str, Any]
    records: list[dict[str, Any]]
    path: Path | None = None

    @property
    def groups(self) -> list[str]:
        return list(self.metadata["groups"])


# ----------------------------------------------------------------------------- specs


def specs_from_config(cfg: Config) -> list[VariationSpec]:
    """The config's variations (ranges already expanded), in config order."""
    return [
        VariationSpec(
            name=name,
            group=var.group,
            kind=var.kind,
            direction=var.direction,
            pair=var.pair,
            set=var.set,
            set_combine=var.set_combine,
        )
        for name, var in cfg.variations.items()
    ]


def components(specs: Sequence[VariationSpec]) -> list[Component]:
    """Group variations into pairs, singles and sets; sorted by (group, name)."""
    by_name = {s.name: s for s in specs}
    out: dict[str, Component] = {}
    sets: dict[str, list[VariationSpec]] = {}
    for s in specs:
        if s.group.strip() in RESERVED_GROUPS or not s.group.strip():
            raise ConfigError(
                f"variations.{s.name}.group: {s.group!r} is reserved or empty; "
                f"choose another group name (reserved: {', '.join(sorted(RESERVED_GROUPS))})"
            )
        if s.set is not None:
            if s.pair is not None or s.direction != "single":
                raise ConfigError(
                    f"variations.{s.name}: a member of replica set {s.set!r} cannot be half of an up/down pair"
                )
            sets.setdefault(s.set, []).append(s)
        elif s.pair is not None:
            other = by_name.get(s.pair)
            if other is None:
                raise ConfigError(f"variations.{s.name}.pair: no variation named {s.pair!r}")
            if other.group != s.group:
                raise ConfigError(
                    f"variations.{s.name}: the pair {s.name!r}/{s.pair!r} has two groups "
                    f"({s.group!r}, {other.group!r}); give both the same group"
                )
            up, down = (s, other) if s.direction == "up" else (other, s)
            if {up.direction, down.direction} != {"up", "down"}:
                raise ConfigError(f"variations.{s.name}: a pair needs one direction: up and one down")
            name = f"{up.name}/{down.name}"
            out[name] = Component(name, s.group, "pair", (up.name, down.name))
        else:
            out[s.name] = Component(s.name, s.group, "single", (s.name,))
    for set_name, members in sets.items():
        groups = {m.group for m in members}
        rules = {m.set_combine for m in members}
        if len(groups) != 1 or len(rules) != 1:
            raise ConfigError(f"variations: the members of replica set {set_name!r} disagree on group or set_combine")
        if set_name in out:
            raise ConfigError(f"variations: replica set {set_name!r} has the name of another variation")
        out[set_name] = Component(
            set_name, members[0].group, members[0].set_combine, tuple(sorted(m.name for m in members))
        )
    return sorted(out.values(), key=lambda c: (c.group, c.name))


# ----------------------------------------------------------------------------- maths


def pair_errors(up_shift: float | None, down_shift: float | None) -> Errors:
    """(up, down) of a pair: the largest positive shift, and the largest negative one as a magnitude."""
    if up_shift is None or down_shift is None:
        return None
    shifts = (up_shift, down_shift)
    return max(0.0, *shifts), max(0.0, *(-s for s in shifts))


def single_errors(shift: float | None) -> Errors:
    """A one-sided variation, symmetrised."""
    return None if shift is None else (abs(shift), abs(shift))


def set_errors(shifts: Sequence[float | None], how: SetCombine) -> Errors:
    """A replica set: sample standard deviation (ddof=1), envelope or Hessian sum of the shifts, symmetrised.

    ``hessian``: each member is one symmetric eigenvector shift, err = sqrt(sum shift^2)
    (CT, MSHT, PDF4LHC Hessian sets; their asymmetric +/- pairs are better declared as
    up/down pairs, one nuisance each).
    """
    if not shifts or any(s is None for s in shifts):
        return None
    vals = [float(s) for s in shifts if s is not None]
    if how == "hessian":
        err = math.sqrt(math.fsum(v * v for v in vals))
    elif how == "envelope" or len(vals) == 1:
        err = max(abs(v) for v in vals)
    else:
        mean = math.fsum(vals) / len(vals)
        err = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    return err, err


def quadrature(values: Iterable[float | None]) -> float | None:
    """sqrt(sum of squares); None if any value is None."""
    vals = list(values)
    if any(v is None for v in vals):
        return None
    return math.sqrt(math.fsum(float(v) ** 2 for v in vals if v is not None))


def component_errors(comp: Component, shifts: Mapping[str, float | None]) -> Errors:
    if comp.rule == "pair":
        return pair_errors(shifts[comp.members[0]], shifts[comp.members[1]])
    if comp.rule == "single":
        return single_errors(shifts[comp.members[0]])
    return set_errors([shifts[m] for m in comp.members], comp.rule)


def raw_shifts(nominal: Mapping[str, Any], variations: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """SF(variation) - SF(nominal) per variation (None where either is undefined)."""
    sf0 = nominal["sf"]
    return {
        name: None if sf0 is None or rec["sf"] is None else float(rec["sf"]) - float(sf0)
        for name, rec in sorted(variations.items())
    }


def shift_stat(nominal: Any, variation: Any, n_min: int = 2) -> float | None:
    """Standard deviation (ddof=1, outliers clipped) of (variation - nominal) over the replicas both define.

    None with fewer than ``n_min`` (and 2) defined pairs.
    """
    if nominal is None or variation is None or len(nominal) != len(variation):
        return None
    d = np.asarray(variation, dtype=np.float64) - np.asarray(nominal, dtype=np.float64)
    d = d[np.isfinite(d)]
    if len(d) < max(2, n_min):
        return None
    from qgcal.extraction import replica_sigma

    return replica_sigma(d)  # outlier replicas clipped, as the SF's own bootstrap error


def combine_bin(
    nominal: Mapping[str, Any],
    variations: Mapping[str, Mapping[str, Any]],
    comps: Sequence[Component],
    treatment: Mapping[str, tuple[float | None, float | None, str]] | None = None,
) -> dict[str, Any]:
    """One combined record: the nominal fields plus shifts, per-group and total errors.

    ``treatment``: variation -> (shift used, its statistical error, "kept" | "pruned" |
    "smoothed"), from :func:`treat_shifts`; without it every shift is kept as measured.
    """
    sf0 = nominal["sf"]
    measured = raw_shifts(nominal, variations)
    shifts: dict[str, float | None] = dict(measured)
    stats: dict[str, float | None] = dict.fromkeys(measured)
    how: dict[str, str] = dict.fromkeys(measured, "kept")
    for name, (used, err, what) in (treatment or {}).items():
        if name in shifts:
            shifts[name], stats[name], how[name] = used, err, what
    variation_flags: dict[str, list[str]] = {}
    for name, rec in sorted(variations.items()):
        extra = sorted(set(rec["flags"]) - set(nominal["flags"]))
        if extra:
            variation_flags[name] = extra
    per_group: dict[str, list[Errors]] = {}
    for comp in comps:
        per_group.setdefault(comp.group, []).append(component_errors(comp, shifts))
    groups: dict[str, dict[str, float | None]] = {}
    for group, errs in sorted(per_group.items()):
        defined = all(e is not None for e in errs)
        groups[group] = {
            "up": quadrature(e[0] for e in errs if e is not None) if defined else None,
            "down": quadrature(e[1] for e in errs if e is not None) if defined else None,
        }
    flags = set(nominal["flags"])
    undefined = sorted(n for n, s in shifts.items() if s is None)
    if sf0 is not None and undefined:
        flags.add(FLAG_UNDEFINED)
    if variation_flags:
        flags.add(FLAG_VARIATION)
    if sf0 is None and not flags:
        flags.add("undefined")
    out = dict(nominal)
    out.update(
        {
            "flags": sorted(flags),
            "variations": shifts,
            "variations_measured": measured,
            "shift_stat": stats,
            "shift_significance": {n: _significance(measured[n], stats[n]) for n in measured},
            "shift_treatment": how,
            "undefined_variations": undefined if sf0 is not None else [],
            "variation_flags": variation_flags,
            "groups": groups,
            "total_up": quadrature(g["up"] for g in groups.values()),
            "total_down": quadrature(g["down"] for g in groups.values()),
        }
    )
    return out


def _significance(shift: float | None, err: float | None) -> float | None:
    if shift is None or err is None or not err > 0:
        return None
    return shift / err


def treat_shifts(
    specs: Sequence[VariationSpec],
    nominal: Sequence[Mapping[str, Any]],
    shifts: Sequence[Mapping[str, float | None]],
    stats: Sequence[Mapping[str, float | None]],
    policy: ShiftPolicy = "keep",
    min_significance: float = 1.0,
) -> list[dict[str, tuple[float | None, float | None, str]]]:
    """The shift each record uses per variation: (shift, its stat error, what was done).

    ``prune``: a single with |shift| < N sigma, or a pair whose two halves both are, counts as 0.
    ``smooth``: per (tagger, WP, parton) series, runs of adjacent pT bins whose shifts are below N
    sigma are merged left to right into the inverse-variance mean of their shifts until
    |mean| >= N sigma(mean) (:func:`_smooth_groups`); a significant bin, or one without a stat
    error, is never merged. Set members, and every shift with ``keep``, are used as measured.
    """
    out: list[dict[str, tuple[float | None, float | None, str]]] = [
        {n: (sh.get(n), st.get(n), "kept") for n in sh} for sh, st in zip(shifts, stats)
    ]
    if policy == "keep":
        return out
    treatable = [s for s in specs if s.set is None]
    if policy == "prune":
        by_name = {s.name: s for s in specs}
        for row in out:
            for s in treatable:
                members = [s.name] if s.pair is None else [s.name, by_name[s.pair].name]
                if all(_insignificant(row[m][0], row[m][1], min_significance) for m in members):
                    row[s.name] = (0.0, row[s.name][1], "pruned")
        return out
    if policy != "smooth":
        raise ConfigError(f"calibration.shift_policy: {policy!r} is not keep, prune or smooth")
    series: dict[tuple[str, float, str], list[int]] = {}
    for i, rec in enumerate(nominal):
        series.setdefault((rec["tagger"], float(rec["working_point"]), rec["parton"]), []).append(i)
    for idx in series.values():
        idx = sorted(idx, key=lambda i: float(nominal[i]["pt_low"]))
        for s in treatable:
            for group in _smooth_groups([out[i][s.name] for i in idx], min_significance):
                if len(group) < 2:
                    continue
                vals = [out[idx[g]][s.name] for g in group]
                wsum = math.fsum(1.0 / float(e) ** 2 for _, e, _ in vals if e)
                mean = math.fsum(float(v) / float(e) ** 2 for v, e, _ in vals if e and v is not None) / wsum
                for g in group:
                    out[idx[g]][s.name] = (mean, out[idx[g]][s.name][1], "smoothed")
    return out


def _insignificant(shift: float | None, err: float | None, n_sigma: float) -> bool:
    """|shift| < n_sigma x its error (a shift without an error is never pruned)."""
    if shift is None or err is None:
        return False
    return abs(shift) < n_sigma * err


def _smooth_groups(vals: Sequence[tuple[float | None, float | None, str]], n_sigma: float) -> list[list[int]]:
    """Bin groups for smoothing: a bin significant alone (or without an error) stays alone; each run of
    adjacent insignificant bins is merged left to right until the group's inverse-variance mean is
    significant, and a tail that never is joins the group before it in the run (a run that never
    reaches it is one group).
    """

    def mergeable(i: int) -> bool:
        v, e, _ = vals[i]
        return v is not None and e is not None and e > 0 and abs(v) < n_sigma * e

    groups: list[list[int]] = []
    i = 0
    while i < len(vals):
        if not mergeable(i):
            groups.append([i])
            i += 1
            continue
        run_groups: list[list[int]] = []
        current: list[int] = []
        while i < len(vals) and mergeable(i):
            current.append(i)
            pts = [(float(vals[j][0] or 0.0), float(vals[j][1] or 1.0)) for j in current]
            w = [1.0 / e**2 for _, e in pts]
            mean = math.fsum(wi * v for wi, (v, _) in zip(w, pts)) / math.fsum(w)
            if abs(mean) * math.sqrt(math.fsum(w)) >= n_sigma:
                run_groups.append(current)
                current = []
            i += 1
        if current:
            if run_groups:
                run_groups[-1].extend(current)
            else:
                run_groups.append(current)
        groups.extend(run_groups)
    return groups


def _key(rec: Mapping[str, Any]) -> BinKey:
    return (rec["tagger"], float(rec["working_point"]), rec["parton"], float(rec["pt_low"]), float(rec["pt_high"]))


def combine_records(
    specs: Sequence[VariationSpec],
    nominal: Sequence[Mapping[str, Any]],
    variations: Mapping[str, Sequence[Mapping[str, Any]]],
    replicas: Mapping[str, Mapping[str, Any] | None] | None = None,
    policy: ShiftPolicy = "keep",
    min_significance: float = 1.0,
) -> list[dict[str, Any]]:
    """Combined records, one per nominal record, in nominal's order.

    Every variation must have a record for every nominal bin, made with the same cut
    (cuts are frozen from nominal; a different cut means results of another config).
    ``replicas``: systematic (``nominal`` too) -> record key -> replica SFs
    (:func:`qgcal.extraction.load_replicas`), for each shift's statistical error and the
    ``policy`` (:func:`treat_shifts`).
    """
    comps = components(specs)
    names = [s.name for s in specs]
    missing = [n for n in names if n not in variations]
    if missing:
        raise ArtifactError(f"no records for variation(s) {', '.join(missing)}")
    indexed: dict[str, dict[BinKey, Mapping[str, Any]]] = {}
    nominal_keys = [_key(r) for r in nominal]
    for name in names:
        idx = {_key(r): r for r in variations[name]}
        if set(idx) != set(nominal_keys):
            raise ArtifactError(
                f"results/{name}/scale_factors.json has other bins than results/nominal "
                "(made with another config?); rerun 'qgcal sweep --config C'"
            )
        indexed[name] = idx
    per_bin: list[dict[str, Mapping[str, Any]]] = []
    for key, rec in zip(nominal_keys, nominal):
        per_var = {n: indexed[n][key] for n in names}
        for n, vrec in per_var.items():
            if vrec.get("cut") != rec.get("cut"):
                raise ArtifactError(
                    f"results/{n}/scale_factors.json: cut {vrec.get('cut')} differs from nominal's "
                    f"{rec.get('cut')} for {key[0]} WP {key[1]:g} {key[3]:g}-{key[4]:g} GeV (cuts are frozen "
                    "from nominal: the results come from different runs); rerun 'qgcal sweep --config C'"
                )
        per_bin.append(per_var)
    shifts = [raw_shifts(rec, per_var) for rec, per_var in zip(nominal, per_bin)]
    stats = [_shift_stats(rec, names, replicas) for rec in nominal]
    treated = treat_shifts(specs, nominal, shifts, stats, policy, min_significance)
    return [combine_bin(rec, per_var, comps, t) for rec, per_var, t in zip(nominal, per_bin, treated)]


def _shift_stats(
    rec: Mapping[str, Any], names: Sequence[str], replicas: Mapping[str, Mapping[str, Any] | None] | None
) -> dict[str, float | None]:
    """Each variation's shift stat error for one record (None without replicas on both sides)."""
    from qgcal.extraction import replica_key

    nom = (replicas or {}).get("nominal")
    if nom is None or rec["sf"] is None:
        return dict.fromkeys(names)
    k = replica_key(rec)
    n_min = len(nom.get(k, ())) // 2
    out: dict[str, float | None] = {}
    for n in names:
        var = (replicas or {}).get(n)
        out[n] = None if var is None else shift_stat(nom.get(k), var.get(k), n_min)
    return out


# ----------------------------------------------------------------------------- files


def results_path(cfg: Config, syst: str) -> Path:
    return cfg.output_path / "results" / syst / "scale_factors.json"


def combined_path(cfg: Config) -> Path:
    return cfg.output_path / "results" / "combined" / "scale_factors.json"


def _read_records(path: Path, syst: str, config_path: str) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ArtifactError(
            f"{path}: not found (results of systematic {syst!r}); run "
            f"'qgcal sweep --config {config_path}' (or 'qgcal run --config {config_path} "
            f"--syst {syst}') first"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        records = doc["records"]
    except (ValueError, KeyError, TypeError) as err:
        raise ArtifactError(
            f"{path}: not a qgcal scale_factors.json ({err}); rerun 'qgcal run --config {config_path} --syst {syst}'"
        ) from None
    return list(records)


def load_results(cfg: Config, *, config_path: str = "C") -> dict[str, list[dict[str, Any]]]:
    """Records of nominal and of every configured variation; a missing file is a one-line error."""
    return {s: _read_records(results_path(cfg, s), s, config_path) for s in cfg.variation_names()}


def _metadata(cfg: Config, specs: Sequence[VariationSpec], records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    from qgcal.extraction import stat_method

    comps = components(specs)
    member_of = {m: c.name for c in comps for m in c.members}
    systematics = {
        s.name: {
            "group": s.group,
            "kind": s.kind,
            "direction": s.direction,
            "pair": s.pair,
            "set": s.set,
            "set_combine": s.set_combine if s.set else None,
            "component": member_of[s.name],
        }
        for s in specs
    }
    groups: dict[str, list[dict[str, Any]]] = {}
    for c in comps:
        groups.setdefault(c.group, []).append({"name": c.name, "rule": c.rule, "members": list(c.members)})
    out = cfg.output_path
    inputs = {}
    for s in cfg.variation_names():
        p = results_path(cfg, s)
        inputs[s] = {"path": str(p.relative_to(out)), "sha256": sha256_file(p)}
    return {
        "config_name": cfg.name,
        "qgcal_version": __version__,
        "pt_unit": "GeV",
        "systematics": systematics,
        "groups": dict(sorted(groups.items())),
        "conventions": CONVENTIONS,
        "shift_policy": {
            "policy": cfg.calibration.shift_policy,
            "min_significance": cfg.calibration.shift_min_significance,
            "pruned": sum(1 for r in records for t in r["shift_treatment"].values() if t == "pruned"),
            "smoothed": sum(1 for r in records for t in r["shift_treatment"].values() if t == "smoothed"),
            "with_stat": sum(1 for r in records for e in r["shift_stat"].values() if e is not None),
        },
        "inputs": inputs,
        "stat_method": stat_method(cfg),
        "n_records": len(records),
        "n_flagged": sum(1 for r in records if r["flags"]),
        "null_means": "undefined (NaN); the record's flags say why",
    }


NONCLOSURE_SUFFIX = "_nonclosure"


def nonclosure_variations(
    cfg: Config, nominal: Sequence[Mapping[str, Any]], results: Mapping[str, Sequence[Mapping[str, Any]]]
) -> list[tuple[VariationSpec, list[dict[str, Any]]]]:
    """The MC non-closure of each sample variation with ``nonclosure: <group>``, as one more single.

    Its records are nominal's with SF + (extracted - true SF on the pseudo-data), so its shift is the
    non-closure itself, symmetrised like any single (``<variation>_nonclosure``, kind ``nonclosure``).
    """
    from qgcal.config import SampleVariation

    index = {_key(r): r for r in nominal}
    out = []
    for name, var in cfg.variations.items():
        if not (isinstance(var, SampleVariation) and var.nonclosure):
            continue
        recs = []
        for r in results[name]:
            nom = index.get(_key(r))
            if nom is None:
                continue  # combine_records reports the mismatch
            if "nonclosure" not in r:
                raise ArtifactError(
                    f"results/{name}/scale_factors.json has no non-closure (made before 'nonclosure' was set?); "
                    f"rerun 'qgcal run --config C --syst {name}'"
                )
            nc = r["nonclosure"]
            sf = None if nom["sf"] is None or nc is None else float(nom["sf"]) + float(nc)
            recs.append({**nom, "sf": sf, "flags": list(nom["flags"])})
        out.append((VariationSpec(name + NONCLOSURE_SUFFIX, var.nonclosure, "nonclosure"), recs))
    return out


def combine(cfg: Config, *, config_path: str = "C") -> Combined:
    """Read every systematic's results, combine, write ``results/combined/scale_factors.json``.

    Deterministic bytes: sorted keys, no timestamps, inputs identified by content hash.
    ``config_path`` only appears in error messages (the command to run).
    """
    from qgcal.extraction import REPLICAS_FILE, load_replicas

    specs = specs_from_config(cfg)
    results = load_results(cfg, config_path=config_path)
    nominal = results.pop("nominal")
    replicas: dict[str, Any] = {
        s: load_replicas(results_path(cfg, s).parent / REPLICAS_FILE) for s in cfg.variation_names()
    }
    for spec, recs in nonclosure_variations(cfg, nominal, results):
        specs.append(spec)
        results[spec.name] = recs
        replicas[spec.name] = None
    policy, n_sigma = cfg.calibration.shift_policy, cfg.calibration.shift_min_significance
    records = combine_records(specs, nominal, results, replicas, policy, n_sigma)
    combined = Combined(_metadata(cfg, specs, records), records, combined_path(cfg))
    assert combined.path is not None
    write_json_atomic(combined.path, {"metadata": combined.metadata, "records": combined.records})
    return combined


def load_combined(cfg: Config, *, config_path: str = "C") -> Combined:
    """The combined results written by :func:`combine`; a missing file names the command to run."""
    path = combined_path(cfg)
    if not path.is_file():
        raise ArtifactError(f"{path}: not found; run 'qgcal combine --config {config_path}' first")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return Combined(doc["metadata"], doc["records"], path)
    except (ValueError, KeyError, TypeError) as err:
        raise ArtifactError(f"{path}: unreadable ({err}); rerun 'qgcal combine --config {config_path}'") from None
