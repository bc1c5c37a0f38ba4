"""Bootstrap replicas are keyed by the dataset (sample AND slice), not only by run and event.

JZ slices of one production share runNumber and overlap in eventNumber: keyed by
(sample, run, event) alone, different events of two slices would get identical
replica weights, correlating slices that are statistically independent.
"""

from __future__ import annotations

import shutil

import numpy as np

import qgcal
from qgcal.bootstrap import dataset_key, from_arrays, poisson_replicas
from qgcal.histset import load_extra


def test_two_slices_with_the_same_run_and_event_numbers_get_independent_draws():
    events = np.arange(100_000, dtype=np.int64)
    runs = np.full(len(events), 410000)
    jz4 = poisson_replicas(dataset_key("pythia", "JZ4"), runs, events, 6).astype(np.float64)
    jz5 = poisson_replicas(dataset_key("pythia", "JZ5"), runs, events, 6).astype(np.float64)
    again = poisson_replicas(dataset_key("pythia", "JZ4"), runs, events, 6)
    np.testing.assert_array_equal(again, jz4)  # reproducible per dataset
    for r in range(6):
        assert abs(np.corrcoef(jz4[:, r], jz5[:, r])[0, 1]) < 0.02
    assert np.mean(jz4 == jz5) < 0.5  # equal draws only by chance (P(k=k') ~ 0.31 for Poisson(1))


def test_slices_sharing_events_get_independent_replicas_end_to_end(small_sample, make_config, tmp_path):
    """The same file (same run and event numbers) listed as two slices: their replica sums differ."""
    src = small_sample / "sample" / "mc" / "pythia" / "JZ5" / "pythia_JZ5_000.root"
    copies = {}
    for name in ("JZ4", "JZ5"):
        d = tmp_path / name
        d.mkdir()
        copies[name] = d / "events.root"  # a copy: one file may belong to one slice only
        shutil.copyfile(src, copies[name])

    def mutate(doc):
        doc["bootstrap"] = 20
        doc["variations"] = {}
        doc["plots"] = {"enabled": False}
        doc["taggers"] = {"ntrk": doc["taggers"]["ntrk"]}
        doc["samples"]["pythia"]["slices"] = {name: {"files": [str(p)], "xsec_pb": 764.8} for name, p in copies.items()}

    _, cfg = make_config(small_sample, mutate=mutate)
    qgcal.run(cfg, "nominal", workers=1)
    per_slice = {}
    for name in copies:
        (artifact,) = (cfg.output_path / "nominal" / "predpkl2hist" / "pythia" / name).glob("*.npz")
        per_slice[name] = from_arrays(load_extra(artifact))["ntrk"].to_float()
    a, b = per_slice["JZ4"], per_slice["JZ5"]
    assert a.shape == b.shape and a.sum() > 0
    # the same events and weights: equal totals over replicas on average, but other draws per replica
    assert not np.array_equal(a, b)
    da = (a - a.mean(axis=-1, keepdims=True)).ravel()
    db = (b - b.mean(axis=-1, keepdims=True)).ravel()
    assert abs(np.corrcoef(da, db)[0, 1]) < 0.3
