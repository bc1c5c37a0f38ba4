"""Training the BDT tagger: labels, split, flat-pT weights, determinism, metrics, outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

# Fixtures (tagger) come from the triton_fixture plugin (tests/conftest.py).
from triton_fixture import FEATURES, feature_matrix

from qgcal.inference import load_model
from qgcal.inference.model_io import file_sha256
from qgcal.inference.synthetic import synthetic_jets
from qgcal.training import (
    flat_pt_weights,
    train_tagger,
    truth_class,
    weighted_roc,
    write_training_outputs,
)


def test_truth_classes():
    labels = np.array([1, -2, 3, 4, 5, -5, 21, 0, 6, -21, 22])
    assert truth_class(labels).tolist() == [0, 0, 0, 0, 0, 0, 1, -1, -1, -1, -1]


def test_model_beats_ntracks_in_every_pt_bin(tagger):
    metrics = tagger.result.metrics
    assert [m.pt_low for m in metrics] == [500, 600, 800, 1000, 1200, 1500]
    for m in metrics:
        assert m.n_quark > 50 and m.n_gluon > 50
        assert m.auc_model > m.auc_reference + 0.05, m
        assert 0.5 < m.auc_reference < 1.0


def test_training_is_deterministic(tmp_path):
    columns = synthetic_jets(20_000, seed=8)
    x = feature_matrix(columns)
    first = train_tagger(columns, seed=5, max_iter=20)
    second = train_tagger(columns, seed=5, max_iter=20)
    np.testing.assert_array_equal(first.model.decision_function(x), second.model.decision_function(x))
    # What identifies a model is its file (skops archives differ byte-wise between saves):
    # each saved model verifies against its own sidecar, and both score bit-identically.
    loaded = []
    for result, name in ((first, "a.skops"), (second, "b.skops")):
        meta = result.save(tmp_path / name)
        model = load_model(tmp_path / name)
        assert model.meta == meta and model.fingerprint == file_sha256(tmp_path / name)
        loaded.append(model.estimator.decision_function(x))
    np.testing.assert_array_equal(loaded[0], loaded[1])
    np.testing.assert_array_equal(loaded[0], first.model.decision_function(x))
    assert [vars(m) for m in first.metrics] == [vars(m) for m in second.metrics]


def test_split_by_event_parity_and_pt_range():
    columns = synthetic_jets(12_000, seed=2)
    columns["event"] = np.arange(12_000, dtype=np.int64) * 3 - 7  # negative and odd/even mixed
    result = train_tagger(columns, seed=0, max_iter=3)
    cls = truth_class(columns["parton_label"])
    pt = columns["pt"]
    usable = (cls >= 0) & (pt >= 500) & (pt < 2000)
    even = columns["event"] % 2 == 0
    assert result.training["n_train"] == int((usable & even).sum())
    assert result.training["n_eval"] == int((usable & ~even).sum())
    n_eval_bins = sum(m.n_quark + m.n_gluon for m in result.metrics)
    assert n_eval_bins == result.training["n_eval"]


def test_flat_pt_weights_equalise_every_class_and_bin():
    rng = np.random.default_rng(0)
    pt = rng.uniform(400, 2100, 10_000)
    cls = rng.integers(-1, 2, 10_000)
    weight = rng.normal(1.0, 0.8, 10_000)  # includes negative weights
    edges = [500, 800, 1200, 2000]
    w = flat_pt_weights(pt, cls, weight, edges)
    bins = np.digitize(pt, edges) - 1
    sums = [w[(cls == c) & (bins == b)].sum() for c in (0, 1) for b in range(3)]
    np.testing.assert_allclose(sums, sums[0], rtol=1e-12)
    assert np.all(w >= 0)
    assert np.all(w[(pt < 500) | (pt >= 2000) | (cls == -1)] == 0)
    assert w[w > 0].mean() == pytest.approx(1.0)
    inside = (cls >= 0) & (bins >= 0) & (bins < 3)
    # within a (class, bin) the weights are proportional to |w|
    sel = inside & (cls == 0) & (bins == 1)
    np.testing.assert_allclose(w[sel] / np.abs(weight[sel]), (w[sel] / np.abs(weight[sel]))[0])


def test_weighted_roc_matches_sklearn_with_ties_and_handles_negative_weights():
    rng = np.random.default_rng(1)
    g = rng.random(5_000) < 0.4
    scores = np.round(rng.normal(size=5_000) + 0.7 * g)  # integers: many ties, like nTracks
    w = rng.uniform(0.1, 2.0, 5_000)
    eff_q, rej_g, auc = weighted_roc(scores, g, w)
    assert auc == pytest.approx(roc_auc_score(g, scores, sample_weight=w), abs=1e-12)
    assert (eff_q[0], rej_g[0], eff_q[-1], rej_g[-1]) == (0.0, 1.0, 1.0, 0.0)
    w_signed = np.where(rng.random(5_000) < 0.05, -w, w)
    assert 0.5 < weighted_roc(scores, g, w_signed)[2] < 1.0


def test_missing_columns_are_named():
    columns = synthetic_jets(2_000, seed=3)
    with pytest.raises(ValueError, match=r"training features \['trackWidthX'\] are not in the jet table"):
        train_tagger(columns, features=("pt", "trackWidthX"), max_iter=2)
    del columns["event"]
    with pytest.raises(ValueError, match="no 'event' column"):
        train_tagger(columns, max_iter=2)


def test_training_outputs(tagger, tmp_path):
    paths = write_training_outputs(tagger.result, tmp_path / "train")
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["features"] == list(FEATURES) and metrics["reference"] == "nTracks"
    assert len(metrics["pt_bins"]) == 6
    first = metrics["pt_bins"][0]
    assert set(first) == {"pt_low", "pt_high", "n_quark", "n_gluon", "auc_model", "auc_reference"}
    assert first["auc_model"] == tagger.result.metrics[0].auc_model
    assert paths["roc"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
