"""The kNN graph constituent tagger (``architecture: knn``): graph stage, GNN stage, training, scoring.

What is checked against what: the neighbour lists against a brute-force numpy kNN written
here (float64 distances, ties by index); batch invariance of the graph stage bit for bit and
of the scores within the float32 matrix-product tolerance (docs/constituents.md); the fused
model against its two stages and against its TorchScript export; the trained tagger's
held-out AUC (sklearn, on the pass-2 scores) against nTracks in every pT bin; retraining
and rescoring with another worker count and file order byte for byte.
"""

from __future__ import annotations

import glob
import itertools
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import write_config
from qgcal.generate import generate_sample

torch = pytest.importorskip("torch")
roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score

FEATURES = ["constit_ptFrac", "constit_deta", "constit_dphi", "constit_charge", "constit_d0", "constit_dz"]
COORDS = (1, 2)  # deta, dphi
#: float32 log-odds of one jet scored in differently composed batches (docs/constituents.md)
BATCH_TOLERANCE = 1e-4


def _reference_knn(xy: np.ndarray, counts: np.ndarray, k: int) -> np.ndarray:
    """Brute force: per constituent, the k nearest other rows of its jet (float64, ties by row), -1 padded."""
    out = np.full((len(xy), k), -1, dtype=np.int64)
    start = 0
    for c in counts.tolist():
        rows = np.arange(start, start + c)
        for i in rows:
            others = rows[rows != i]
            d2 = np.sum((xy[others].astype(np.float64) - xy[i].astype(np.float64)) ** 2, axis=1)
            chosen = others[np.lexsort((others, d2))][:k]
            out[i, : len(chosen)] = chosen
        start += c
    return out


def _jets(seed: int, n: int, *, mean: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    counts = rng.poisson(mean, size=n).astype(np.int64)
    counts[:4] = [0, 1, 2, 3]  # the edge cases: no constituent, no neighbour, fewer than k
    values = rng.normal(size=(int(counts.sum()), len(FEATURES))).astype(np.float32)
    return values, counts


def _network(hidden: int = 16, k: int = 4, seed: int = 0) -> Any:
    from qgcal.inference.constituent_model import build_network

    torch.manual_seed(seed)
    return build_network(len(FEATURES), hidden, architecture="knn", neighbours=k, coordinates=COORDS).eval()


def _spans(counts: np.ndarray, cuts: list[int]) -> list[tuple[int, int, int, int]]:
    offsets = np.concatenate([[0], np.cumsum(counts)])
    edges = [0, *cuts, len(counts)]
    return [(a, b, int(offsets[a]), int(offsets[b])) for a, b in itertools.pairwise(edges)]


# ----------------------------------------------------------------------------- graph stage


def test_neighbours_match_brute_force_knn_with_random_coordinates() -> None:
    from qgcal.inference.constituent_model import graph_neighbours

    values, counts = _jets(1, 300)
    for k in (1, 4, 8):
        got = graph_neighbours(_network(k=k), values, counts)
        np.testing.assert_array_equal(got, _reference_knn(values[:, COORDS], counts, k))


def test_ties_are_broken_by_row_and_duplicates_of_a_constituent_are_its_neighbours() -> None:
    from qgcal.inference.constituent_model import graph_neighbours

    rng = np.random.default_rng(2)
    counts = np.array([5, 9, 1, 7, 12], dtype=np.int64)
    values = np.zeros((int(counts.sum()), len(FEATURES)), dtype=np.float32)
    # a coarse grid: many equal distances, several constituents at the same point (distance 0)
    values[:, 1:3] = rng.integers(-2, 3, size=(len(values), 2)).astype(np.float32) * 0.25
    got = graph_neighbours(_network(k=4), values, counts)
    np.testing.assert_array_equal(got, _reference_knn(values[:, COORDS], counts, 4))
    rows = np.arange(len(values))[:, None]
    assert not np.any(got == rows), "a constituent is never its own neighbour"


def test_graph_is_the_same_for_any_batching_and_scores_agree_within_tolerance() -> None:
    from qgcal.inference.constituent_model import graph_neighbours, score_network

    net = _network(k=8)
    values, counts = _jets(3, 2000, mean=18.0)
    nb_all = graph_neighbours(net, values, counts)
    ref = score_network(net, values, counts)
    worst = 0.0
    for cuts in ([1000], [7, 300, 301, 1999], list(range(50, 2000, 50))):
        parts, scores = [], []
        for j0, j1, v0, v1 in _spans(counts, cuts):
            nb = graph_neighbours(net, values[v0:v1], counts[j0:j1])
            parts.append(np.where(nb >= 0, nb + v0, -1))  # back to the rows of the whole batch
            scores.append(score_network(net, values[v0:v1], counts[j0:j1]))
        np.testing.assert_array_equal(np.concatenate(parts), nb_all)
        worst = max(worst, float(np.max(np.abs(np.concatenate(scores) - ref))))
    assert worst < BATCH_TOLERANCE, worst


def test_fused_model_equals_its_two_stages_bit_for_bit() -> None:
    from qgcal.inference.constituent_model import graph_neighbours, score_neighbours, score_network

    net = _network(k=8)
    values, counts = _jets(4, 500, mean=18.0)
    fused = score_network(net, values, counts)
    split = score_neighbours(net, values, counts, graph_neighbours(net, values, counts))
    assert fused.tobytes() == split.tobytes()
    assert np.all(np.isfinite(fused)) and fused.shape == counts.shape


def test_scores_do_not_depend_on_the_order_of_a_jets_constituents() -> None:
    from qgcal.inference.constituent_model import score_network

    net = _network(k=4)
    values, counts = _jets(5, 400)
    rng = np.random.default_rng(6)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    perm = np.concatenate([rng.permutation(np.arange(a, b)) for a, b in itertools.pairwise(offsets)])
    a, b = score_network(net, values, counts), score_network(net, values[perm], counts)
    np.testing.assert_allclose(a, b, rtol=0, atol=BATCH_TOLERANCE)


def test_a_nan_constituent_spoils_its_own_jet_only() -> None:
    from qgcal.inference.constituent_model import score_network

    net = _network(k=4)
    values, counts = _jets(7, 200)
    clean = score_network(net, values, counts)
    bad = values.copy()
    jet = 10
    start = int(counts[:jet].sum())
    assert counts[jet] >= 2
    bad[start, 1] = np.nan  # a NaN coordinate: in the graph and in the features
    spoiled = score_network(net, bad, counts)
    others = np.arange(len(counts)) != jet
    assert spoiled[others].tobytes() == clean[others].tobytes()
    assert np.isnan(spoiled[jet])


# ----------------------------------------------------------------------------- files and export


def _saved(tmp_path: Path, net: Any, arch: str = "knn") -> Path:
    from qgcal.inference.constituent_model import save_constituent_model

    path = tmp_path / f"{arch}.safetensors"
    extra = {"neighbours": 4, "coordinates": [FEATURES[i] for i in COORDS]} if arch == "knn" else {}
    save_constituent_model(
        net, path, features=FEATURES, hidden=16, training_sample_sha256="test", training={}, architecture=arch, **extra
    )
    return path


def test_saved_model_round_trips_with_its_architecture_in_the_sidecar(tmp_path: Path) -> None:
    from qgcal.inference.constituent_model import ConstituentScorer, score_network

    net = _network(k=4)
    path = _saved(tmp_path, net)
    arch = json.loads((tmp_path / "knn.safetensors.json").read_text())["architecture"]
    assert arch["kind"] == "knn" and arch["neighbours"] == 4 and arch["coordinates"] == ["constit_deta", "constit_dphi"]
    scorer = ConstituentScorer(path)
    values, counts = _jets(8, 300)
    assert scorer.predict_constituents(values, counts).tobytes() == score_network(net, values, counts).tobytes()
    assert scorer.provenance()["engine"] == "torch-knn"


def test_a_sidecar_without_architecture_kind_is_deepsets(tmp_path: Path) -> None:
    from qgcal.inference.constituent_model import ConstituentScorer, build_network, score_network

    torch.manual_seed(1)
    net = build_network(len(FEATURES), 16).eval()
    path = _saved(tmp_path, net, arch="deepsets")
    side = tmp_path / "deepsets.safetensors.json"
    doc = json.loads(side.read_text())
    del doc["architecture"]["kind"]  # as written before the kNN network existed
    side.write_text(json.dumps(doc))
    values, counts = _jets(9, 100)
    scorer = ConstituentScorer(path)
    assert scorer.meta.architecture == "deepsets" and scorer.provenance()["engine"] == "torch-deepsets"
    assert scorer.predict_constituents(values, counts).tobytes() == score_network(net, values, counts).tobytes()


def test_torchscript_export_scripts_the_graph_network(tmp_path: Path) -> None:
    from qgcal.inference.constituent_model import ConstituentScorer, deterministic_torch, graph_neighbours
    from qgcal.inference.export import torchscript_module

    net = _network(k=4)
    path = _saved(tmp_path, net)
    module = torchscript_module(path)
    module.save(str(tmp_path / "model.pt"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.x calls TorchScript deprecated; Triton loads it
        loaded = torch.jit.load(str(tmp_path / "model.pt"))
    values, counts = _jets(10, 500)
    with deterministic_torch(1), torch.no_grad():
        x, c = torch.from_numpy(values), torch.from_numpy(counts)
        scripted = loaded(x, c).numpy()
        scripted_graph = loaded.net.knn(x, c).numpy()
    np.testing.assert_array_equal(scripted_graph, graph_neighbours(net, values, counts))
    np.testing.assert_allclose(
        scripted, ConstituentScorer(path).predict_constituents(values, counts), rtol=0, atol=1e-6
    )


def test_knn_config_needs_its_coordinates_among_the_features() -> None:
    from pydantic import ValidationError

    from qgcal.config import ConstituentTagger

    base = {"model": "m.safetensors", "bins": {"n": 10, "low": -5, "high": 5}}
    assert ConstituentTagger(**base).architecture == "deepsets"
    tagger = ConstituentTagger(**base, architecture="knn")
    assert tagger.neighbours == 8 and tagger.graph_coordinates == ["constit_deta", "constit_dphi"]
    with pytest.raises(ValidationError, match="graph_coordinates"):
        ConstituentTagger(**base, architecture="knn", graph_coordinates=["constit_eta"])
    with pytest.raises(ValidationError, match="neighbours"):
        ConstituentTagger(**base, architecture="knn", neighbours=0)


# ----------------------------------------------------------------------------- training and scoring

EPOCHS = 6
HIDDEN = 12


def _mutate(doc: dict[str, Any]) -> None:
    doc["branches"]["nConstituents"] = "jet_nConstituents"
    doc["branches"].update({f: f for f in FEATURES})
    doc["taggers"] = {
        "ntrk": doc["taggers"]["ntrk"],
        "gnn": {
            "kind": "constituents",
            "model": "gnn.safetensors",
            "features": FEATURES,
            "counts": "nConstituents",
            "bins": {"n": 60, "low": -6, "high": 6},
            "quark_side": "low",
            "train_epochs": EPOCHS,
            "hidden": HIDDEN,
            "architecture": "knn",
            "neighbours": 8,
        },
    }
    doc["variations"] = {}
    doc["plots"] = {"enabled": False}


def _score_passes(cfg: Any, workers: int) -> None:
    """qgcal train, then the first two passes (jet tables, scores) over data and nominal MC."""
    import qgcal
    from qgcal.plan import plan_tasks
    from qgcal.workflows.single import make_runner, run_file_passes

    qgcal.train(cfg, workers=workers)
    runner = make_runner(cfg)
    try:
        run_file_passes(cfg, plan_tasks(cfg, "nominal"), runner, through=1)
    finally:
        runner.shutdown()


@pytest.fixture(scope="module")
def graph_trained(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("graph")
    generate_sample(base / "sample", events=20_000, files=2, seed=5, constituents=True)
    _, cfg = write_config(base, base / "out1", name="gnn1", mutate=_mutate)
    _score_passes(cfg, workers=2)
    return cfg


def _pred_tables(cfg: Any, sample: str) -> dict[str, np.ndarray]:
    files = sorted(glob.glob(str(cfg.output_path / "nominal" / "pkl2predpkl" / sample / "*" / "*.parquet")))
    tables = [pq.read_table(p) for p in files]
    return {n: np.concatenate([t.column(n).to_numpy() for t in tables]) for n in tables[0].column_names}


def test_graph_tagger_beats_ntracks_in_every_pt_bin_on_held_out_jets(graph_trained: Any) -> None:
    cfg = graph_trained
    sidecar = json.loads((cfg.output_path / "models" / "gnn.safetensors.json").read_text())
    assert sidecar["architecture"]["kind"] == "knn" and sidecar["architecture"]["neighbours"] == 8
    t = _pred_tables(cfg, "pythia")
    label = np.abs(t["parton_label"])
    held_out = (t["event"] % 2 == 1) & ((label == 21) | ((label >= 1) & (label <= 5)))
    for lo, hi in itertools.pairwise(cfg.pt_bins_gev):
        sel = held_out & (t["pt"] >= lo) & (t["pt"] < hi)
        gluon = label[sel] == 21
        assert 200 < gluon.size and 0 < gluon.sum() < gluon.size, (lo, gluon.size)
        auc_model = roc_auc_score(gluon, t["tagger.gnn"][sel])
        auc_ntrk = roc_auc_score(gluon, t["tagger.ntrk"][sel])
        assert auc_model > auc_ntrk + 0.02, (lo, hi, auc_model, auc_ntrk)


def test_graph_training_and_scores_are_the_same_for_any_worker_count_and_file_order(graph_trained: Any) -> None:
    cfg = graph_trained
    base = cfg.output_path.parent

    def reversed_files(doc: dict[str, Any]) -> None:
        _mutate(doc)

        def expand(patterns: list[str]) -> list[str]:
            files = sorted(str(Path(p).relative_to(base)) for pat in patterns for p in glob.glob(str(base / pat)))
            return files[::-1]

        doc["samples"]["data"]["files"] = expand(doc["samples"]["data"]["files"])
        for sl in doc["samples"]["pythia"]["slices"].values():
            sl["files"] = expand(sl["files"])

    _, cfg2 = write_config(base, base / "out2", name="gnn2", mutate=reversed_files)
    assert len(cfg2.samples["data"].files) > 1
    _score_passes(cfg2, workers=1)
    m1, m2 = cfg.output_path / "models", cfg2.output_path / "models"
    assert (m1 / "gnn.safetensors").read_bytes() == (m2 / "gnn.safetensors").read_bytes()
    assert (m1 / "gnn.safetensors.json").read_bytes() == (m2 / "gnn.safetensors.json").read_bytes()
    for sample in ("data", "pythia"):
        a, b = _pred_tables(cfg, sample)["tagger.gnn"], _pred_tables(cfg2, sample)["tagger.gnn"]
        assert a.size > 0 and a.tobytes() == b.tobytes()
    shutil.rmtree(cfg2.output_path)
