"""Render the config reference (docs/config.md) from the pydantic models themselves.

Why generated: the field descriptions live next to the validation rules, so the
reference cannot drift from what the loader accepts; a test checks that
docs/config.md is current (``python -m qgcal.config_docs > docs/config.md``).
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from qgcal.config import (
    Binning,
    BranchTagger,
    BranchVariation,
    Calibration,
    Config,
    ConstituentTagger,
    Executor,
    ModelTagger,
    OtherVariation,
    Plots,
    Reading,
    Requirement,
    ReweightingVariation,
    Sample,
    SampleVariation,
    Selection,
    Slice,
    Slurm,
    SumOfWeights,
    TreeVariation,
    Trigger,
    Truth,
    Units,
    WeightVariation,
)
from qgcal.inference.config import InferenceConfig, TritonSettings

__all__ = ["render_markdown"]

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("top level", Config),
    ("units", Units),
    ("samples.<name>", Sample),
    ("samples.<name>.slices.<slice>", Slice),
    ("samples.<name>.sum_of_weights", SumOfWeights),
    ("samples.<name>.triggers[i]", Trigger),
    ("selection", Selection),
    ("selection.event_cuts[i], selection.jet_cuts[i]", Requirement),
    ("truth", Truth),
    ("taggers.<name> (kind: branch)", BranchTagger),
    ("taggers.<name> (kind: model)", ModelTagger),
    ("taggers.<name> (kind: constituents)", ConstituentTagger),
    ("taggers.<name>.bins", Binning),
    ("variations.<name> (kind: tree)", TreeVariation),
    ("variations.<name> (kind: branch)", BranchVariation),
    ("variations.<name> (kind: weight)", WeightVariation),
    ("variations.<name> (kind: sample)", SampleVariation),
    ("variations.<name> (kind: reweighting)", ReweightingVariation),
    ("variations.<name> (kind: other)", OtherVariation),
    ("executor", Executor),
    ("slurm", Slurm),
    ("reading", Reading),
    ("inference", InferenceConfig),
    ("inference.triton", TritonSettings),
    ("calibration", Calibration),
    ("plots", Plots),
]

INTRO = """# Config reference

A qgcal config is one YAML file. Unknown keys are rejected (with the closest valid key
suggested), every value is validated, and relative paths resolve against the config file's
directory. Energies in the config are **GeV**; `units.energy` declares what the ntuple stores.
Check a config with `qgcal validate CONFIG`; `qgcal validate --schema` prints the JSON Schema
for editors. Complete examples: `configs/demo.yaml` (the generated sample),
`configs/atlas.yaml` (a real ATLAS dijet ntuple production), `configs/atlas_physlite.yaml`
(ATLAS DAOD_PHYSLITE: xAOD branch names, `mcEventWeights[0]`, an event-level cleaning flag),
`configs/cms_nanoaod.yaml` and `configs/cms_nanoaod_v15.yaml` (CMS NanoAOD: `Runs/genEventSumw`
bookkeeping, jet ID bits or fractions, tagger validity ranges). Inputs are TTrees or RNTuples
(the same keys). In YAML write exponents with a decimal point and a sign (`3.0e+7`): YAML 1.1
reads `3e7`, `3e+7` and `3.0e7` as strings, which the loader rejects as "not a valid number".

Branch expressions are a branch name (dots and slashes allowed: `AK4CHS.pt`,
`GenEvtInfo/weight`) or `name[i]`, element `i` of a per-event vector (`pdf_weight[3]`). They
are looked up as branch names, never evaluated. Logical branch names the engine uses:
`run`, `event`, `jet_pt`, `jet_eta` (required), `trigger`, `jet_cleaning`, the truth label
(`parton_label` by default), the event-weight factors listed in `event_weight`, and every
tagger variable or model feature.

This file is generated from the schema: `python -m qgcal.config_docs > docs/config.md`.
"""


# Prose after a section's table: where users tripped (the tables say what a key is, these say what it means).
NOTES: dict[str, str] = {
    "top level": """
**`event_weight`** lists LOGICAL names (keys of `branches`), multiplied into the MC event weight;
never read for data. Each must map to a per-event number: a scalar branch (`genWeight`,
`mcEventWeight`) or element `i` of a per-event vector (`mc_weight: "EventInfoAuxDyn.mcEventWeights[0]"`
in `branches`, then `event_weight: [mc_weight]`). A per-jet branch is an error. Weights may have any
scale (generator weights of 1e5-1e8 are normal): the slice normalisation divides by the sum of weights.

**`lumi_pb` and `xsec_pb` do not change the scale factors.** They normalise the MC to the data for
the plots and for the merge of slices; the matrix method uses normalised shapes, and every
luminosity- or cross-section-dependent normalisation cancels in them. What does matter is the RELATIVE
weight of the slices (their cross-sections x filter efficiencies / sums of weights): it sets the MC's pT
spectrum inside a pT bin. The one exception is `truth.other_norm: lumi` (the subtracted third-class yield
is then the luminosity-normalised MC's).
""",
    "samples.<name>.triggers[i]": """
Without `triggers` a sample uses `selection.require_trigger` and the logical `trigger`. A sample's own
list replaces that: `triggers: []` asks for no trigger (CMS MC, where `HLT_PFJet*` is absent or never
fires), and only the sample's own trigger branches are read, so a data-only branch need not exist in
the MC files. `trigger_mode: pt_ranges` is the usual prescaled single-jet scheme: each trigger is used
only in the leading-jet pT range where it is fully efficient (`[lead_pt_min_gev, lead_pt_max_gev)`, GeV,
ranges may not overlap); an event counts if its leading-jet pT lies in a range and that range's trigger
fired, and its weight (data too) is multiplied by that trigger's `prescale` or `prescale_variable`.
""",
    "selection": """
Order of the cuts (and of the cut flow): two jets, trigger(s), `event_cuts`, sub-leading pT, leading pT,
pT balance, |eta|, weight cuts (MC), cleaning, `jet_cuts`, nTracks, truth labels (`truth.other:
drop_events` only). `qgcal run` logs the cut flow of every sample (events and sum of weights after
each cut; MC weights normalised to the luminosity), `qgcal status` shows it for nominal, and the error
for data with no selected event quotes it. A cut other than the phase-space ones (kinematics,
triggers) that removes more than `warn_fraction` of the events reaching it is reported once per sample
and run, as is a tagger whose `valid` range leaves out more than that fraction of the selected jets.

**Weight cuts are off by default.** `abs_weight_max` compares the RAW weight (generator weight x
the other `event_weight` factors) with a number in the ntuple's weight units: right for a
production whose weights are O(1), and it removes everything from one whose weights are 1e5-1e8
(ATLAS `mcEventWeights`). `rel_weight_max` is in units of each slice's `weight_ref` (a number in the
config, e.g. the slice's sum of weights / generated events from AMI or the bookkeeping), so it means
the same in every slice and, as a config value, does not depend on which files a job reads.

`jet_cuts` and `event_cuts` test integer branches bit by bit: CMS NanoAOD `Jet_jetId & 2`
("tight") is `{variable: jet_id, bits_all: 2}` with `jet_id: Jet_jetId` in `branches`.
`require_cleaning`'s `jet_cleaning` may be per jet (both leading jets must pass) or per event.
""",
    "selection.event_cuts[i], selection.jet_cuts[i]": """
Examples: `{variable: met_filters}` (nonzero), `{variable: jet_id, bits_all: 6, name: tightLepVeto}`,
`{variable: flags, bits_none: 1}` (bit 0 not set), `{variable: pu_id, min: 4, apply_to: mc}`. A
`name` must be unique within its list: it names the cut in the cut flow (`jet_cut.<name>`).
""",
    "truth": """
Jets labelled neither quark nor gluon (unmatched, label <= 0, or a label in neither list) form the
'other' class, kept in the templates (histogram flavour 99). With `other: subtract` (default) the
matrix method sees quark + gluon only: MC totals lose their 'other' jets, and data lose the MC's
'other' shape normalised like the MC (`other_norm`), times `other_scale`; vary `other_scale` (e.g.
0.5 and 1.5) with a pair of `kind: other` variations for the systematic on its normalisation.
`gluon` counts them as gluons;
`drop_events` (the behaviour before this option, also `require_positive: true`) drops MC events
whose leading jets are not both labelled > 0, while data keep theirs: it biases the data side
whenever such jets exist (see docs/physics.md).
""",
    "taggers.<name> (kind: branch)": """
**Out-of-range values.** `valid: [lo, hi]` (inclusive) declares the values a tagger can take:
sentinels outside it (NanoAOD `Jet_qgl = -1` for jets without a q/g value, the generated
`trackBDT = -10` for jets without tracks) and NaN are left out of THIS tagger's histograms and
bootstrap replicas (other taggers keep the jet) and counted per tagger in the cut flow; they are
never folded into an edge bin (which would count an undefined jet as the most quark- or gluon-like).
Without `valid`, NaN is still left out and every other value outside the binning is folded into the
first or last bin.

**A cut on an integer tagger** (nTracks) lies on a bin edge: a jet is quark-tagged when its value is
`< cut` (`quark_side: low`) or `>= cut` (`high`); with edges on integers, `cut: 12` means
`nTracks <= 11`. Only the efficiencies of whole integer steps are reachable, so a working point's
realised MC quark efficiency (`eff_mc` in the records) is the reachable one next to the nominal
value (`calibration.wp_rule`), not the nominal value itself. Use edges on integers (one value per
bin); edges between integers give the same cuts with fewer distinct values per bin.
""",
}


def _type_name(annotation: Any) -> str:
    text = str(annotation) if not isinstance(annotation, type) else annotation.__name__
    if "discriminator='kind'" in text:
        variations = (
            "TreeVariation or BranchVariation or WeightVariation or SampleVariation or ReweightingVariation "
            "or OtherVariation"
        )
        inner = "BranchTagger or ModelTagger or ConstituentTagger" if "Tagger" in text else variations
        return f"dict[str, {inner}] (by `kind`)"
    for junk in ("typing.", "qgcal.config.", "qgcal.inference.config.", "<class '", "'>"):
        text = text.replace(junk, "")
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return "tagger or variation (by `kind`)"
    return text.replace("|", "or").replace("NoneType", "null")


def _default(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    if field.default_factory is not None:
        return "(section defaults)"
    value = field.default
    return f"`{value!r}`" if value is not None else "`null`"


def render_markdown() -> str:
    lines = [INTRO]
    for title, model in SECTIONS:
        lines.append(f"## `{title}`\n")
        doc = (model.__doc__ or "").strip().splitlines()
        if doc:
            lines.append(doc[0] + "\n")
        lines.append("| key | type | default | meaning |")
        lines.append("|---|---|---|---|")
        for name, field in model.model_fields.items():
            if field.exclude:
                continue
            desc = (field.description or "").replace("|", "\\|")
            typ = _type_name(field.annotation).replace("|", "\\|")
            lines.append(f"| `{name}` | {typ} | {_default(field)} | {desc} |")
        lines.append("")
        if title in NOTES:
            lines.append(NOTES[title].strip() + "\n")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(render_markdown(), end="")
