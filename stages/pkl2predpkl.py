"""Pass 2 of 4, pkl2predpkl: compute every tagger's value for every selected jet.

Branch taggers are a copy of their column; model taggers go through the one
inference interface (local CPU/GPU or Triton, ``qgcal.inference``), whose
provenance (which backend really ran, fallbacks) is recorded in the artifact.
The output keeps only what the histogram pass needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np

from qgcal.artifacts import (
    ParquetArtifactWriter,
    config_hash,
    iter_parquet_batches,
    library_versions,
    read_parquet_provenance,
    sha256_file,
)
from qgcal.config import BranchTagger, Config, ConstituentTagger, ModelTagger
from qgcal.contract import JET_COLUMNS, jet_table_schema, same_bits, tagger_column
from qgcal.errors import ArtifactError
from qgcal.passes import UpstreamPass
from qgcal.plan import FileTask, model_path

__all__ = ["PASS", "Pkl2PredPkl", "expected_provenance", "run_file", "run_files"]

NAME = "pkl2predpkl"
# what root2pkl measured about the file, carried on to the histogram pass's metadata
CARRY = ("sumw", "cutflow", "cutflow_sumw")


def pass_config(cfg: Config) -> dict[str, Any]:
    """The config fields the scores depend on, the inference route included.

    Why the route (backend, device; the served model for Triton) is part of it: a
    server may serve another model version than the local file, so scores made by
    one route are not reused for a run that asks for another; switching rescores.
    """
    out: dict[str, Any] = {}
    models = False
    for name, tagger in sorted(cfg.taggers.items()):
        if isinstance(tagger, BranchTagger):
            out[name] = {"kind": "branch", "variable": tagger.variable}
        elif isinstance(tagger, ConstituentTagger):
            from qgcal.inference.constituent_model import sidecar_path

            mp = model_path(cfg, tagger)
            side = sidecar_path(mp)
            out[name] = {
                "kind": "constituents",
                "features": tagger.features,
                "counts": tagger.counts,
                "model_sha256": sha256_file(mp) if mp.is_file() else "missing",
                "sidecar_sha256": sha256_file(side) if side.is_file() else "missing",
                "route": _constituent_route(cfg, name),
            }
        else:
            models = True
            mp = model_path(cfg, tagger)
            out[name] = {
                "kind": "model",
                "features": tagger.features,
                "model_sha256": sha256_file(mp) if mp.is_file() else "missing",
            }
    if models:
        inf = cfg.inference
        route: dict[str, Any] = {"backend": inf.backend, "device": inf.device}
        if inf.backend == "triton":
            route["triton"] = {
                "model_name": inf.triton.model_name,
                "model_version": inf.triton.model_version,
                "fallback": inf.triton.fallback,
            }
        out["__inference__"] = route
    return out


def _constituent_route(cfg: Config, name: str) -> dict[str, Any] | str:
    """local-cpu, or the Triton model that scores the constituent tagger (part of the pass's validity)."""
    inf = cfg.inference
    if inf.backend != "triton":
        return "local-cpu"
    from qgcal.inference.triton_client import constituent_model_name

    t = inf.triton
    return {
        "backend": "triton",
        "model_name": constituent_model_name(t.model_name, name),
        "model_version": t.model_version,
        "fallback": t.fallback,
    }


def expected_provenance(cfg: Config, upstream: Path) -> dict[str, Any]:
    up = read_parquet_provenance(upstream)
    return {
        "pass": NAME,
        "config_hash": config_hash(pass_config(cfg)),
        "inputs": {"root2pkl": config_hash(up) if up else "missing"},
    }


class _ScorerCache:
    """Local scorers kept for the life of a worker process, keyed by the model file's identity.

    Loading a skops model (with its trusted-type audit and fingerprint check) costs far
    more than scoring one file's jets; a worker processes many files with the same model.
    Triton scorers are not cached: a client holds connections that a fork must not share,
    and each file's provenance must say whether that file fell back.
    """

    def __init__(self) -> None:
        self._local: dict[tuple[Any, ...], Any] = {}

    def get(self, cfg: Config, path: Path) -> tuple[Any, bool]:
        from qgcal.inference import make_scorer  # heavy imports only when a model tagger exists

        if cfg.inference.backend != "local":
            return make_scorer(cfg.inference, path), True
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns, cfg.inference.device)
        if key not in self._local:
            self._local[key] = make_scorer(cfg.inference, path)
        return self._local[key], False


_CACHE = _ScorerCache()


def _one_thread_in_workers() -> Any:
    """In a pool worker, one OpenMP thread: the pool already uses every core, and N workers
    x N threads each oversubscribe them (the in-process route keeps all threads)."""
    import multiprocessing
    from contextlib import nullcontext

    if multiprocessing.parent_process() is None:
        return nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _scorers(cfg: Config) -> dict[str, tuple[Any, bool]]:
    """Per model tagger: (scorer, whether this file must close it)."""
    out = {}
    for name, tagger in cfg.taggers.items():
        if isinstance(tagger, ConstituentTagger):
            out[name] = _constituent_scorer(cfg, name, tagger)
            continue
        if not isinstance(tagger, ModelTagger):
            continue
        path = model_path(cfg, tagger)
        if not path.is_file():
            raise ArtifactError(
                f"{path}: model of tagger {name!r} not found; run 'qgcal train --config <config>' first"
            )
        out[name] = _CACHE.get(cfg, path)
    return out


_CONSTITUENT_CACHE: dict[tuple[Any, ...], Any] = {}


def _constituent_scorer(cfg: Config, name: str, tagger: ConstituentTagger) -> tuple[Any, bool]:
    """(scorer, whether this file must close it) for a constituent tagger.

    backend triton: a :class:`TritonConstituentScorer` for ``<triton.model_name>_<tagger>``
    (not cached, like every Triton scorer: connections must not cross a fork, and each file's
    provenance says whether it fell back).  Otherwise the local CPU scorer, cached per worker
    and keyed by the model files' identity; a CUDA request is still scored on the CPU and the
    provenance says so (``device_note``).
    """
    from qgcal.inference.constituent_model import ConstituentScorer, sidecar_path

    path = model_path(cfg, tagger)
    if not path.is_file():
        raise ArtifactError(f"{path}: model of tagger {name!r} not found; run 'qgcal train --config <config>' first")
    inf = cfg.inference
    if inf.backend == "triton":
        from qgcal.inference.triton_client import TritonConstituentScorer, constituent_model_name

        settings = inf.triton.model_copy(update={"model_name": constituent_model_name(inf.triton.model_name, name)})
        return TritonConstituentScorer(settings, model_path=path, local_device=inf.device), True
    side = sidecar_path(path)
    key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in (path, side) if p.exists())
    note = None
    if inf.device != "cpu":
        note = "constituent models are scored on the local CPU only so far (no local CUDA route yet)"
    requested = {"backend": inf.backend, "device": inf.device}
    ckey = (key, inf.backend, inf.device)
    if ckey not in _CONSTITUENT_CACHE:
        _CONSTITUENT_CACHE[ckey] = ConstituentScorer(path, note=note, requested=requested)
    return _CONSTITUENT_CACHE[ckey], False


def constituent_request(table: Any, features: list[str], where: str) -> tuple[np.ndarray, np.ndarray]:
    """(flattened constituents float32 [N, k], counts int64 [n]) of a jet table's list columns.

    The request a constituent scorer takes (and a Triton request would carry): primitive
    arrays, no padding. Every feature must have the same lists lengths (one collection).
    """
    import pyarrow as pa

    cols, counts = [], None
    for f in features:
        col = table.column(f)
        arr = col.combine_chunks() if col.num_chunks else pa.array([], type=col.type)
        lens = arr.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
        if counts is not None and not np.array_equal(lens, counts):
            raise ArtifactError(
                f"{where}: constituent columns {features[0]!r} and {f!r} differ in length; rerun root2pkl"
            )
        counts = lens
        cols.append(arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32))
    assert counts is not None  # features is never empty (config)
    return np.ascontiguousarray(np.column_stack(cols), dtype=np.float32), counts


def _score(
    cfg: Config, name: str, table: Any, scorers: dict[str, tuple[Any, bool]], where: str, like: list[_Scored]
) -> np.ndarray:
    """Tagger ``name``'s values of a row group, float64; a model's scores are taken from ``like``
    when a row group of another variation had bit-identical inputs (one inference, not one per
    variation: a PDF set's 100 weights select the same jets with the same features)."""
    tagger = cfg.taggers[name]
    if isinstance(tagger, BranchTagger):
        return table.column(tagger.variable).to_numpy().astype(np.float64)
    if isinstance(tagger, ConstituentTagger):
        inputs: tuple[np.ndarray, ...] = constituent_request(table, tagger.features, where)
    else:
        inputs = (
            np.column_stack([table.column(f).to_numpy().astype(np.float32) for f in tagger.features])
            if table.num_rows
            else np.zeros((0, len(tagger.features)), np.float32),
        )
    for done in like:
        if done.name == name and len(done.inputs) == len(inputs) and all(map(same_bits, done.inputs, inputs)):
            return done.scores
    if isinstance(tagger, ConstituentTagger):
        scores = scorers[name][0].predict_constituents(*inputs)
    else:
        with _one_thread_in_workers():
            scores = scorers[name][0].predict(np.ascontiguousarray(inputs[0], dtype=np.float32))
    out = np.asarray(scores, dtype=np.float32).astype(np.float64)
    like.append(_Scored(name, inputs, out))
    return out


@dataclass(frozen=True)
class _Scored:
    """A model's scores of one row group and the inputs they were computed from."""

    name: str
    inputs: tuple[np.ndarray, ...]
    scores: np.ndarray


def run_files(cfg: Config, jobs: Sequence[tuple[Path, Path]]) -> list[int]:
    """Score the jet tables of ``jobs`` ((root2pkl artifact, output) pairs); the jets of each.

    Their row groups are read in step, and a model scores each distinct input once for all of
    them (:func:`_score`), so the weight variations of a file cost one inference. Each artifact is
    the same bytes as when scored alone; none is committed unless every one was scored.
    """
    for upstream, _ in jobs:
        if not upstream.is_file():
            raise ArtifactError(f"{upstream}: root2pkl artifact missing; rerun root2pkl")
    provenances = [expected_provenance(cfg, upstream) for upstream, _ in jobs]
    schema = jet_table_schema(taggers=sorted(cfg.taggers))
    scorers = _scorers(cfg)
    n_jets = [0] * len(jobs)
    try:
        with ExitStack() as stack:
            writers = [stack.enter_context(ParquetArtifactWriter(out, schema)) for _, out in jobs]
            for tables in zip_longest(*(iter_parquet_batches(upstream) for upstream, _ in jobs)):
                scored: list[_Scored] = []
                for k, table in enumerate(tables):
                    if table is None:  # this table has fewer row groups than another one
                        continue
                    cols: dict[str, Any] = {c: table.column(c).to_numpy() for c in JET_COLUMNS}
                    for name in cfg.taggers:
                        cols[tagger_column(name)] = _score(cfg, name, table, scorers, str(jobs[k][0]), scored)
                    writers[k].write(cols)
                    n_jets[k] += table.num_rows
            for (upstream, _), writer, provenance in zip(jobs, writers, provenances, strict=True):
                up = read_parquet_provenance(upstream) or {}
                prov = dict(provenance)
                prov["carry"] = {k: up.get(k) for k in CARRY}
                prov["inference"] = {n: s.provenance() for n, (s, _) in scorers.items()}
                prov["versions"] = library_versions()
                writer.commit(prov)
    finally:
        for s, owned in scorers.values():
            if owned:
                s.close()
    return n_jets


def run_file(cfg: Config, upstream: Path, out_path: Path) -> int:
    """Score one jet table (:func:`run_files` of one); returns the number of jets."""
    return run_files(cfg, [(upstream, out_path)])[0]


class Pkl2PredPkl(UpstreamPass):
    """The :class:`qgcal.passes.FilePass` of pass 2: one artifact per file task, the tasks of one
    (file, tree) scored together."""

    name = NAME
    ext = ".parquet"

    def provenance_for(self, cfg: Config, upstream: Path) -> dict[str, Any]:
        return expected_provenance(cfg, upstream)

    def read_provenance(self, path: Path) -> dict[str, Any] | None:
        return read_parquet_provenance(path)

    def run_many(
        self, cfg: Config, tasks: Sequence[FileTask], upstreams: Sequence[Path], outs: Sequence[Path]
    ) -> list[int]:
        return run_files(cfg, list(zip(upstreams, outs, strict=True)))


PASS = Pkl2PredPkl()
