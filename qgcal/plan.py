"""Which files a systematic needs, with which tree, branches and weights, and where artifacts go.

A :class:`FileTask` is everything a worker needs to process one input file for
one variation; it is small, picklable for IPC and sorts by a key that does not
depend on the order files were listed or completed in.

Data are variation-independent unless a variation says ``affects: data|both``:
their artifacts live under ``nominal/`` and are shared by every variation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qgcal.config import (
    BranchTagger,
    BranchVariation,
    Config,
    ConstituentTagger,
    ModelTagger,
    OtherVariation,
    ReweightingVariation,
    SampleVariation,
    TreeVariation,
    Truth,
    WeightVariation,
)

__all__ = [
    "FileTask",
    "artifact_path",
    "constituent_variables",
    "fused_jobs",
    "group_by_read",
    "input_ref",
    "jet_variables",
    "mc_sample_for",
    "model_path",
    "plan_tasks",
    "reweighting_for",
    "truth_for",
]


@dataclass(frozen=True)
class FileTask:
    """One input file of one sample slice, processed for one variation."""

    sample: str
    slice: str
    kind: str  # "data" | "mc"
    path: str
    variation: str  # artifact namespace: "nominal" or the variation's name
    tree: str
    branches: tuple[tuple[str, str, str], ...]  # (logical, branch expression, config key)
    weight_multiply: tuple[str, ...] = ()
    weight_divide: tuple[str, ...] = ()
    sumw_branch: str | None = None
    extra: tuple[tuple[str, str], ...] = field(default=())
    ref: str = ""  # the input's identity: its path relative to the config's directory (see input_ref)

    @property
    def ident(self) -> str:
        """The input file as artifacts name it: relative to the config's directory when inside it."""
        return self.ref or self.path

    @property
    def key(self) -> str:
        """Sort key: sample, slice and the file's identity (never completion or listing order)."""
        return f"{self.sample}/{self.slice}/{self.ident}"

    @property
    def stem(self) -> str:
        """Artifact file stem: the file's stem and a hash of its identity, so moving or copying the
        config, its inputs and the output folder together keeps every artifact (``cp -a``)."""
        digest = hashlib.sha256(self.ident.encode()).hexdigest()[:8]
        return f"{Path(self.path).stem}-{digest}"


def group_by_read(tasks: Sequence[FileTask]) -> list[list[FileTask]]:
    """Tasks sharing a (file, tree), in a fixed order: the branch and weight variations of a
    sweep, which root2pkl reads once together (and the passes after it take in fused_jobs)."""
    groups: dict[tuple[str, str], list[FileTask]] = {}
    for t in tasks:
        groups.setdefault((t.path, t.tree), []).append(t)
    return [groups[k] for k in sorted(groups)]


def fused_jobs(tasks: Sequence[FileTask]) -> list[list[FileTask]]:
    """The tasks of one (file, tree) in jobs of at most :data:`FUSED_TASKS`, split evenly: the
    passes after root2pkl fill or score the variations of a file together, deriving what their
    jets share once (pkl2predpkl: a model's inference; predpkl2hist: the bins and Poisson draws)."""
    jobs = []
    for group in group_by_read(tasks):
        n = -(-len(group) // FUSED_TASKS)  # jobs for this (file, tree)
        size = -(-len(group) // n)
        jobs += [group[i : i + size] for i in range(0, len(group), size)]
    return jobs


# tasks per fused job: enough to share the derived arrays, small enough to keep the workers busy
FUSED_TASKS = 8


def input_ref(cfg: Config, path: Path) -> str:
    """An input file's identity: POSIX path relative to the config's directory, or absolute outside it."""
    try:
        return path.relative_to(cfg.base_path.resolve()).as_posix()
    except ValueError:
        return str(path)


def artifact_path(output: Path, task: FileTask, stage: str, ext: str) -> Path:
    """``<output>/<variation>/<pass>/<sample>/<slice>/<file stem><ext>`` (see qgcal.passes)."""
    return output / task.variation / stage / task.sample / task.slice / f"{task.stem}{ext}"


def model_path(cfg: Config, tagger: ModelTagger | ConstituentTagger) -> Path:
    """Where ``qgcal train`` writes and the predict pass reads a model: relative paths are under <output>/models."""
    p = Path(tagger.model)
    return p if p.is_absolute() else cfg.output_path / "models" / p


def _needed_logicals(cfg: Config, kind: str, sample: str | None = None) -> list[str]:
    names = ["run", "event", "jet_pt", "jet_eta"]
    sel = cfg.selection
    triggers = cfg.samples[sample].triggers if sample is not None else None
    if triggers is not None:  # the sample's own triggers (data-only HLT branches are never read in MC)
        for trig in triggers:
            names.append(trig.variable)
            if trig.prescale_variable is not None:
                names.append(trig.prescale_variable)
    elif sel.require_trigger:
        names.append("trigger")
    names.extend(req.variable for req in [*sel.event_cuts, *sel.jet_cuts] if req.applies(kind))
    if sel.require_cleaning:
        names.append("jet_cleaning")
    if sel.min_ntracks is not None:
        names.append(sel.ntracks_variable)
    for tagger in cfg.taggers.values():
        if isinstance(tagger, BranchTagger):
            names.append(tagger.variable)
        elif isinstance(tagger, ModelTagger):
            names.extend(f for f in tagger.features if f not in {"pt", "eta"})
        elif isinstance(tagger, ConstituentTagger):
            names.extend([tagger.counts, *tagger.features])
    if kind == "mc":
        names.append(cfg.truth.label)
        names.extend(cfg.event_weight)
    seen: dict[str, None] = {}
    for n in names:
        seen.setdefault(n, None)
    return list(seen)


def jet_variables(cfg: Config) -> list[str]:
    """Per-jet logical variables carried in the jet tables (tagger inputs)."""
    out: dict[str, None] = {}
    for tagger in cfg.taggers.values():
        if isinstance(tagger, BranchTagger):
            out.setdefault(tagger.variable, None)
        elif isinstance(tagger, ModelTagger):
            for f in tagger.features:
                if f not in {"pt", "eta"}:
                    out.setdefault(f, None)
    return list(out)


def constituent_variables(cfg: Config) -> dict[str, str]:
    """Per-constituent logical variables carried in the jet tables (as list columns) -> their count branch.

    A feature shared by two constituent taggers must use the same count branch (else ConfigError).
    """
    from qgcal.errors import ConfigError

    out: dict[str, str] = {}
    for name, tagger in sorted(cfg.taggers.items()):
        if isinstance(tagger, ConstituentTagger):
            for f in tagger.features:
                if out.setdefault(f, tagger.counts) != tagger.counts:
                    raise ConfigError(
                        f"taggers.{name}.counts: feature {f!r} is counted by {out[f]!r} in another tagger; "
                        "use one count branch per constituent collection"
                    )
    return out


def mc_sample_for(cfg: Config, variation: str) -> str:
    """The MC sample a systematic uses: nominal_mc unless a sample variation replaces it."""
    var = cfg.variation(variation)
    return var.sample if isinstance(var, SampleVariation) else cfg.nominal_mc


def truth_for(cfg: Config, variation: str) -> Truth:
    """The truth settings a systematic's final pass uses: nominal's, or with an ``other`` variation's scale."""
    var = cfg.variation(variation)
    if isinstance(var, OtherVariation):
        return cfg.truth.model_copy(update={"other_scale": var.scale})
    return cfg.truth


def reweighting_for(cfg: Config, variation: str) -> str:
    """Which pass-1 factors a systematic uses: 'quark' (nominal), 'gluon' or 'none'."""
    var = cfg.variation(variation)
    return var.use if isinstance(var, ReweightingVariation) else "quark"


def plan_tasks(
    cfg: Config, variation: str, *, include_data: bool = True, include_mc: bool = True, mc_sample: str | None = None
) -> list[FileTask]:
    """File tasks for one variation, sorted by key."""
    var = cfg.variation(variation)
    tasks: list[FileTask] = []
    samples = []
    if include_data:
        samples.append(cfg.data)
    if include_mc:
        samples.append(mc_sample or mc_sample_for(cfg, variation))
    for sname in samples:
        sample = cfg.samples[sname]
        # sample and reweighting variations change no per-file work: their files are the
        # other sample's (or nominal's) nominal processing, shared with everyone
        reads = isinstance(var, (TreeVariation, BranchVariation, WeightVariation))
        applies = reads and var is not None and (var.affects == "both" or var.affects == sample.kind)
        namespace = variation if applies else "nominal"
        tree = sample.tree or cfg.tree
        branches = dict(cfg.branches)
        mult: tuple[str, ...] = ()
        div: tuple[str, ...] = ()
        if applies and isinstance(var, TreeVariation):
            tree = var.tree
        if applies and isinstance(var, BranchVariation):
            branches.update(var.replace)
        if applies and isinstance(var, WeightVariation):
            mult, div = tuple(var.multiply), tuple(var.divide)
        needed = []
        for logical in _needed_logicals(cfg, sample.kind, sname):
            if logical not in branches:
                continue  # optional logicals (trigger/cleaning) checked by the config validator
            key = f"branches.{logical}"
            if applies and isinstance(var, BranchVariation) and logical in var.replace:
                key = f"variations.{variation}.replace.{logical}"
            needed.append((logical, branches[logical], key))
        # a branch of the events tree itself is summed while its chunks are read; a branch of
        # another tree (CMS Runs/genEventSumw) is summed by root2pkl's sum_of_weights()
        sumw_branch = None
        sow = sample.sum_of_weights
        if sample.kind == "mc" and sow is not None and sow.source == "branch" and sow.tree is None:
            sumw_branch = sow.branch
        for slice_name, sl in sample.slice_map().items():
            for path in cfg.resolve_files(sl.files):
                tasks.append(
                    FileTask(
                        sample=sname,
                        slice=slice_name,
                        kind=sample.kind,
                        path=str(path),
                        variation=namespace,
                        tree=tree,
                        branches=tuple(needed),
                        weight_multiply=mult,
                        weight_divide=div,
                        sumw_branch=sumw_branch,
                        ref=input_ref(cfg, path),
                    )
                )
    return sorted(tasks, key=lambda t: t.key)
