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
  (ddof = 1; |shift| for a set of one) of its members' shifts, or with
  ``set_combine: envelope`` the largest |shift|, then symmetrised;
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
    "pair_errors",
    "quadrature",
    "set_errors",
    "single_errors",
    "specs_from_config",
]

Direction = Literal["up", "down", "single"]
SetCombine = Literal["std", "envelope"]
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
    "set": "std: sample standard deviation (ddof=1) of the members' shifts; envelope: max |shift|; symmetrised",
    "group": "components added in quadrature",
    "total": "groups added in quadrature; statistical error separate ('stat')",
    "errors": "magnitudes: the band is [sf - down, sf + up]",
    "null": "undefined (NaN); a null shift makes its group and the total null and flags the record",
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
    rule: Literal["pair", "single", "std", "envelope"]
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
    """A replica set: sample standard deviation (ddof=1) or envelope of the shifts, symmetrised."""
    if not shifts or any(s is None for s in shifts):
        return None
    vals = [float(s) for s in shifts if s is not None]
    if how == "envelope" or len(vals) == 1:
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


def combine_bin(
    nominal: Mapping[str, Any], variations: Mapping[str, Mapping[str, Any]], comps: Sequence[Component]
) -> dict[str, Any]:
    """One combined record: the nominal fields plus shifts, per-group and total errors."""
    sf0 = nominal["sf"]
    shifts: dict[str, float | None] = {}
    variation_flags: dict[str, list[str]] = {}
    for name, rec in sorted(variations.items()):
        shifts[name] = None if sf0 is None or rec["sf"] is None else float(rec["sf"]) - float(sf0)
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
            "undefined_variations": undefined if sf0 is not None else [],
            "variation_flags": variation_flags,
            "groups": groups,
            "total_up": quadrature(g["up"] for g in groups.values()),
            "total_down": quadrature(g["down"] for g in groups.values()),
        }
    )
    return out


def _key(rec: Mapping[str, Any]) -> BinKey:
    return (rec["tagger"], float(rec["working_point"]), rec["parton"], float(rec["pt_low"]), float(rec["pt_high"]))


def combine_records(
    specs: Sequence[VariationSpec],
    nominal: Sequence[Mapping[str, Any]],
    variations: Mapping[str, Sequence[Mapping[str, Any]]],
) -> list[dict[str, Any]]:
    """Combined records, one per nominal record, in nominal's order.

    Every variation must have a record for every nominal bin, made with the same cut
    (cuts are frozen from nominal; a different cut means results of another config).
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
    out = []
    for key, rec in zip(nominal_keys, nominal):
        per_var = {n: indexed[n][key] for n in names}
        for n, vrec in per_var.items():
            if vrec.get("cut") != rec.get("cut"):
                raise ArtifactError(
                    f"results/{n}/scale_factors.json: cut {vrec.get('cut')} differs from nominal's "
                    f"{rec.get('cut')} for {key[0]} WP {key[1]:g} {key[3]:g}-{key[4]:g} GeV (cuts are frozen "
                    "from nominal: the results come from different runs); rerun 'qgcal sweep --config C'"
                )
        out.append(combine_bin(rec, per_var, comps))
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
        "inputs": inputs,
        "n_records": len(records),
        "n_flagged": sum(1 for r in records if r["flags"]),
        "null_means": "undefined (NaN); the record's flags say why",
    }


def combine(cfg: Config, *, config_path: str = "C") -> Combined:
    """Read every systematic's results, combine, write ``results/combined/scale_factors.json``.

    Deterministic bytes: sorted keys, no timestamps, inputs identified by content hash.
    ``config_path`` only appears in error messages (the command to run).
    """
    specs = specs_from_config(cfg)
    results = load_results(cfg, config_path=config_path)
    nominal = results.pop("nominal")
    records = combine_records(specs, nominal, results)
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
