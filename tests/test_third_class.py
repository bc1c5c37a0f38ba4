"""The third class: MC jets that are neither quark nor gluon (unmatched, label <= 0, or other labels).

Checked three ways: the algebra (a constructed mixture with a distinct 'other' shape is
solved exactly by ``subtract`` and not by counting it with the gluons), the plumbing
(events are kept or dropped as configured), and closure on a generated sample with 20%
of unmatched jets of their own shape (``subtract`` gives back the true scale factors,
the old ``drop_events`` does not).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from closure_truth import forward_jets, true_efficiency

import qgcal
from conftest import DEMO
from qgcal.calibration import Binned
from qgcal.config import Truth, parse_config
from qgcal.contract import FLAVOUR_OTHER
from qgcal.errors import ConfigError
from qgcal.extraction import BinInputs, extract_inputs, with_other_class
from qgcal.generate import generate_sample
from qgcal.histset import load_artifact


def _cfg(**truth: object):
    doc = yaml.safe_load(DEMO.read_text())
    doc["truth"].update(truth)
    return parse_config(doc, base_dir=DEMO.parent)


def _b(v: np.ndarray) -> Binned:
    return Binned(np.asarray(v, dtype=np.float64), np.asarray(v, dtype=np.float64) * 1e-6)


# shapes over 5 tagger bins (each sums to 1): quark low, gluon high, 'other' in the middle
Q_MC = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
G_MC = np.array([0.05, 0.1, 0.2, 0.3, 0.35])
Q_DATA = np.array([0.35, 0.3, 0.2, 0.1, 0.05])  # data quark/gluon shapes differ from MC (SF != 1)
G_DATA = np.array([0.05, 0.15, 0.2, 0.3, 0.3])
OTHER = np.array([0.1, 0.2, 0.5, 0.15, 0.05])


def _inputs(q: np.ndarray, g: np.ndarray, data_norm: float) -> tuple[BinInputs, Binned, Binned]:
    """Forward 60% quark, central 30% quark, 15% 'other' in both; data = MC yields x data_norm."""
    n, fo_frac = 1e6, 0.15
    fq, fg, fo = 0.6 * 0.85 * n * Q_MC, 0.4 * 0.85 * n * G_MC, fo_frac * n * OTHER
    cq, cg, co = 0.3 * 0.85 * n * Q_MC, 0.7 * 0.85 * n * G_MC, fo_frac * n * OTHER
    d_f = data_norm * (0.6 * 0.85 * n * q + 0.4 * 0.85 * n * g + fo_frac * n * OTHER)
    d_c = data_norm * (0.3 * 0.85 * n * q + 0.7 * 0.85 * n * g + fo_frac * n * OTHER)
    x = BinInputs(
        fq=_b(fq),
        fg=_b(fg),
        f_all=_b(fq + fg + fo),
        cq=_b(cq),
        cg=_b(cg),
        c_all=_b(cq + cg + co),
        d_f=_b(d_f),
        d_c=_b(d_c),
        pt_low=500.0,
        pt_high=600.0,
    )
    return x, _b(fo), _b(co)


def test_subtract_solves_a_mixture_with_a_distinct_third_class_exactly():
    x, fo, co = _inputs(Q_DATA, G_DATA, 1.0)
    cfg = _cfg(other="subtract")
    ex = extract_inputs(cfg, with_other_class(x, fo, co, cfg.truth), "none")
    np.testing.assert_allclose(ex.p_q_data, Q_DATA, atol=1e-9)
    np.testing.assert_allclose(ex.p_g_data, G_DATA, atol=1e-9)
    np.testing.assert_allclose(ex.p_q_mc, Q_MC, atol=1e-9)
    # counted with the gluons, the same inputs give the wrong quark shape (the test has teeth)
    gcfg = _cfg(other="gluon")
    wrong = extract_inputs(gcfg, with_other_class(x, fo, co, gcfg.truth), "none")
    assert np.max(np.abs(wrong.p_q_data - Q_DATA)) > 0.02


def test_subtract_normalisation_lumi_or_data():
    """Data 30% above the MC: 'data' scales the subtracted yield and stays exact; 'lumi' does not."""
    x, fo, co = _inputs(Q_DATA, G_DATA, 1.3)
    by_data = _cfg(other="subtract", other_norm="data")
    ex = extract_inputs(by_data, with_other_class(x, fo, co, by_data.truth), "none")
    np.testing.assert_allclose(ex.p_q_data, Q_DATA, atol=1e-9)
    by_lumi = _cfg(other="subtract", other_norm="lumi")
    ex = extract_inputs(by_lumi, with_other_class(x, fo, co, by_lumi.truth), "none")
    assert np.max(np.abs(ex.p_q_data - Q_DATA)) > 1e-3
    # other_scale (the systematic) changes the subtracted amount: 1.3 x the lumi yield is exact again
    scaled = _cfg(other="subtract", other_norm="lumi", other_scale=1.3)
    ex = extract_inputs(scaled, with_other_class(x, fo, co, scaled.truth), "none")
    np.testing.assert_allclose(ex.p_q_data, Q_DATA, atol=1e-9)


def test_other_modes_move_the_right_yields():
    x, fo, co = _inputs(Q_DATA, G_DATA, 1.0)
    sub = with_other_class(x, fo, co, Truth(other="subtract", other_scale=0.5))
    np.testing.assert_allclose(sub.f_all.values, x.fq.values + x.fg.values)
    np.testing.assert_allclose(sub.d_f.values, x.d_f.values - 0.5 * fo.values)
    np.testing.assert_allclose(sub.d_f.variances, x.d_f.variances + 0.25 * fo.variances)
    glu = with_other_class(x, fo, co, Truth(other="gluon"))
    np.testing.assert_allclose(glu.cg.values, x.cg.values + co.values)
    assert with_other_class(x, fo, co, Truth(other="drop_events")) is x


def test_require_positive_is_the_old_spelling():
    assert Truth.model_validate({"require_positive": True}).other == "drop_events"
    assert Truth.model_validate({"require_positive": False}).other == "gluon"
    assert Truth().other == "subtract"
    with pytest.raises(ConfigError, match="require_positive"):
        _cfg(require_positive=True, other="subtract")


@pytest.fixture(scope="module")
def unmatched_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shifted pseudo-data, 20% of jets unmatched (label -1) with a shape of their own."""
    base = tmp_path_factory.mktemp("third")
    generate_sample(base / "sample", events=200_000, files=1, seed=13, unmatched_fraction=0.2, unmatched_own_shape=True)
    return base


def _pulls(base: Path, records: list[dict]) -> np.ndarray:
    data, mc = forward_jets(base / "sample", "data"), forward_jets(base / "sample", "pythia")
    out = []
    for r in records:
        args = (r["tagger"], r["pt_low"], r["pt_high"], r["cut"], r["quark_side"], r["parton"])
        out.append((r["sf"] - true_efficiency(data, *args) / true_efficiency(mc, *args)) / r["stat"])
    return np.array(out)


def test_generator_option_labels_the_asked_fraction(unmatched_sample):
    truth = json.loads((unmatched_sample / "sample" / "truth.json").read_text())
    assert truth["parton_model"]["unmatched_fraction"] == 0.2
    data = forward_jets(unmatched_sample / "sample", "data")
    assert 0.17 < np.mean(data.label == -1) < 0.23


def test_subtract_closes_where_dropping_events_does_not(unmatched_sample, make_config, tmp_path):
    def mode(name: str):
        def mutate(doc: dict) -> None:
            doc["truth"]["other"] = name
            doc["variations"] = {}

        return mutate

    _, cfg = make_config(unmatched_sample, mutate=mode("subtract"))
    records = qgcal.run(cfg, "nominal", workers=2).records
    healthy = np.array([not r["flags"] for r in records])
    assert healthy.sum() >= len(records) * 0.9
    pulls = _pulls(unmatched_sample, records)[healthy]
    assert np.all(np.abs(pulls) < 3.0), pulls
    # the third class is in the MC templates (flavour 'other'), not dropped
    hs, _, _ = load_artifact(cfg.output_path / "nominal" / "final_reweighting" / "merged_pythia.npz")
    h = hs["tagger.ntrk"]
    other = h.values()[:, h.axes["flavour"].index(FLAVOUR_OTHER)].sum()
    assert 0.1 < other / h.values().sum() < 0.3
    # the old behaviour, still available, misses the data's unmatched jets: clearly worse
    _, old = make_config(unmatched_sample, mutate=mode("drop_events"))
    old_records = qgcal.run(old, "nominal", workers=2).records
    old_pulls = _pulls(unmatched_sample, old_records)[healthy]
    assert np.sum(old_pulls**2) > np.sum(pulls**2) + 25.0, (np.sum(old_pulls**2), np.sum(pulls**2))


def test_other_scale_variation_reruns_only_the_final_pass(unmatched_sample, make_config):
    def mutate(doc: dict) -> None:
        doc["variations"] = {
            "other_up": {
                "kind": "other",
                "scale": 1.5,
                "group": "third class",
                "direction": "up",
                "pair": "other_down",
            },
            "other_down": {
                "kind": "other",
                "scale": 0.5,
                "group": "third class",
                "direction": "down",
                "pair": "other_up",
            },
        }

    _, cfg = make_config(unmatched_sample, mutate=mutate)
    results = qgcal.sweep(cfg, ["nominal", "other_up", "other_down"], workers=2)
    # no per-file work of its own: everything the variations read is under nominal/
    assert sorted(p.name for p in cfg.output_path.iterdir() if p.is_dir()) == ["nominal", "results"]
    sf = {s: np.array([r["sf"] for r in res.records]) for s, res in results.items()}
    up, down = sf["other_up"] - sf["nominal"], sf["other_down"] - sf["nominal"]
    assert np.nanmax(np.abs(up)) > 1e-3
    # subtracting more or less of the same shape moves the scale factors in opposite directions
    moved = (np.abs(up) > 1e-6) & (np.abs(down) > 1e-6)
    assert np.mean(np.sign(up[moved]) != np.sign(down[moved])) > 0.9


def test_other_variation_needs_subtract():
    doc = yaml.safe_load(DEMO.read_text())
    doc["truth"]["other"] = "gluon"
    doc["variations"] = {"o": {"kind": "other", "scale": 1.5}}
    with pytest.raises(ConfigError, match="needs truth.other: subtract"):
        parse_config(doc, base_dir=DEMO.parent)
