"""truth.json: everything the generator knows and the calibration must not read.

Closure and unit tests take their expectations from here (never from
constants copied into the test), so the file is complete: the spectrum and
luminosity, the slice table, the injected data/MC shape differences, the
systematic variations and the file layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import uproot

import qgcal
from qgcal.generate import model as m
from qgcal.generate.spectrum import TRUE_SPECTRUM
from qgcal.generate.writer import (
    COMMON_BRANCHES,
    COMPRESSION_LEVEL,
    DATA_BRANCHES,
    DATA_TREES,
    JET_COUNTER,
    MC_BRANCHES,
    MC_TREES,
    UNCOMPRESSED,
)

if TYPE_CHECKING:
    from qgcal.generate.sample import FilePlan

__all__ = ["DESCRIPTION", "build_truth"]

DESCRIPTION = (
    "qgcal generated ATLAS-style dijet sample. Pseudo-data are drawn unweighted from "
    "the true pT-hat spectrum; Pythia-like (nominal) and Herwig-like (alternative) MC "
    "are pT-hat sliced and weighted (mcEventWeight) so that "
    "luminosity_pb * xsec_pb * filter_eff * mcEventWeight / sum_of_weights(slice) "
    "reproduces the pseudo-data normalisation. Parton fractions and kinematics are "
    "identical in data and MC; the pseudo-data tagger shapes differ from Pythia by "
    "taggers.data_shift (multiplicative factors on the means). Jet pT in MeV."
)


def _files(plans: Sequence[FilePlan]) -> list[dict[str, Any]]:
    return [{"path": p.relpath, "events": p.events} for p in plans]


def _mc_sample(sample: str, plans: Sequence[FilePlan]) -> dict[str, Any]:
    if sample == "pythia":
        slices, weights = m.PYTHIA_SLICES, m.PYTHIA_WEIGHTS
    else:
        slices, weights = m.HERWIG_SLICES, m.HERWIG_WEIGHTS
    table = []
    for spec in slices:
        mine = [p for p in plans if p.sample == sample and p.slice == spec]
        table.append(
            {
                "name": spec.name,
                "jz": spec.jz,
                "dsid": spec.dsid,
                "pt_hat_min_gev": spec.pt_lo,
                "pt_hat_max_gev": spec.pt_hi,
                "xsec_pb": spec.xsec_pb,
                "filter_eff": spec.filter_eff,
                "sigma_pb": spec.sigma_pb,
                "events": sum(p.events for p in mine),
                "events_per_file": [p.events for p in mine],
                "files": _files(mine),
            }
        )
    return {
        "kind": "mc",
        "trees": list(MC_TREES),
        "events": sum(s["events"] for s in table),
        "slices": table,
        "weights": {
            **asdict(weights),
            "description": (
                "pT-hat drawn from pT^-proposal_n in the slice; mcEventWeight = "
                "(true/proposal density, normalised to mean 1 in the slice) x "
                "lognormal(mean 1, lognormal_sigma) x (-1 with negative_fraction); with "
                "large_fraction the lognormal factor is replaced by large_factor "
                "(|w| > 100: what the |weight| < 100 cut removes, a uniform "
                "~large_fraction*large_factor loss of weight)"
            ),
        },
    }


def _shapes(model: m.ShapeModel) -> dict[str, Any]:
    return asdict(model)


def build_truth(
    *,
    seed: int,
    events: int,
    files: int,
    data_shift: bool,
    plans: Sequence[FilePlan],
    shift: dict[str, m.PartonShape],
    block_size: int,
    event_number_stride: int,
    unmatched_fraction: float | None = None,
    unmatched_own_shape: bool = False,
) -> dict[str, Any]:
    """The truth record of one generated sample (JSON-serialisable)."""
    data_plans = [p for p in plans if p.sample == "data"]
    n_data = sum(p.events for p in data_plans)
    total = TRUE_SPECTRUM.total()
    data_shapes = m.PYTHIA_SHAPES.shifted(shift["quark"], shift["gluon"])
    all_branches = {**COMMON_BRANCHES, **MC_BRANCHES, **DATA_BRANCHES}
    return {
        "description": DESCRIPTION,
        "generator": {"package": "qgcal", "module": "qgcal.generate", "version": qgcal.__version__},
        "seed": seed,
        "events": events,
        "files": files,
        "data_shift": data_shift,
        "block_size": block_size,
        "units": {"jet_pt": "MeV", "pt_hat": "GeV", "xsec": "pb", "luminosity": "pb^-1"},
        "luminosity_pb": n_data / total,
        "luminosity_definition": "events of pseudo-data generated / spectrum.total_xsec_pb",
        "spectrum": {
            "formula": "dsigma/dpt_hat [pb/GeV] = norm_pb_per_gev * (pt_hat / pt_ref_gev)^(-n)",
            "n": TRUE_SPECTRUM.n,
            "norm_pb_per_gev": TRUE_SPECTRUM.norm,
            "pt_ref_gev": TRUE_SPECTRUM.pt_ref,
            "pt_min_gev": TRUE_SPECTRUM.pt_min,
            "pt_max_gev": TRUE_SPECTRUM.pt_max,
            "total_xsec_pb": total,
        },
        "samples": {
            "data": {
                "kind": "data",
                "trees": list(DATA_TREES),
                "events": n_data,
                "files": _files(data_plans),
                "run_numbers": list(m.DATA_RUNS),
                "drawn_from": "true spectrum, unweighted, pt_hat in [pt_min_gev, pt_max_gev)",
            },
            "pythia": _mc_sample("pythia", plans),
            "herwig": _mc_sample("herwig", plans),
        },
        "event_numbers": {
            "formula": "eventNumber = file_index * stride + entry + 1",
            "stride": event_number_stride,
            "unique_within": ("sample and slice; (runNumber, eventNumber) is unique in the whole sample"),
            "runNumber": "data: one of samples.data.run_numbers; MC: the slice DSID",
        },
        "parton_model": {
            "gluon_fraction": {
                "formula": "clip(g0 - g_pt * (pt_true_gev - 400) / 2000 - g_eta * |eta|, min, max)",
                **m.GLUON_FRACTION,
            },
            "quark_flavours": {str(k): v for k, v in m.QUARK_FLAVOURS.items()},
            "unmatched_fraction": m.UNMATCHED_FRACTION if unmatched_fraction is None else unmatched_fraction,
            "unmatched_label": -1,
            "unmatched_shape": (
                "own: pile-up-like (tracks of a quark jet of 0.3 x pT, nominal MC model), same in data and MC"
                if unmatched_own_shape
                else "that of the underlying quark/gluon draw"
            ),
            "note": ("identical for data, pythia and herwig; unmatched jets: see unmatched_shape"),
        },
        "kinematics": {
            "leading_true_pt": "pt_hat",
            "subleading_true_pt": ("pt_hat / (1 + x), x = |N(0, core_sigma)|, or Exp(tail_scale) with tail_fraction"),
            "balance": m.BALANCE,
            "extra_jets": "true pt = subleading true pt x U(0.05, 0.5), at least 20 GeV",
            "extra_jet_probabilities": list(m.EXTRA_JET_PROBS),
            "one_jet_fraction": m.ONE_JET_FRACTION,
            "max_jets": m.MAX_JETS,
            "response": {
                "formula": "reco = true x N(1, sqrt(constant^2 + stochastic_sqrt_gev^2 / pt_gev))",
                **m.RESPONSE,
            },
            "eta_leading_two": {"distribution": "truncated normal", **m.ETA_LEAD},
            "eta_extra": {"distribution": "truncated normal", **m.ETA_EXTRA},
            "jets_sorted_by": "descending reco jet_pt (in every tree)",
        },
        "taggers": {
            "base": {
                "nTracks": (
                    "negative binomial (shape ntrk_k), mean mu_q = "
                    "max(1, 9 + 4 ln(pt_true_gev / 200)), gluons x gluon_ntrk_ratio"
                ),
                "gluon_ntrk_ratio": m.GLUON_NTRK_RATIO,
                "trackWidth": (
                    "beta on [0, 0.4) (concentration width_kappa); mean quark "
                    "0.055 (pt/500)^-0.30, gluon 0.090 (pt/500)^-0.25, at most 0.3"
                ),
                "trackC1": (
                    "beta on [0, 1) (concentration c1_kappa); mean quark 0.21 (pt/500)^0.03, gluon 0.29 (pt/500)^0.02"
                ),
                "latent_sigma": m.LATENT_SIGMA,
                "latent": ("each mean x exp(s z - s^2/2), one z ~ N(0, 1) per jet (correlates the taggers)"),
                "trackBDT": (
                    "tanh(-0.8 (1.5 u_n + 0.7 u_w + 0.5 u_c) + N(0, 0.15)) of nTracks, width, C1 "
                    "against the base q/g midpoints at reco pT; higher = more quark-like"
                ),
                "sentinels": {
                    "condition": "nTracks == 0",
                    "trackWidth": -1.0,
                    "trackC1": -1.0,
                    "trackBDT": -10.0,
                },
            },
            "eta_dependence": {
                "formula": "every mean x (1 + slope * |eta|)",
                "slope": m.ETA_SLOPE,
                "same_for_quark_and_gluon": True,
            },
            "pythia": _shapes(m.PYTHIA_SHAPES),
            "herwig": _shapes(m.HERWIG_SHAPES),
            "data": _shapes(data_shapes),
            "data_shift": {
                "relative_to": "pythia",
                "applied": data_shift,
                "quark": asdict(shift["quark"]),
                "gluon": asdict(shift["gluon"]),
                "note": "factors on the means; fractions are not shifted",
            },
        },
        "systematics": {
            "trees": {
                **{name: {"kind": "jet_pt_scale", "factor": f, "resorted": False} for name, f in m.JES_SCALE.items()},
                **{name: {"kind": "jet_pt_smear", "sigma": s, "resorted": True} for name, s in m.JER_SMEAR.items()},
            },
            "branches": {
                "jet_nTracks_sys_eff": {
                    "replaces": "jet_nTracks",
                    "kind": "binomial track loss",
                    "track_loss_probability": m.TRACK_LOSS_PROBABILITY,
                }
            },
            "weights": {
                "pdf_weight": {
                    "size": m.N_PDF,
                    "formula": (
                        "w0 = 1; wk = 1 + 0.04 sin(1.3 k) L + 0.015 cos(0.7 k) (n_gluon_lead - 1), "
                        "L = ln(pt_hat/400)/ln(2500/400)"
                    ),
                }
            },
            "alternative_samples": {"herwig": "parton shower / hadronisation alternative to pythia"},
        },
        "branches": {
            "common": COMMON_BRANCHES,
            "mc_only": MC_BRANCHES,
            "data_only": DATA_BRANCHES,
            "counters": {
                JET_COUNTER: sorted(b for b in all_branches if b.startswith(("jet_", "closure_"))),
                "npdf_weight": ["pdf_weight"],
            },
        },
        "histoEventCount": {
            "type": "TH1D, 3 bins on [0, 3)",
            "bin1": "number of generated events in the file",
            "bin2": "sum of mcEventWeight over all generated events in the file",
            "bin3": "sum of mcEventWeight^2",
        },
        "detector": {
            "trigger_efficiency": m.TRIGGER_EFFICIENCY,
            "cleaning_efficiency_per_jet": m.CLEANING_EFFICIENCY,
            "pu_weight": {"distribution": "lognormal, mean 1", "sigma": m.PU_WEIGHT_SIGMA},
        },
        "file_format": {
            "writer": f"uproot {uproot.__version__} mktree/extend (TTree)",
            "basket_entries": block_size,
            "compression": f"ZLIB({COMPRESSION_LEVEL})",
            "uncompressed_branches": sorted(UNCOMPRESSED),
            "mantissa_bits": {
                **{
                    b: m.FLOAT_BITS
                    for b in (
                        "jet_eta",
                        "jet_phi",
                        "jet_trackWidth",
                        "jet_trackC1",
                        "jet_trackBDT",
                        "pu_weight",
                    )
                },
                "pdf_weight": m.PDF_BITS,
            },
            "full_float32": ["jet_pt", "mcEventWeight"],
            "determinism": (
                "identical arguments give identical arrays, histograms and truth.json; the ROOT "
                "files differ only in the write timestamps uproot puts in every key (fDatime)"
            ),
        },
    }
