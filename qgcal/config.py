"""The YAML config as typed pydantic models.

Why typed models: every field is validated where it is declared (increasing bin
edges, working points in (0, 1), safe names), unknown keys are rejected with the
closest valid key suggested, and the JSON Schema can be exported for editors
(``qgcal validate --schema``). Cross references (a tagger naming a branch, a
variation naming a branch or sample) are checked once, in
:meth:`Config._cross_references`.

Units: energies in the config (cuts, pT bins) are always GeV; the ``units``
section declares what the ntuple stores (ATLAS ntuples: MeV).
"""

from __future__ import annotations

import glob
import itertools
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from qgcal.errors import ConfigError, did_you_mean
from qgcal.inference.config import InferenceConfig

__all__ = [
    "OPTION_SETTINGS",
    "RESERVED_NAMES",
    "BranchExpr",
    "Config",
    "format_validation",
    "load_config",
    "load_yaml",
    "parse_branch_expr",
    "parse_config",
]

SAFE_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}"  # matched with re.fullmatch (a '$' would accept "x\n")
RESERVED_NAMES = frozenset({"nominal", "combined", "results", "slurm", "models"})
# options of the CLI and the library API that set a config setting (applied by Config.with_overrides)
OPTION_SETTINGS = {
    "workers": "executor.workers",
    "executor": "executor.kind",
    "scheduler": "executor.scheduler",
    "skip_bad_files": "reading.skip_bad_files",
    "backend": "inference.backend",
    "device": "inference.device",
    "triton_url": "inference.triton.url",
}
_ENERGY_TO_GEV = {"MeV": 1e-3, "GeV": 1.0, "TeV": 1e3}
# what uproot's step_size accepts as a memory size (uproot._util.memory_size), positive only
_MEMORY_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmgtpezy]?i?b)", re.IGNORECASE)
_BRANCH_EXPR = re.compile(r"^(?P<name>[^\[\]\s]+)(\[(?P<index>\d+)\])?$")


class _Model(BaseModel):
    # allow_inf_nan=False: '.inf' or '.nan' in YAML is a float to pydantic, never a sensible setting.
    # strict=True: no bool as a number ('lumi_pb: true'), no string as a bool ("require_trigger: 'yes'"),
    # no number as a string; an int is still a float ('lumi_pb: 20').
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


# ----------------------------------------------------------------------------- branches


class BranchExpr(_Model):
    """A branch name, optionally taking element ``index`` of a per-event vector."""

    name: str
    index: int | None = None

    def __str__(self) -> str:
        return self.name if self.index is None else f"{self.name}[{self.index}]"


def parse_branch_expr(text: str) -> BranchExpr:
    """Parse ``name`` or ``name[i]``; names may contain dots and slashes."""
    m = _BRANCH_EXPR.match(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"expected a branch name or 'name[i]' (element i of a per-event vector), found {text!r}")
    idx = m.group("index")
    return BranchExpr(name=m.group("name"), index=None if idx is None else int(idx))


def _check_expr(value: str) -> str:
    parse_branch_expr(value)
    return value


# ----------------------------------------------------------------------------- samples


class SumOfWeights(_Model):
    """Where the sum of generator weights over ALL generated events of a slice comes from.

    Real normalisation comes from bookkeeping written before any skim: a cutflow
    histogram per file (ATLAS ``histoEventCount``-like), a bookkeeping tree per file
    (CMS NanoAOD ``Runs/genEventSumw``), or a number (AMI, the dataset's full
    bookkeeping). Each file's share is read from that file alone and the slice's sum is
    formed when the files are merged, so every per-file artifact stays independent of
    the other files. Summing the weight branch of the events tree itself is right ONLY
    when that tree holds every generated event (an unskimmed tree).
    """

    source: Literal["histogram", "branch", "value"] = Field(
        description="histogram: a TH1 bin in each file; branch: sum of a branch over all entries of "
        "'tree' in each file (default tree: the events tree itself, valid only for unskimmed trees); "
        "value: a number for the slice ('value', or each slice's own 'sum_of_weights')"
    )
    histogram: str | None = Field(None, description="TH1 name in each MC file (source=histogram)")
    bin: int | None = Field(None, ge=1, description="1-based ROOT bin number holding the sum of weights")
    branch: str | None = Field(
        None,
        description="branch expression summed over all entries (source=branch), e.g. genEventSumw of the "
        "CMS 'Runs' tree, or the event weight itself for an unskimmed events tree",
    )
    tree: str | None = Field(
        None,
        description="source=branch: the bookkeeping tree (or RNTuple) holding 'branch' in each file, e.g. "
        "'Runs' (CMS NanoAOD); summed over its entries and over every file of the slice. Default: the "
        "events tree itself (valid only when it holds every generated event, i.e. it is not skimmed)",
    )
    value: float | None = Field(
        None,
        gt=0,
        description="source=value: the sum of weights of each slice (the same number for all slices; "
        "set samples.<s>.slices.<x>.sum_of_weights to give each slice its own)",
    )

    @model_validator(mode="after")
    def _complete(self) -> SumOfWeights:
        need = {"histogram": ("histogram", "bin"), "branch": ("branch",), "value": ()}
        missing = [k for k in need[self.source] if getattr(self, k) is None]
        if missing:
            raise ValueError(f"source={self.source!r} needs {', '.join(missing)}")
        if self.tree is not None and self.source != "branch":
            raise ValueError(f"'tree' is the tree of source=branch; source={self.source!r} does not read one")
        if self.branch is not None:
            _check_expr(self.branch)
        return self


class Trigger(_Model):
    """One trigger of a sample: a per-event logical branch, nonzero when it fired."""

    variable: str = Field(description="logical branch (a key of 'branches'), per event, nonzero = fired")
    lead_pt_min_gev: float | None = Field(
        None, ge=0, description="trigger_mode pt_ranges: used for leading-jet pT >= this (GeV)"
    )
    lead_pt_max_gev: float | None = Field(
        None, gt=0, description="trigger_mode pt_ranges: ... and < this (GeV); null: no upper end"
    )
    prescale: float | None = Field(None, gt=0, description="pt_ranges: fixed prescale multiplying the event weight")
    prescale_variable: str | None = Field(
        None, description="pt_ranges: logical per-event branch holding the prescale (multiplies the event weight)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Trigger:
        if self.prescale is not None and self.prescale_variable is not None:
            raise ValueError("give 'prescale' (a number) or 'prescale_variable' (a branch), not both")
        if (
            self.lead_pt_min_gev is not None
            and self.lead_pt_max_gev is not None
            and not self.lead_pt_max_gev > self.lead_pt_min_gev
        ):
            raise ValueError(f"lead_pt_max_gev ({self.lead_pt_max_gev}) must be above lead_pt_min_gev")
        return self


class Slice(_Model):
    """One pT-hat slice (JZ) of an MC sample, normalised on its own."""

    files: list[str] = Field(min_length=1, description="paths or globs, relative to the config")
    xsec_pb: float = Field(gt=0, description="generator cross-section in pb")
    filter_eff: float = Field(1.0, gt=0, le=1, description="generator filter efficiency")
    kfactor: float = Field(1.0, gt=0, description="k-factor multiplying the cross-section")
    weight_ref: float | None = Field(
        None,
        gt=0,
        description="typical |raw event weight| of the slice (e.g. sum of weights / generated events); "
        "the unit of selection.rel_weight_max",
    )
    sum_of_weights: float | None = Field(
        None,
        gt=0,
        description="this slice's sum of generator weights over ALL its generated events (e.g. from AMI), "
        "in the units of the raw event weight; used with the sample's sum_of_weights source=value",
    )

    def scale(self, lumi_pb: float, sum_of_weights: float) -> float:
        """Per-event weight factor lumi x xsec x filter_eff x k / sum of weights (NaN if sumw <= 0)."""
        if not sum_of_weights > 0:
            return math.nan
        return lumi_pb * self.xsec_pb * self.filter_eff * self.kfactor / sum_of_weights


class Sample(_Model):
    """A data or MC sample: data lists files; MC lists slices (or files + one normalisation)."""

    kind: Literal["data", "mc"] = Field(description="data or mc")
    files: list[str] | None = Field(None, description="data files, or an unsliced MC sample")
    slices: dict[str, Slice] | None = Field(None, description="MC pT-hat slices by name")
    xsec_pb: float | None = Field(None, gt=0, description="unsliced MC: cross-section in pb")
    filter_eff: float = Field(1.0, gt=0, le=1, description="unsliced MC: filter efficiency")
    sum_of_weights: SumOfWeights | None = Field(None, description="MC: sum-of-weights source")
    tree: str | None = Field(None, description="tree name for this sample (default: top-level)")
    description: str = Field("", description="free text")
    weight_ref: float | None = Field(
        None, gt=0, description="unsliced MC: typical |raw event weight| (unit of selection.rel_weight_max)"
    )
    triggers: list[Trigger] | None = Field(
        None,
        description="this sample's triggers (logical per-event branches); null: selection.require_trigger "
        "with the logical 'trigger'; []: no trigger requirement (e.g. MC without HLT branches)",
    )
    trigger_mode: Literal["any", "pt_ranges"] = Field(
        "any",
        description="any: an event passes if any listed trigger fired; pt_ranges: each trigger owns a "
        "leading-jet pT range (no overlaps), the event needs that range's trigger and is weighted by its prescale",
    )

    @model_validator(mode="after")
    def _triggers(self) -> Sample:
        trigs = self.triggers or []
        if self.trigger_mode == "any":
            for i, t in enumerate(trigs):
                if t.prescale is not None or t.prescale_variable is not None:
                    raise ValueError(
                        f"triggers[{i}]: a prescale needs trigger_mode: pt_ranges (with 'any', which "
                        "trigger's prescale weights an event is ambiguous)"
                    )
            return self
        ranges = []
        for i, t in enumerate(trigs):
            if t.lead_pt_min_gev is None:
                raise ValueError(f"triggers[{i}]: trigger_mode pt_ranges needs lead_pt_min_gev")
            ranges.append((t.lead_pt_min_gev, math.inf if t.lead_pt_max_gev is None else t.lead_pt_max_gev, i))
        ranges.sort()
        for (lo_a, hi_a, a), (lo_b, _, b) in itertools.pairwise(ranges):
            if lo_b < hi_a:
                raise ValueError(
                    f"triggers[{a}] and triggers[{b}]: leading-jet pT ranges [{lo_a}, {hi_a}) and "
                    f"[{lo_b}, ...) overlap; each pT range must belong to one trigger"
                )
        return self

    @model_validator(mode="after")
    def _shape(self) -> Sample:
        if self.kind == "data":
            if not self.files or self.slices:
                raise ValueError("a data sample needs 'files' (a list of paths or globs), no slices")
        else:
            if bool(self.files) == bool(self.slices):
                raise ValueError("an MC sample needs either 'slices' or 'files' with 'xsec_pb'")
            if self.files and self.xsec_pb is None:
                raise ValueError("an unsliced MC sample needs 'xsec_pb'")
            if self.sum_of_weights is None:
                raise ValueError("an MC sample needs 'sum_of_weights' (where the sum of weights comes from)")
            if self.sum_of_weights.source == "value" and self.sum_of_weights.value is None:
                lacking = sorted(n for n, sl in (self.slices or {}).items() if sl.sum_of_weights is None)
                if not self.slices or lacking:
                    raise ValueError(
                        "sum_of_weights: source='value' needs 'value', or a sum_of_weights in every slice"
                        + (f" (missing in {', '.join(lacking)})" if lacking else "")
                    )
        if self.kind == "data" or self.sum_of_weights is None or self.sum_of_weights.source != "value":
            given = sorted(n for n, sl in (self.slices or {}).items() if sl.sum_of_weights is not None)
            if given:
                raise ValueError(
                    f"slices {', '.join(given)}: a slice's sum_of_weights is used only with "
                    "sum_of_weights: {source: value}; set that, or drop the slice values"
                )
        for name in self.slices or {}:
            _safe_name(name)
        return self

    def configured_sum_of_weights(self, slice_name: str) -> float | None:
        """The slice's sum of weights written in the config (source=value), else None (read from files)."""
        sw = self.sum_of_weights
        if self.kind != "mc" or sw is None or sw.source != "value":
            return None
        own = self.slices[slice_name].sum_of_weights if self.slices and slice_name in self.slices else None
        return own if own is not None else sw.value

    def slice_map(self) -> dict[str, Slice]:
        """Data and unsliced MC as one slice named ``all``."""
        if self.slices:
            return dict(self.slices)
        assert self.files is not None
        return {
            "all": Slice(
                files=self.files, xsec_pb=self.xsec_pb or 1.0, filter_eff=self.filter_eff, weight_ref=self.weight_ref
            )
        }


# ----------------------------------------------------------------------------- selection


class Requirement(_Model):
    """One selection term on a logical branch: bit tests, a range, or (none given) "nonzero".

    Bit tests take the integer value of the branch (``Jet_jetId & 2``); several
    tests given together must all hold.
    """

    variable: str = Field(description="logical branch (a key of 'branches')")
    name: str | None = Field(None, description="name in the cut flow (default: the variable)")
    bits_all: int | None = Field(None, ge=0, description="(value & bits_all) == bits_all")
    bits_any: int | None = Field(None, ge=0, description="(value & bits_any) != 0")
    bits_none: int | None = Field(None, ge=0, description="(value & bits_none) == 0")
    min: float | None = Field(None, description="value >= min")
    max: float | None = Field(None, description="value <= max")
    apply_to: Literal["all", "data", "mc"] = Field("all", description="which sample kinds the term applies to")

    @property
    def label(self) -> str:
        return self.name or self.variable

    def applies(self, kind: str) -> bool:
        return self.apply_to in ("all", kind)


class Selection(_Model):
    """Dijet selection; energies in GeV. Applied to the two leading jets."""

    require_trigger: bool = Field(
        True,
        description="require the per-event 'trigger' branch to be nonzero (samples without their own 'triggers')",
    )
    subleading_pt_min_gev: float = Field(500.0, ge=0, description="sub-leading jet pT > this")
    leading_pt_max_gev: float = Field(2000.0, gt=0, description="leading jet pT < this")
    pt_balance_max: float = Field(1.5, gt=1, description="pT(lead)/pT(sub) < this")
    abs_eta_max: float = Field(2.1, gt=0, description="both jets |eta| < this")
    abs_weight_max: float | None = Field(
        None, gt=0, description="MC |raw event weight| < this, in the ntuple's weight units; null: no cut"
    )
    rel_weight_max: float | None = Field(
        None,
        gt=0,
        description="MC |event weight| < this x the slice's weight_ref (split-independent); null: no cut",
    )
    require_cleaning: bool = Field(
        True, description="the 'jet_cleaning' branch is nonzero: per-jet (both leading jets) or per-event"
    )
    min_ntracks: int | None = Field(
        2, ge=0, description="both jets have nTracks >= this (PHYSICS: nTracks > 1); null: no cut"
    )
    ntracks_variable: str = Field("nTracks", description="logical branch used by min_ntracks")
    event_cuts: list[Requirement] = Field([], description="terms on per-event branches (event flags, MET filters)")
    jet_cuts: list[Requirement] = Field([], description="terms both leading jets must pass (jet ID bits)")
    warn_fraction: float = Field(
        0.05,
        ge=0,
        le=1,
        description="warn when one non-kinematic cut removes more than this fraction of a sample's events",
    )


class Truth(_Model):
    """MC truth labelling of jets (never read for data)."""

    label: str = Field("parton_label", description="logical branch with the parton label")
    use_abs: bool = Field(False, description="take |label| first (CMS partonFlavor is signed)")
    quark: list[int] = Field([1, 2, 3, 4, 5], description="labels counted as quark")
    gluon: list[int] = Field([21], description="labels counted as gluon")
    other: Literal["subtract", "gluon", "drop_events"] = Field(
        "subtract",
        description="jets neither quark nor gluon (label <= 0 or another label): subtract = a third class "
        "whose MC shape is subtracted from data and MC; gluon = counted with gluons; drop_events = drop MC "
        "events whose leading jets are not both labelled > 0 (the old default)",
    )
    other_norm: Literal["data", "lumi"] = Field(
        "data",
        description="subtract: the 'other' yield taken from data is the MC's times the data/MC ratio of its "
        "region and pT bin (data: independent of lumi_pb and of the MC's overall normalisation), or the MC's "
        "as normalised to the luminosity (lumi)",
    )
    other_scale: float = Field(
        1.0, ge=0, description="multiplies the subtracted 'other' yield (vary it for a systematic)"
    )
    require_positive: bool | None = Field(
        None, description="deprecated: true = other: drop_events, false = other: gluon"
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and isinstance(data.get("require_positive"), bool):
            mode = "drop_events" if data["require_positive"] else "gluon"
            if "other" in data and data["other"] != mode:
                raise ValueError(
                    f"require_positive: {data['require_positive']} means other: {mode}, but other is "
                    f"{data['other']!r}; drop require_positive"
                )
            data = {**data, "other": mode}
        return data


# ----------------------------------------------------------------------------- taggers


class Binning(_Model):
    """Either explicit increasing ``edges`` or ``n`` regular bins in [low, high)."""

    edges: list[float] | None = Field(None, description="explicit bin edges, increasing")
    n: int | None = Field(None, ge=1, le=10000, description="number of regular bins")
    low: float | None = Field(None, description="lower edge of regular bins")
    high: float | None = Field(None, description="upper edge of regular bins")

    @model_validator(mode="after")
    def _one_form(self) -> Binning:
        if self.edges is not None:
            if self.n is not None or self.low is not None or self.high is not None:
                raise ValueError("give either 'edges' or 'n', 'low', 'high', not both")
            _increasing(self.edges)
        elif None in (self.n, self.low, self.high):
            raise ValueError("give 'edges' or all of 'n', 'low', 'high'")
        elif not (self.high > self.low):  # type: ignore[operator]
            raise ValueError(f"'high' ({self.high}) must be above 'low' ({self.low})")
        return self

    def bin_edges(self) -> list[float]:
        if self.edges is not None:
            return list(self.edges)
        assert self.n is not None and self.low is not None and self.high is not None
        step = (self.high - self.low) / self.n
        return [self.low + i * step for i in range(self.n)] + [self.high]


def _valid_range(v: list[float] | None) -> list[float] | None:
    if v is not None and (len(v) != 2 or not v[1] >= v[0]):
        raise ValueError(f"valid: expected [lo, hi] with lo <= hi, found {v}")
    return v


# a tagger's valid value range, checked the same way on every tagger kind
ValidRange = Annotated[list[float] | None, AfterValidator(_valid_range)]


class BranchTagger(_Model):
    """A tagger that is a per-jet branch (nTracks, an existing BDT score)."""

    kind: Literal["branch"] = "branch"
    variable: str = Field(description="logical branch name (a key of 'branches')")
    bins: Binning = Field(description="histogram binning of the tagger variable")
    quark_side: Literal["low", "high"] = Field(description="which side of the cut is quark-like")
    valid: ValidRange = Field(
        None,
        description="[lo, hi], inclusive: values outside (sentinels such as -1) or NaN are left out of "
        "this tagger's histograms and counted; null: every value is used (folded into the edge bins)",
    )


class ModelTagger(_Model):
    """A tagger evaluated by a trained model in the predict pass (``qgcal train``)."""

    kind: Literal["model"] = "model"
    model: str = Field(
        description="model file (.skops): absolute, or relative to <output>/models (qgcal train writes it)"
    )
    features: list[str] = Field(
        ["pt", "nTracks", "trackWidth", "trackC1"], description="logical feature names, in order"
    )
    bins: Binning = Field(description="histogram binning of the raw decision score")
    quark_side: Literal["low", "high"] = Field("low", description="which side is quark-like")
    valid: ValidRange = Field(
        None, description="[lo, hi], inclusive: scores outside or NaN are left out of this tagger's histograms"
    )
    train_max_iter: int = Field(200, ge=1, description="boosting iterations for qgcal train")

    @field_validator("features")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        return _distinct_features(v, "a model needs at least one feature")


def _distinct_features(v: list[str], empty: str) -> list[str]:
    """A model's inputs, in order: at least one, none twice (a repeated input is a config slip)."""
    if not v:
        raise ValueError(empty)
    repeated = sorted({f for f in v if v.count(f) > 1})
    if repeated:
        raise ValueError(f"features must be distinct; {', '.join(map(repr, repeated))} is listed twice")
    return v


class ConstituentTagger(_Model):
    """A tagger reading each jet's constituents (variable length), scored by a torch model (``qgcal train``).

    The constituents are jagged per-event collections (one entry per constituent, jets
    one after the other) plus a per-jet count; see docs/constituents.md.
    """

    kind: Literal["constituents"] = "constituents"
    model: str = Field(
        description="model file (.safetensors, with a .json sidecar): absolute, or relative to <output>/models "
        "(qgcal train writes it)"
    )
    features: list[str] = Field(
        ["constit_ptFrac", "constit_deta", "constit_dphi", "constit_charge", "constit_d0", "constit_dz"],
        description="logical branch names of the per-constituent features, in order (per-event jagged "
        "collections holding the constituents of jet 0, then jet 1, ...)",
    )
    counts: str = Field(
        "nConstituents", description="logical per-jet branch: how many constituents each jet has, in jet order"
    )
    bins: Binning = Field(description="histogram binning of the raw score (gluon log-odds)")
    quark_side: Literal["low", "high"] = Field("low", description="which side is quark-like")
    valid: ValidRange = Field(
        None, description="[lo, hi], inclusive: scores outside or NaN are left out of this tagger's histograms"
    )
    train_epochs: int = Field(30, ge=1, description="training epochs for qgcal train")
    hidden: int = Field(32, ge=2, le=1024, description="width of the per-constituent and per-jet networks")
    architecture: Literal["deepsets", "knn"] = Field(
        "deepsets",
        description="deepsets: per-constituent MLP, pooled; knn: a kNN graph per jet in graph_coordinates, one "
        "EdgeConv message-passing layer, pooled (docs/constituents.md)",
    )
    neighbours: int = Field(
        8, ge=1, le=64, description="architecture knn: neighbours per constituent (fewer in jets of <= k constituents)"
    )
    graph_coordinates: list[str] = Field(
        ["constit_deta", "constit_dphi"],
        description="architecture knn: the features (of 'features') whose Euclidean distance defines the neighbours",
    )

    @field_validator("features")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        return _distinct_features(v, "a constituent model needs at least one per-constituent feature")

    @model_validator(mode="after")
    def _graph_coordinates_are_features(self) -> ConstituentTagger:
        if self.architecture == "knn":
            _distinct_features(self.graph_coordinates, "architecture knn needs at least one graph coordinate")
            missing = [c for c in self.graph_coordinates if c not in self.features]
            if missing:
                raise ValueError(f"graph_coordinates {missing} are not among the tagger's features {self.features}")
        return self


Tagger = Annotated[BranchTagger | ModelTagger | ConstituentTagger, Field(discriminator="kind")]


# ----------------------------------------------------------------------------- variations


class _Variation(_Model):
    group: str = Field("other", description="uncertainty group (JES, JER, tracking, PDF, parton shower, ...)")
    affects: Literal["mc", "data", "both"] = Field("mc", description="which samples change")
    direction: Literal["up", "down", "single"] = Field(
        "single", description="up/down half of a pair (see 'pair'), or a one-sided variation (symmetrised)"
    )
    pair: str | None = Field(None, description="name of the opposite variation of an up/down pair")
    set: str | None = Field(
        None, description="replica set this variation belongs to (set by a 'name[a..b]' range expansion)"
    )
    set_combine: Literal["std", "envelope", "hessian"] = Field(
        "std",
        description="how a replica set combines: standard deviation of the shifts (MC replicas, NNPDF), "
        "envelope (largest |shift|), or hessian (sum in quadrature: symmetric eigenvectors, CT/MSHT/PDF4LHC)",
    )
    description: str = Field("", description="free text")


class TreeVariation(_Variation):
    """Another TTree in the same files (JES/JER)."""

    kind: Literal["tree"] = "tree"
    tree: str = Field(description="tree name replacing the nominal tree")


class BranchVariation(_Variation):
    """Logical branches replaced by other branches (track efficiency, fakes)."""

    kind: Literal["branch"] = "branch"
    replace: dict[str, str] = Field(min_length=1, description="logical name -> branch expression")

    @field_validator("replace")
    @classmethod
    def _exprs(cls, v: dict[str, str]) -> dict[str, str]:
        for expr in v.values():
            _check_expr(expr)
        return v


class WeightVariation(_Variation):
    """The MC event weight multiplied and/or divided by other weights (pdf_weight[i])."""

    kind: Literal["weight"] = "weight"
    multiply: list[str] = Field([], description="branch expressions multiplying the event weight")
    divide: list[str] = Field([], description="branch expressions dividing the event weight")

    @model_validator(mode="after")
    def _some(self) -> WeightVariation:
        if not self.multiply and not self.divide:
            raise ValueError("a weight variation needs 'multiply' or 'divide'")
        for expr in [*self.multiply, *self.divide]:
            _check_expr(expr)
        return self


class SampleVariation(_Variation):
    """Another MC sample altogether (parton shower, hadronisation, matrix element)."""

    kind: Literal["sample"] = "sample"
    sample: str = Field(description="name of the MC sample replacing nominal_mc")
    nonclosure: str | None = Field(
        None,
        description="also measure the MC non-closure: this sample as pseudo-data against the nominal MC "
        "templates, extracted minus true SF, as a systematic of this group (e.g. 'non-closure'); None: off",
    )


class ReweightingVariation(_Variation):
    """Pass-1 reweighting with other factors (the 'gluon reweighting' uncertainty); reuses nominal MC."""

    kind: Literal["reweighting"] = "reweighting"
    use: Literal["gluon", "none", "quark"] = Field(
        "gluon",
        description="gluon-derived factors, no reweighting, or quark-derived factors (with another "
        "min_mc_neff: the regularisation systematic)",
    )
    min_mc_neff: float | None = Field(
        None,
        ge=0,
        description="merge reweighting bins to this many effective MC entries for this variation "
        "(default: calibration.reweighting_min_mc_neff; 0: bin by bin)",
    )


class OtherVariation(_Variation):
    """The third class's normalisation varied (truth.other: subtract): reuses every nominal artifact."""

    kind: Literal["other"] = "other"
    scale: float = Field(
        ge=0, description="truth.other_scale for this variation: the subtracted 'other' yield times this"
    )


Variation = Annotated[
    TreeVariation | BranchVariation | WeightVariation | SampleVariation | ReweightingVariation | OtherVariation,
    Field(discriminator="kind"),
]

AnyVariation = (
    TreeVariation | BranchVariation | WeightVariation | SampleVariation | ReweightingVariation | OtherVariation
)

_RANGE = re.compile(r"(?P<name>[^\[\]\s]+)\[(?P<a>\d+)\.\.(?P<b>\d+)\]")  # fullmatch


def expand_ranges(variations: Any) -> Any:
    """``multiply: ["pdf_weight[1..N]"]`` becomes N variations ``<name>_<i>`` forming one set."""
    if not isinstance(variations, Mapping):
        return variations
    out: dict[str, Any] = {}
    for name, var in variations.items():
        exprs = var.get("multiply") if isinstance(var, Mapping) and var.get("kind") == "weight" else None
        if not isinstance(exprs, list):  # anything else is left for the schema to reject
            exprs = None
        ranged = [e for e in (exprs or []) if isinstance(e, str) and _RANGE.fullmatch(e)]
        if not ranged:
            out[name] = var
            continue
        if len(ranged) > 1:
            raise ValueError(f"{name}: only one 'name[a..b]' range per variation")
        m = _RANGE.fullmatch(ranged[0])
        assert m is not None
        lo, hi = int(m.group("a")), int(m.group("b"))
        if hi < lo or hi - lo > 999:
            raise ValueError(f"{name}: bad range {ranged[0]!r} (need a <= b, at most 1000 replicas)")
        for i in range(lo, hi + 1):
            item = dict(var)
            item["multiply"] = [f"{m.group('name')}[{i}]" if e == ranged[0] else e for e in exprs or []]
            item["set"] = name
            out[f"{name}_{i}"] = item
    return out


# ----------------------------------------------------------------------------- run settings


class Executor(_Model):
    """How per-file work is parallelised."""

    kind: Literal["process", "serial", "dask", "dask-local"] = Field(
        "process", description="process pool, in-process, a Dask scheduler, or a Dask LocalCluster"
    )
    workers: int = Field(2, ge=1, le=1024, description="worker processes (dask-local: workers)")
    scheduler: str | None = Field(None, description="Dask scheduler address (kind=dask), e.g. tcp://host:8786")
    retries: int = Field(2, ge=0, le=20, description="retries of a file whose worker died (crash, OOM)")


class Slurm(_Model):
    """Slurm array jobs: one array task per (variation, file shard), then a final job."""

    partition: str | None = Field(None, description="--partition")
    account: str | None = Field(None, description="--account")
    qos: str | None = Field(None, description="--qos")
    time: str = Field("02:00:00", description="--time of each array task")
    final_time: str = Field("01:00:00", description="--time of the final (merge + combine) job")
    cpus_per_task: int = Field(2, ge=1, description="--cpus-per-task (also the task's --workers)")
    mem: str | None = Field("4G", description="--mem")
    constraint: str | None = Field(None, description="--constraint (e.g. cpu, gpu)")
    gres: str | None = Field(None, description="--gres (e.g. gpu:1 for GPU inference nodes)")
    array_throttle: int | None = Field(None, ge=1, description="at most this many array tasks at once (%N)")
    shard_size: int = Field(1, ge=1, description="input files per array task")
    extra_sbatch: list[str] = Field([], description="extra '#SBATCH ...' option lines, e.g. --mail-type=END")
    setup: list[str] = Field([], description="shell lines run first (module load, source venv/bin/activate)")
    workdir: str | None = Field(None, description="scratch directory for job logs (default <output>/slurm)")


class Reading(_Model):
    """Chunked reading so a worker's memory stays bounded whatever the file size."""

    step_size: str | int = Field(
        "100 MB", description="chunk size: entries (int) or memory ('100 MB'); chunks follow clusters"
    )
    skip_bad_files: bool = Field(
        False, description="skip unreadable input files (recorded with the events lost) instead of stopping"
    )

    @field_validator("step_size", mode="before")
    @classmethod
    def _step(cls, v: Any) -> Any:
        # a typo here used to fall back silently to one basket per chunk (uproot cannot parse it)
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            # ValueError, not TypeError: pydantic reports only ValueError as a validation error
            raise ValueError("expected a number of entries or a memory size such as '100 MB'")  # noqa: TRY004
        if isinstance(v, int) and v < 1:
            raise ValueError("a number of entries must be >= 1")
        if isinstance(v, str):
            m = _MEMORY_SIZE.fullmatch(v.strip())
            if m is None or not float(m.group(1)) > 0:
                raise ValueError("expected a memory size such as '100 MB' or '1 GiB', or a number of entries")
        return v


class Calibration(_Model):
    """Numerical settings of final_reweighting."""

    min_fraction_separation: float = Field(
        0.05, gt=0, lt=1, description="flag pT bins with |f_Fq - f_Cq| below this (ill-conditioned)"
    )
    min_data_jets: int = Field(
        20, ge=0, description="flag pT bins with fewer data jets than this in a region (low_stats)"
    )
    wp_rule: Literal["at_least", "nearest"] = Field(
        "at_least",
        description="working-point cut on a bin edge: the tightest edge reaching the WP efficiency (at_least), "
        "or the edge whose efficiency is nearest to it (nearest)",
    )
    reweighting_min_mc_neff: float = Field(
        0.0,
        ge=0,
        description="pass-1 reweighting: merge adjacent tagger bins until the forward and central MC reference "
        "shapes have this many effective entries (sum w)^2/sum w^2 (0: bin by bin)",
    )
    bootstrap_bias_correction: bool = Field(
        True,
        description="correct the bootstrap variance for the bias of a non-linear estimator evaluated at the "
        "sample's own fractions (double bootstrap with translated inner replicas; docs/physics.md)",
    )
    shift_policy: Literal["keep", "prune", "smooth"] = Field(
        "keep",
        description="qgcal combine: systematic shifts below shift_min_significance (from bootstrap replicas): "
        "keep, prune (set to 0) or smooth (merge adjacent pT bins until significant)",
    )
    shift_min_significance: float = Field(
        1.0, ge=0, description="|shift| / its bootstrap sigma below which shift_policy applies"
    )


class Plots(_Model):
    """Plot settings; no pass depends on them."""

    enabled: bool = Field(True, description="write PNG plots")
    systematics: bool = Field(
        False, description="in a sweep, extraction plots for every systematic too (nominal always)"
    )
    label: str = Field("Internal", description="ATLAS label text")
    com_energy_tev: float = Field(13.0, gt=0, description="centre-of-mass energy for labels")


class Units(_Model):
    """What the ntuple stores."""

    energy: Literal["MeV", "GeV", "TeV"] = Field("MeV", description="unit of jet pT branches")

    def to_gev(self) -> float:
        return _ENERGY_TO_GEV[self.energy]


# ----------------------------------------------------------------------------- the config

REQUIRED_BRANCHES = ("run", "event", "jet_pt", "jet_eta")


class Config(_Model):
    """A complete calibration: inputs, selection, taggers and variations."""

    name: str = Field("qgcal", description="a name for this calibration (plots, reports)")
    output: str = Field("qgcal-output", description="output directory, relative to the config")
    units: Units = Field(default_factory=Units, description="units of the ntuple")
    tree: str = Field("nominal", description="nominal tree name")
    lumi_pb: float = Field(gt=0, description="integrated luminosity of the data in pb^-1")
    samples: dict[str, Sample] = Field(description="data and MC samples by name")
    data: str = Field("data", description="name of the data sample")
    nominal_mc: str = Field(description="name of the nominal MC sample")
    branches: dict[str, str] = Field(description="logical name -> branch expression ('name[i]' ok)")
    event_weight: list[str] = Field(
        ["mc_weight", "pu_weight"], description="logical branches multiplied into the MC event weight"
    )
    selection: Selection = Field(default_factory=Selection, description="event selection")
    truth: Truth = Field(default_factory=Truth, description="MC truth labelling")
    pt_bins_gev: list[float] = Field([500, 600, 800, 1000, 1200, 1500, 2000], description="jet pT bin edges in GeV")
    taggers: dict[str, Tagger] = Field(min_length=1, description="taggers by name")
    working_points: list[float] = Field([0.5, 0.6, 0.7, 0.8], description="quark efficiencies in (0,1)")
    variations: dict[str, Variation] = Field({}, description="systematic variations by name")
    executor: Executor = Field(default_factory=Executor, description="parallelism")
    slurm: Slurm = Field(default_factory=Slurm, description="Slurm array jobs (qgcal slurm)")
    bootstrap: int = Field(
        0, ge=0, le=1000, description="Poisson bootstrap replicas for statistical errors (0: analytic)"
    )
    reading: Reading = Field(default_factory=Reading, description="chunked reading")
    inference: InferenceConfig = Field(default_factory=InferenceConfig, description="model taggers")
    calibration: Calibration = Field(default_factory=Calibration, description="numerics")
    plots: Plots = Field(default_factory=Plots, description="plot style")

    # Set by the loader, not by YAML: where relative paths are anchored.
    base_dir: str = Field(".", description="directory relative paths are resolved against", exclude=True)

    @field_validator("variations", mode="before")
    @classmethod
    def _expand(cls, v: Any) -> Any:
        return expand_ranges(v)

    @field_validator("pt_bins_gev")
    @classmethod
    def _pt_bins(cls, v: list[float]) -> list[float]:
        _increasing(v)
        if v[0] < 0:
            raise ValueError("pT bin edges must be >= 0 GeV")
        return v

    @field_validator("working_points")
    @classmethod
    def _wps(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("at least one working point is needed")
        for wp in v:
            if not 0 < wp < 1:
                raise ValueError(f"working points are quark efficiencies in (0, 1), found {wp}")
        if len(set(v)) != len(v):
            raise ValueError("working points must be distinct")
        return v

    @field_validator("branches")
    @classmethod
    def _branch_exprs(cls, v: dict[str, str]) -> dict[str, str]:
        for expr in v.values():
            _check_expr(expr)
        return v

    @field_validator("samples", "taggers", "variations")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            _safe_name(name)
        return v

    @model_validator(mode="after")
    def _cross_references(self) -> Config:
        samples = self.samples
        for key, kind in ((self.data, "data"), (self.nominal_mc, "mc")):
            field = "data" if kind == "data" else "nominal_mc"
            if key not in samples:
                raise ValueError(f"{field}: no sample named {key!r}{did_you_mean(key, samples)}")
            if samples[key].kind != kind:
                raise ValueError(f"{field}: sample {key!r} has kind {samples[key].kind!r}, expected {kind!r}")
        for name in REQUIRED_BRANCHES:
            if name not in self.branches:
                raise ValueError(f"branches: the logical branch {name!r} is required")
        known = set(self.branches) | {"pt", "eta"}
        for name in self.event_weight:
            if name not in self.branches:
                raise ValueError(
                    f"event_weight: {name!r} is not a key of 'branches'{did_you_mean(name, self.branches)}"
                )
        for tname, tagger in self.taggers.items():
            if isinstance(tagger, ConstituentTagger):
                for feature in [*tagger.features, tagger.counts]:
                    if feature not in self.branches:
                        raise ValueError(
                            f"taggers.{tname}: {feature!r} is not a key of 'branches'"
                            f"{did_you_mean(feature, self.branches)}"
                        )
                continue
            needed = [tagger.variable] if isinstance(tagger, BranchTagger) else tagger.features
            for feature in needed:
                if feature not in known:
                    raise ValueError(
                        f"taggers.{tname}: {feature!r} is not a key of 'branches'{did_you_mean(feature, known)}"
                    )
        sel = self.selection
        if sel.min_ntracks is not None and sel.ntracks_variable not in self.branches:
            raise ValueError(
                f"selection.ntracks_variable: {sel.ntracks_variable!r} is not a key of 'branches' "
                "(set selection.min_ntracks: null to drop the cut)"
            )
        if sel.require_trigger and "trigger" not in self.branches:
            without = [n for n, s in samples.items() if s.triggers is None]
            if without:
                raise ValueError(
                    "selection.require_trigger: no logical branch 'trigger' in 'branches' "
                    f"(map it, give samples.{without[0]}.triggers, or set require_trigger: false)"
                )
        self._check_selection_terms()
        if sel.require_cleaning and "jet_cleaning" not in self.branches:
            raise ValueError(
                "selection.require_cleaning: no logical branch 'jet_cleaning' in 'branches' "
                "(map it, or set require_cleaning: false)"
            )
        if self.truth.label not in self.branches:
            raise ValueError(f"truth.label: {self.truth.label!r} is not a key of 'branches'")
        for vname, var in self.variations.items():
            if var.pair is not None:
                other = self.variations.get(var.pair)
                if other is None:
                    raise ValueError(
                        f"variations.{vname}.pair: no variation named {var.pair!r}"
                        f"{did_you_mean(var.pair, self.variations)}"
                    )
                if other.pair != vname or {var.direction, other.direction} != {"up", "down"}:
                    raise ValueError(
                        f"variations.{vname}.pair: {var.pair!r} must name {vname!r} back, "
                        "and one of the two must be direction: up, the other down"
                    )
            elif var.direction != "single":
                raise ValueError(f"variations.{vname}: direction {var.direction!r} needs 'pair'")
            if isinstance(var, SampleVariation) and (var.sample not in samples or samples[var.sample].kind != "mc"):
                raise ValueError(
                    f"variations.{vname}.sample: no MC sample named {var.sample!r}{did_you_mean(var.sample, samples)}"
                )
            if isinstance(var, BranchVariation):
                for logical in var.replace:
                    if logical not in self.branches:
                        raise ValueError(
                            f"variations.{vname}.replace: {logical!r} is not a key of 'branches'"
                            f"{did_you_mean(logical, self.branches)}"
                        )
        return self

    def _check_selection_terms(self) -> None:
        """Every logical name the selection terms and triggers use is a key of 'branches'."""

        def known(name: str, where: str) -> None:
            if name not in self.branches:
                raise ValueError(f"{where}: {name!r} is not a key of 'branches'{did_you_mean(name, self.branches)}")

        for vname, var in self.variations.items():
            if isinstance(var, OtherVariation) and self.truth.other != "subtract":
                raise ValueError(
                    f"variations.{vname}: kind 'other' varies the subtracted third class; it needs "
                    f"truth.other: subtract (found {self.truth.other!r})"
                )
        sel = self.selection
        for group in ("event_cuts", "jet_cuts"):
            labels: list[str] = []
            for i, req in enumerate(getattr(sel, group)):
                known(req.variable, f"selection.{group}[{i}].variable")
                labels.append(req.label)
            repeated = sorted({x for x in labels if labels.count(x) > 1})
            if repeated:
                raise ValueError(f"selection.{group}: cut-flow name {repeated[0]!r} is used twice (set 'name')")
        for sname, sample in self.samples.items():
            for i, trig in enumerate(sample.triggers or []):
                known(trig.variable, f"samples.{sname}.triggers[{i}].variable")
                if trig.prescale_variable is not None:
                    known(trig.prescale_variable, f"samples.{sname}.triggers[{i}].prescale_variable")
            if sel.rel_weight_max is not None and sample.kind == "mc":
                for slname, sl in sample.slice_map().items():
                    if sl.weight_ref is None:
                        where = f"samples.{sname}.slices.{slname}" if sample.slices else f"samples.{sname}"
                        raise ValueError(
                            f"{where}.weight_ref: needed by selection.rel_weight_max (the slice's typical "
                            "|raw event weight|, e.g. its sum of weights / generated events)"
                        )

    # --------------------------------------------------------------- derived helpers

    @property
    def base_path(self) -> Path:
        return Path(self.base_dir)

    @property
    def output_path(self) -> Path:
        return (self.base_path / self.output).resolve()

    def resolve_files(self, patterns: list[str]) -> list[Path]:
        """Expand globs relative to the config; a pattern that matches nothing is an error."""
        out: list[Path] = []
        for pattern in patterns:
            full = pattern if Path(pattern).is_absolute() else str(self.base_path / pattern)
            if glob.has_magic(full):
                matches = sorted(glob.glob(full))
                if not matches:
                    raise ConfigError(f"samples: the glob {pattern!r} matches no file (relative to {self.base_path})")
                out.extend(Path(m).resolve() for m in matches)
            else:
                out.append(Path(full).resolve())
        return out

    def variation_names(self) -> list[str]:
        return ["nominal", *self.variations]

    def with_overrides(self, overrides: Mapping[str, Any]) -> Config:
        """A copy with ``{"section.key": value}`` settings replaced (None: keep the config's).

        The one place command-line options meet the config: the CLI calls this once,
        and everything after it reads the config only. Each touched section is
        validated as if it had been written in the YAML.
        """
        cfg = self
        for dotted, value in overrides.items():
            if value is not None:
                cfg = _replace(cfg, dotted.split("."), value, dotted)
        return cfg

    def variation(self, name: str) -> AnyVariation | None:
        """None for nominal; ConfigError naming the valid names for an unknown one."""
        if name == "nominal":
            return None
        if name not in self.variations:
            valid = self.variation_names()
            raise ConfigError(
                f"--syst {name!r}: no such variation{did_you_mean(name, valid)}; valid: {', '.join(valid)}"
            )
        return self.variations[name]

    def energy_scale(self) -> float:
        return self.units.to_gev()


# ----------------------------------------------------------------------------- helpers


def _increasing(edges: list[float]) -> None:
    if len(edges) < 2:
        raise ValueError("bin edges need at least two values")
    for a, b in itertools.pairwise(edges):
        if not b > a:
            raise ValueError(f"bin edges must increase strictly, found {a} then {b}")


def _safe_name(name: str) -> str:
    if not isinstance(name, str) or not re.fullmatch(SAFE_NAME, name):
        raise ValueError(f"name {name!r} must start with a letter or digit and use only letters, digits, '_', '.', '-'")
    if name in RESERVED_NAMES or name in {".", ".."}:
        raise ValueError(f"name {name!r} is reserved")
    return name


_TAGS = {
    "variations": {"tree", "branch", "weight", "sample", "reweighting", "other"},
    "taggers": {"branch", "model", "constituents"},
}
_TAG_MODELS: dict[str, dict[str, type[BaseModel]]] = {
    "variations": {
        "tree": TreeVariation,
        "branch": BranchVariation,
        "weight": WeightVariation,
        "sample": SampleVariation,
        "reweighting": ReweightingVariation,
        "other": OtherVariation,
    },
    "taggers": {"branch": BranchTagger, "model": ModelTagger, "constituents": ConstituentTagger},
}


def _strip_tags(loc: tuple[int | str, ...]) -> tuple[tuple[int | str, ...], str | None]:
    """Drop pydantic's discriminator tag (``variations.X.tree.key`` -> ``variations.X.key``)."""
    if len(loc) > 2 and loc[0] in _TAGS and loc[2] in _TAGS[str(loc[0])]:
        return (loc[0], loc[1], *loc[3:]), str(loc[2])
    return loc, None


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for item in loc:
        if isinstance(item, int):
            out += f"[{item}]"
            continue
        text = str(item)
        if not text or not text.isprintable() or any(c.isspace() or c in ".[]" for c in text):
            text = repr(text)  # a key such as "\n" must not break the one-line message
        out += ("." if out else "") + text
    return out


def _valid_keys(loc: tuple[int | str, ...], tag: str | None) -> list[str]:
    """The valid keys of the mapping at ``loc`` (for 'did you mean'), walking the model tree."""
    if tag is not None and len(loc) == 2:
        return list(_TAG_MODELS[str(loc[0])][tag].model_fields)
    model: Any = Config
    dict_level = False
    for item in loc:
        if isinstance(item, int):
            continue
        if dict_level:  # a user-chosen key such as a sample name
            dict_level = False
            continue
        fields = getattr(model, "model_fields", None)
        if not fields or item not in fields:
            return []
        annotation = fields[item].annotation
        dict_level = _is_dict(annotation)
        model = _field_model(annotation)
        if tag is not None and item in _TAG_MODELS:
            model = _TAG_MODELS[item][tag]
    fields = getattr(model, "model_fields", None)
    return [k for k in fields if k != "base_dir"] if fields else []


def _is_dict(annotation: Any) -> bool:
    """``dict[str, X]``, also inside ``dict[str, X] | None`` (e.g. ``samples.<name>.slices``)."""
    if getattr(annotation, "__origin__", None) is dict:
        return True
    return any(_is_dict(arg) for arg in getattr(annotation, "__args__", ()) if arg is not type(None))


def _field_model(annotation: Any) -> Any:
    """The BaseModel inside ``X | None``, ``dict[str, X]`` or ``Annotated[Union[...]]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in reversed(getattr(annotation, "__args__", ())):
        found = _field_model(arg)
        if found is not None:
            return found
    return None


def _range_aliases(variations: Any) -> dict[str, str]:
    """``pdf_1`` -> ``pdf`` for variations expanded from a ``name[a..b]`` range (errors name what the
    user wrote, once, not every replica)."""
    try:
        expanded = expand_ranges(variations)
    except Exception:  # noqa: BLE001 - the schema reports it
        return {}
    if not isinstance(expanded, Mapping):
        return {}
    return {
        k: v["set"]
        for k, v in expanded.items()
        if isinstance(v, Mapping) and isinstance(v.get("set"), str) and k not in variations
    }


def format_validation(
    err: ValidationError, source: str, *, prefix: tuple[str, ...] = (), aliases: Mapping[str, str] | None = None
) -> str:
    """One line for a pydantic error: ``source: key.path: what is wrong (found X); ...``.

    The one formatter of validation errors (the YAML, command-line settings, the
    ``inference`` section handed to the scorer factory). ``prefix`` is where the
    validated model sits in the config, so key paths and "did you mean" are the
    config's.
    """
    lines: list[str] = []
    for e in err.errors():
        loc, tag = _strip_tags((*prefix, *e["loc"]))
        if aliases and len(loc) > 1 and loc[0] == "variations" and loc[1] in aliases:
            loc = (loc[0], aliases[str(loc[1])], *loc[2:])
        where = _dotted(loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            key = str(loc[-1])
            hint = did_you_mean(key, _valid_keys(loc[:-1], tag))
            lines.append(f"{where}: unknown key{hint}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        found = e.get("input")
        shown = "" if isinstance(found, (dict, list)) or found is None else f" (found {found!r})"
        lines.append(f"{where}: {msg}{shown}")
    return _one_line(f"{source}: " + "; ".join(dict.fromkeys(lines)))


def _one_line(text: str) -> str:
    return " ".join(text.split("\n")) if "\n" in text else text


def _replace(model: BaseModel, path: list[str], value: Any, dotted: str) -> Any:
    """``model`` with the field at ``path`` set to ``value``; the innermost section is re-validated."""
    name = path[0]
    if name not in type(model).model_fields or name == "base_dir":
        raise ConfigError(f"{dotted}: no such config setting{did_you_mean(name, list(type(model).model_fields))}")
    if len(path) > 1:
        child = getattr(model, name)
        if not isinstance(child, BaseModel):
            raise ConfigError(f"{dotted}: {name!r} is a value, not a section")
        return model.model_copy(update={name: _replace(child, path[1:], value, dotted)})
    if isinstance(model, Config):
        raise ConfigError(f"{dotted}: only settings inside a section can be overridden")
    data = model.model_dump()
    data[name] = value
    try:
        return type(model).model_validate(data)
    except ValidationError as err:
        section = tuple(dotted.split(".")[:-1])
        raise ConfigError(format_validation(err, "command-line option", prefix=section)) from None


def parse_config(data: Any, *, source: str = "config", base_dir: Path | str = ".") -> Config:
    """Validate a parsed YAML mapping; raise ConfigError with key paths on failure."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a YAML mapping at the top level, found {type(data).__name__}")
    payload = dict(data)
    if "base_dir" in payload:
        raise ConfigError(f"{source}: base_dir: unknown key (it is set from the config's location)")
    payload["base_dir"] = str(Path(base_dir).resolve())
    try:
        return Config.model_validate(payload)
    except ValidationError as err:
        aliases = _range_aliases(payload.get("variations"))
        raise ConfigError(format_validation(err, source, aliases=aliases)) from None
    except RecursionError:
        raise ConfigError(f"{source}: the config is nested too deeply (or refers to itself)") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's SafeLoader, except that a key given twice in one mapping is an error (not "the last wins")."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor' merges are not duplicates
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader reports it
                continue
            line = key_node.start_mark.line + 1
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} on lines {first} and {line} (a key may appear once per mapping)",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parse YAML text with the safe loader, rejecting duplicate keys (both line numbers named)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config; relative paths resolve against its directory."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found; pass an existing YAML file with --config")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a UTF-8 text file") from None
    except OSError as err:
        raise ConfigError(f"{p}: cannot read the config ({err.strerror or type(err).__name__})") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or (str(err).splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"{p}:{where}: invalid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{p}: invalid YAML: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as err:  # e.g. a date that does not exist: 2001-02-30
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"{p}: invalid YAML value: {first}") from None
    return parse_config(data, source=str(p), base_dir=p.parent)
