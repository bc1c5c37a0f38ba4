"""Pass 2 of 4, pkl2predpkl: compute every tagger's value for every selected jet.

Branch taggers are a copy of their column; model taggers go through the one
inference interface (local CPU/GPU or Triton, ``qgcal.inference``), whose
provenance (which backend really ran, fallbacks) is recorded in the artifact.
The output keeps only what the histogram pass needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from qgcal.artifacts import (
    ParquetArtifactWriter,
    config_hash,
    iter_parquet_batches,
    library_versions,
    read_parquet_provenance,
    sha256_file,
)
from qgcal.config import BranchTagger, Config, ModelTagger
from qgcal.errors import ArtifactError

__all__ = ["expected_provenance", "run_file", "tagger_column", "InferenceOverrides"]

PASS = "pkl2predpkl"
KEEP = ("run", "event", "region", "pt", "eta", "lead_pt", "parton_label", "weight")


@dataclass(frozen=True)
class InferenceOverrides:
    """CLI overrides of the config's ``inference`` section (None: use the config)."""

    backend: str | None = None
    device: str | None = None
    triton_url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def tagger_column(name: str) -> str:
    return f"tagger.{name}"


def model_path(cfg: Config, tagger: ModelTagger) -> Path:
    """Where ``qgcal train`` writes and this pass reads a model: relative paths are under <output>/models."""
    p = Path(tagger.model)
    return p if p.is_absolute() else cfg.output_path / "models" / p


def pass_config(cfg: Config) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, tagger in sorted(cfg.taggers.items()):
        if isinstance(tagger, BranchTagger):
            out[name] = {"kind": "branch", "variable": tagger.variable}
        else:
            mp = model_path(cfg, tagger)
            out[name] = {"kind": "model", "features": tagger.features,
                         "model_sha256": sha256_file(mp) if mp.is_file() else "missing"}
    return out


def expected_provenance(cfg: Config, upstream: Path) -> dict[str, Any]:
    up = read_parquet_provenance(upstream)
    return {
        "pass": PASS,
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

    def get(self, cfg: Config, path: Path, overrides: InferenceOverrides) -> tuple[Any, bool]:
        from qgcal.inference import make_scorer  # heavy imports only when a model tagger exists

        backend = overrides.backend or cfg.inference.backend
        if backend != "local":
            return make_scorer(cfg.inference, path, backend_override=overrides.backend,
                               device_override=overrides.device, triton_url_override=overrides.triton_url), True
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns, overrides.device or cfg.inference.device)
        if key not in self._local:
            self._local[key] = make_scorer(cfg.inference, path, backend_override="local",
                                           device_override=overrides.device)
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


def _scorers(cfg: Config, overrides: InferenceOverrides) -> dict[str, tuple[Any, bool]]:
    """Per model tagger: (scorer, whether this file must close it)."""
    out = {}
    for name, tagger in cfg.taggers.items():
        if not isinstance(tagger, ModelTagger):
            continue
        path = model_path(cfg, tagger)
        if not path.is_file():
            raise ArtifactError(f"{path}: model of tagger {name!r} not found; "
                                "run 'qgcal train --config <config>' first")
        out[name] = _CACHE.get(cfg, path, overrides)
    return out


def run_file(cfg: Config, upstream: Path, out_path: Path,
             overrides: InferenceOverrides = InferenceOverrides()) -> int:
    """Score one jet table; returns the number of jets."""
    if not upstream.is_file():
        raise ArtifactError(f"{upstream}: root2pkl artifact missing; rerun root2pkl")
    provenance = expected_provenance(cfg, upstream)
    fields = [pa.field(k, t) for k, t in (
        ("run", pa.int64()), ("event", pa.int64()), ("region", pa.int8()), ("pt", pa.float32()),
        ("eta", pa.float32()), ("lead_pt", pa.float32()), ("parton_label", pa.int32()),
        ("weight", pa.float64()))]
    fields += [pa.field(tagger_column(n), pa.float64()) for n in sorted(cfg.taggers)]
    schema = pa.schema(fields)
    scorers = _scorers(cfg, overrides)
    n_jets = 0
    try:
        with ParquetArtifactWriter(out_path, schema) as writer:
            for table in iter_parquet_batches(upstream):
                cols: dict[str, Any] = {k: table.column(k).to_numpy() for k in KEEP}
                for name, tagger in cfg.taggers.items():
                    if isinstance(tagger, BranchTagger):
                        cols[tagger_column(name)] = table.column(tagger.variable).to_numpy().astype(np.float64)
                    else:
                        feats = np.column_stack([
                            table.column(f).to_numpy().astype(np.float32) for f in tagger.features
                        ]) if table.num_rows else np.zeros((0, len(tagger.features)), np.float32)
                        with _one_thread_in_workers():
                            scores = scorers[name][0].predict(np.ascontiguousarray(feats, dtype=np.float32))
                        cols[tagger_column(name)] = np.asarray(scores, dtype=np.float32).astype(np.float64)
                writer.write(cols)
                n_jets += table.num_rows
            prov = dict(provenance)
            prov["inference"] = {n: s.provenance() for n, (s, _) in scorers.items()}
            prov["versions"] = library_versions()
            writer.commit(prov)
    finally:
        for s, owned in scorers.values():
            if owned:
                s.close()
    return n_jets
