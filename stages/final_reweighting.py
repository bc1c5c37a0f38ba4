"""Pass 4 of 4, final_reweighting: merge, reweight, extract, and compute scale factors.

Works on histograms only; never re-reads events. Its input is the list of the
last per-file pass's histogram artifacts (and the records of files skipped as
bad), gathered by the scheduler. Per tagger and pT bin:
1. merge per-file histograms in sorted-key order and normalise each MC slice
   by lumi * xsec * filter_eff * kfactor / sum_of_weights(slice, all files)
   (:mod:`qgcal.merging`);
2. pass 1: w = p_F,quark / p_C,quark from MC truth, over tagger-bin groups merged to
   ``calibration.reweighting_min_mc_neff`` effective MC entries, applied bin-wise to every
   central histogram (MC and data): content x w, variance x w^2;
3. pass 2: fractions from the reweighted MC yields, p_q and p_g = F^-1 (p_F, p_C)
   for MC and data with the same MC matrix;
4. working-point cuts from the extracted NOMINAL MC quark shape, frozen and
   reused by every variation; SF_q and SF_g with analytic statistical errors, and with
   ``bootstrap`` the replica spread, corrected for the bootstrap's own bias with
   ``calibration.bootstrap_bias_correction`` (the replica SFs kept in ``replicas.npz`` for the
   shifts' significance in qgcal combine) (:mod:`qgcal.extraction`);
5. for a sample variation with ``nonclosure``: the MC non-closure, that sample as
   pseudo-data against the nominal templates.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qgcal import __version__
from qgcal.artifacts import write_json_atomic
from qgcal.config import Config, SampleVariation, WeightVariation
from qgcal.contract import events_lost
from qgcal.cutflow import CutFlow, read_cutflow
from qgcal.errors import QgcalError
from qgcal.extraction import (
    REPLICAS_FILE,
    add_nonclosure,
    bootstrap_stat,
    extract_all,
    extraction_summary,
    frozen_cuts,
    min_neff_for,
    nonclosure,
    replica_scale_factors,
    save_replicas,
    scale_factor_records,
    stat_method,
    variance_bias_factors,
)
from qgcal.merging import merge_sample, save_merged
from qgcal.plan import mc_sample_for, reweighting_for, truth_for
from qgcal.progress import log

__all__ = ["FinalInputs", "FinalResult", "NoDataError", "bias_factors", "config_hash_for", "pass_config", "run"]

NAME = "final_reweighting"
#: Calibration fields only qgcal combine reads (not in the final pass's config hash).
COMBINE_ONLY = {"shift_policy", "shift_min_significance"}


class NoDataError(QgcalError):
    """The data sample has no selected events: no scale factor can be derived."""


@dataclass(frozen=True)
class FinalInputs:
    """Histogram artifacts as (sort key, path) per role, and files skipped as bad (their records).

    ``data_dir``/``mc_dir``: the artifact namespaces where the merged sets are kept
    (``<output>/<namespace>/final_reweighting/merged_<sample>.npz``).
    """

    data: Sequence[tuple[str, Path]]
    mc: Sequence[tuple[str, Path]]
    nominal_mc: Sequence[tuple[str, Path]] | None  # None: the same as ``mc``
    skipped: Sequence[Mapping[str, Any]] = ()
    data_namespace: str = "nominal"
    mc_namespace: str = "nominal"


@dataclass
class FinalResult:
    systematic: str
    results_dir: Path
    records: list[dict[str, Any]]
    skipped: list[dict[str, Any]] = field(default_factory=list)


def run(cfg: Config, syst: str, inputs: FinalInputs, *, plot: bool | None = None) -> FinalResult:
    """final_reweighting for one systematic; writes ``results/<syst>/`` (JSON first, then plots).

    Extraction plots: with ``plot=None``, for nominal, and for the other systematics
    only with ``plots.systematics`` (a 100-replica PDF sweep should not draw 100 figures).
    """
    if plot is None:
        plot = cfg.plots.enabled and (syst == "nominal" or cfg.plots.systematics)
    out = cfg.output_path
    mc_sample = mc_sample_for(cfg, syst)
    reweight = reweighting_for(cfg, syst)

    data_h, data_info, data_reps = merge_sample(cfg, cfg.data, inputs.data)
    check_data(syst, data_info, cfg.data, lambda: read_cutflow(cfg, cfg.data, inputs.data))
    mc_h, mc_info, mc_reps = merge_sample(cfg, mc_sample, inputs.mc)
    if inputs.nominal_mc is None:
        nom_h, nom_reps = mc_h, mc_reps
    else:
        nom_h, _, nom_reps = merge_sample(cfg, cfg.nominal_mc, inputs.nominal_mc)

    save_merged(out / inputs.data_namespace / NAME / f"merged_{cfg.data}.npz", data_h, data_info, data_reps)
    save_merged(out / inputs.mc_namespace / NAME / f"merged_{mc_sample}.npz", mc_h, mc_info, mc_reps)

    nominal_ex = extract_all(cfg, nom_h, data_h)
    cuts = frozen_cuts(cfg, nominal_ex)
    min_neff = min_neff_for(cfg, syst)
    truth = truth_for(cfg, syst)  # an 'other' variation: the third class subtracted with another scale
    vcfg = cfg if truth == cfg.truth else cfg.model_copy(update={"truth": truth})
    # nominal's reweighting, bin-group rule and truth: nominal's estimator (on this systematic's MC)
    nominal_estimator = reweight == "quark" and min_neff == cfg.calibration.reweighting_min_mc_neff and vcfg is cfg
    ex = nominal_ex if nom_h is mc_h and nominal_estimator else extract_all(vcfg, mc_h, data_h, reweight, min_neff)
    boot = boot_plain = replicas = None
    kappa_from = None
    if cfg.bootstrap:
        groups = _rw_groups(ex)
        replicas = replica_scale_factors(vcfg, mc_reps, data_reps, cuts, reweight, groups)
        boot = bootstrap_stat(vcfg, mc_reps, data_reps, cuts, reweight, replicas)
        if cfg.calibration.bootstrap_bias_correction:
            boot_plain = boot
            if _kappa_is_nominals(cfg, syst, inputs, nominal_estimator):
                kappa_from = "nominal"
                kappa = bias_factors(cfg, nom_reps, data_reps, cuts, reweight, _rw_groups(nominal_ex))
            else:
                kappa_from = syst
                kappa = bias_factors(vcfg, mc_reps, data_reps, cuts, reweight, groups)
            boot = {k: s * math.sqrt(kappa[k]) if k in kappa else s for k, s in boot_plain.items()}
    records = scale_factor_records(cfg, syst, ex, cuts, boot, boot_plain)
    var = cfg.variations.get(syst)
    if isinstance(var, SampleVariation) and var.nonclosure:
        # the alternative MC as pseudo-data against the nominal templates (docs/physics.md)
        add_nonclosure(records, nonclosure(cfg, nom_h, mc_h, cuts), cfg.pt_bins_gev)

    results = out / "results" / syst
    skipped = [dict(r) for r in inputs.skipped]
    lost = events_lost(skipped)
    flagged = sum(1 for r in records if r["flags"])
    skipped_files = sorted(skipped, key=lambda r: (r["sample"], r["file"], r["variation"]))
    metadata: dict[str, Any] = {
        "systematic": syst,
        "qgcal_version": __version__,
        "config_hash": config_hash_for(cfg, syst),  # of the config fields this pass depends on
        "config_name": cfg.name,
        "lumi_pb": cfg.lumi_pb,
        "mc_sample": mc_sample,
        "data_sample": cfg.data,
        "reweighting": reweight,
        "reweighting_min_mc_neff": min_neff,
        "wp_rule": cfg.calibration.wp_rule,
        "replicas": REPLICAS_FILE if replicas is not None else None,
        "stat_method": stat_method(cfg),
        # whose variance-bias factors (kappa) corrected the replica spread: this systematic's own, or
        # nominal's for a weight variation (the same events and estimator; docs/physics.md)
        "bias_correction_from": kappa_from,
        "cuts_from": "nominal",
        "merge": {"data": data_info, "mc": mc_info},
        "skipped_files": skipped_files,
        # entries of each skipped file's tree, each file once (as report.md and the summary line):
        # a number when every file could be counted, else "unknown" (events_lost_known: the counted ones)
        "events_lost": lost.total,
        "events_lost_known": lost.known,
        "events_lost_unknown_files": list(lost.unknown_files),
        "n_records": len(records),
        "n_flagged": flagged,
        "null_means": "undefined (NaN); the record's flags say why",
    }
    write_json_atomic(results / "scale_factors.json", {"metadata": metadata, "records": records})
    write_json_atomic(results / "cuts.json", cuts)
    if replicas is not None:
        save_replicas(results / REPLICAS_FILE, records, replicas, cfg.bootstrap)
    write_json_atomic(results / "extraction.json", extraction_summary(ex))
    if plot:
        from qgcal.plotting import plot_extractions

        plot_extractions(cfg, syst, ex, results / "plots")
    if skipped:
        names = ", ".join(sorted({Path(r["file"]).name for r in skipped}))
        log.warning(
            "%s: %d input file(s) skipped as bad, %s (%s); listed in %s",
            syst,
            len({r["file"] for r in skipped}),
            lost.text(),
            names,
            results / "scale_factors.json",
        )
    if flagged:
        reasons = sorted({f for r in records for f in r["flags"]})
        log.warning(
            "%s: %d of %d scale factors flagged (%s); see %s",
            syst,
            flagged,
            len(records),
            ", ".join(reasons),
            results / "scale_factors.json",
        )
    return FinalResult(syst, results, records, skipped=skipped_files)


def _rw_groups(ex: Mapping[str, Sequence[Any]]) -> dict[str, list[list[tuple[int, int]]]]:
    """Per tagger and pT bin, the reweighting bin groups an extraction used (its replicas reuse them)."""
    return {name: [e.rw_groups for e in bins] for name, bins in ex.items()}


def _kappa_is_nominals(cfg: Config, syst: str, inputs: FinalInputs, nominal_estimator: bool) -> bool:
    """Whether ``syst`` takes nominal's variance-bias factors: a weight variation of the MC only.

    It reweights the same events, through the same estimator (reweighting, its bin groups' rule,
    truth) on the same data, so its kappa differs from nominal's by second order in the weight
    shift: by <= 0.1 % of the quoted error for the ten PDF weights of benchmarks/bench_sweep.py,
    against the ~10 % to which 50 replicas know an error (docs/physics.md). Computing it again
    was over half of such a final pass.
    """
    weight = isinstance(cfg.variations.get(syst), WeightVariation)
    return weight and inputs.data_namespace == "nominal" and nominal_estimator


def bias_factors(
    cfg: Config,
    mc: Mapping[str, np.ndarray],
    data: Mapping[str, np.ndarray],
    cuts: Mapping[str, list[dict[str, Any]]],
    reweight: str,
    groups: Mapping[str, Sequence[Sequence[tuple[int, int]]]],
) -> dict[Any, float]:
    """:func:`qgcal.extraction.variance_bias_factors`, remembered in this process by its inputs' content.

    The final passes of a sweep that a worker runs one after another share nominal's factors
    (:func:`_kappa_is_nominals`); the key hashes everything they are a function of, so a hit
    returns the very floats a fresh computation would.
    """
    digest = hashlib.sha256()
    digest.update(cfg.model_dump_json().encode())
    digest.update(json.dumps([reweight, cuts, groups], sort_keys=True, default=str).encode())
    for role, arrays in (("mc", mc), ("data", data)):
        for name in sorted(arrays):
            arr = np.ascontiguousarray(arrays[name])
            digest.update(f"{role}|{name}|{arr.dtype.str}|{arr.shape}".encode())
            digest.update(arr.tobytes())
    key = digest.hexdigest()
    if key not in _KAPPA_MEMO:
        _KAPPA_MEMO[key] = variance_bias_factors(cfg, mc, data, cuts, reweight, groups)
        while len(_KAPPA_MEMO) > 4:
            del _KAPPA_MEMO[next(iter(_KAPPA_MEMO))]
    return dict(_KAPPA_MEMO[key])


#: variance-bias factors by the hash of their inputs (:func:`bias_factors`)
_KAPPA_MEMO: dict[str, dict[Any, float]] = {}


def pass_config(cfg: Config, syst: str) -> dict[str, Any]:
    """The config fields the final pass of ``syst`` depends on (plots, executor, reading: none).

    Its hash goes into ``results/<syst>/scale_factors.json`` (``metadata.config_hash``), so
    results made with another luminosity, cross-section, working point or numerical setting
    can be told from current ones without reading any histogram.
    """
    samples = sorted({cfg.data, cfg.nominal_mc, mc_sample_for(cfg, syst)})
    return {
        "name": cfg.name,
        "lumi_pb": cfg.lumi_pb,
        # normalisation only: which files are merged is the artifacts' business (and their listing
        # order must not change a byte)
        "samples": {
            s: {
                name: sl.model_dump(mode="json", exclude={"files"})
                for name, sl in sorted(cfg.samples[s].slice_map().items())
            }
            for s in samples
        },
        "pt_bins_gev": cfg.pt_bins_gev,
        "taggers": {n: t.model_dump(mode="json") for n, t in sorted(cfg.taggers.items())},
        "working_points": cfg.working_points,
        # how the third class enters the extraction
        "truth_other": [cfg.truth.other, cfg.truth.other_norm, truth_for(cfg, syst).other_scale],
        # the shift policy is qgcal combine's business: changing it must not make results stale
        "calibration": cfg.calibration.model_dump(mode="json", exclude=COMBINE_ONLY),
        "bootstrap": cfg.bootstrap,
        "reweighting": reweighting_for(cfg, syst),
        "reweighting_min_mc_neff": min_neff_for(cfg, syst),
        "nonclosure": getattr(cfg.variations.get(syst), "nonclosure", None),
        "qgcal": __version__,
    }


def config_hash_for(cfg: Config, syst: str) -> str:
    from qgcal.artifacts import config_hash

    return config_hash(pass_config(cfg, syst))


def check_data(
    syst: str, data_info: Mapping[str, Any], data_sample: str, cutflow: Callable[[], CutFlow] | None = None
) -> None:
    """No data jets: stop with the cut flow that removed them (read only then: it opens every artifact)."""
    jets = sum(s["jets"] for s in data_info["slices"].values())
    if jets == 0:
        flow = f"; cut flow: {cutflow().text()}" if cutflow is not None else ""
        raise NoDataError(
            f"data sample {data_sample!r} has no events after selection; check the selection cuts "
            f"and the data files (systematic {syst!r}){flow}"
        )
