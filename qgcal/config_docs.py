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
    Executor,
    ModelTagger,
    Plots,
    Reading,
    ReweightingVariation,
    Sample,
    SampleVariation,
    Selection,
    Slice,
    Slurm,
    SumOfWeights,
    TreeVariation,
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
    ("selection", Selection),
    ("truth", Truth),
    ("taggers.<name> (kind: branch)", BranchTagger),
    ("taggers.<name> (kind: model)", ModelTagger),
    ("taggers.<name>.bins", Binning),
    ("variations.<name> (kind: tree)", TreeVariation),
    ("variations.<name> (kind: branch)", BranchVariation),
    ("variations.<name> (kind: weight)", WeightVariation),
    ("variations.<name> (kind: sample)", SampleVariation),
    ("variations.<name> (kind: reweighting)", ReweightingVariation),
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
for editors. Complete examples: `configs/demo.yaml` (the generated sample) and
`configs/atlas.yaml` (a real ATLAS dijet ntuple production).

Branch expressions are a branch name (dots and slashes allowed: `AK4CHS.pt`,
`GenEvtInfo/weight`) or `name[i]`, element `i` of a per-event vector (`pdf_weight[3]`). They
are looked up as branch names, never evaluated. Logical branch names the engine uses:
`run`, `event`, `jet_pt`, `jet_eta` (required), `trigger`, `jet_cleaning`, the truth label
(`parton_label` by default), the event-weight factors listed in `event_weight`, and every
tagger variable or model feature.

This file is generated from the schema: `python -m qgcal.config_docs > docs/config.md`.
"""


def _type_name(annotation: Any) -> str:
    text = str(annotation) if not isinstance(annotation, type) else annotation.__name__
    if "discriminator='kind'" in text:
        variations = "TreeVariation or BranchVariation or WeightVariation or SampleVariation or ReweightingVariation"
        inner = "BranchTagger or ModelTagger" if "Tagger" in text else variations
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
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(render_markdown(), end="")
