"""``qgcal train``: the config's model taggers, trained on nominal MC jet tables.

The jets are the nominal MC jet tables of the first pass (made here when missing), with
each MC slice normalised as in the calibration (lumi x xsec x filter_eff /
sum_of_weights), so the pT spectrum the training sees is the physical one
before the flat-pT training weights are applied.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from qgcal.artifacts import read_parquet, read_parquet_provenance
from qgcal.config import Config, ConstituentTagger, ModelTagger
from qgcal.errors import ConfigError
from qgcal.locking import output_lock
from qgcal.passes import artifact_of
from qgcal.plan import jet_variables, model_path, plan_tasks
from qgcal.progress import log
from qgcal.stages import FILE_PASSES
from qgcal.workflows.single import make_runner, run_file_passes

__all__ = ["train_from_config", "training_columns"]


def training_columns(cfg: Config, features: list[str]) -> dict[str, np.ndarray]:
    """Nominal MC jets (both regions) with physical weights, from the jet tables, in sorted order."""
    tasks = plan_tasks(cfg, "nominal", include_data=False)
    sample = cfg.samples[cfg.nominal_mc]
    slices = sample.slice_map()
    provs = {t.key: read_parquet_provenance(artifact_of(cfg, t, FILE_PASSES[0])) or {} for t in tasks}
    sumw = {
        name: math.fsum(float(provs[t.key].get("sumw", 0.0)) for t in tasks if t.slice == name)
        for name in {t.slice for t in tasks}
    }
    names = sorted({*features, "pt", "event", "parton_label", "weight", "nTracks"} & _available(cfg))
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for t in tasks:
        sl = slices[t.slice]
        scale = sl.scale(cfg.lumi_pb, sumw[t.slice])
        table = read_parquet(artifact_of(cfg, t, FILE_PASSES[0]), columns=names)
        for n in names:
            col = table.column(n).to_numpy()
            parts[n].append(col * scale if n == "weight" else col)
    return {n: np.concatenate(v) if v else np.zeros(0) for n, v in parts.items()}


def constituent_columns(cfg: Config, tagger: ConstituentTagger) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(per-jet columns, constituents float32 [N, k], counts [n]) of the nominal MC jets, in sorted order."""
    import pyarrow as pa

    columns = training_columns(cfg, [])
    tasks = plan_tasks(cfg, "nominal", include_data=False)
    blocks: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    for t in tasks:
        table = read_parquet(artifact_of(cfg, t, FILE_PASSES[0]), columns=list(tagger.features))
        feats, lens = [], None
        for f in tagger.features:
            col = table.column(f)
            arr = col.combine_chunks() if col.num_chunks else pa.array([], type=col.type)
            feats.append(arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32))
            if lens is None:  # every feature list has the jet's constituent count (root2pkl checks it)
                lens = arr.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
        blocks.append(np.column_stack(feats) if feats else np.zeros((0, 0), np.float32))
        counts.append(lens if lens is not None else np.zeros(0, np.int64))
    values = np.concatenate(blocks) if blocks else np.zeros((0, len(tagger.features)), np.float32)
    return columns, values, np.concatenate(counts) if counts else np.zeros(0, np.int64)


def _train_constituents(cfg: Config, name: str, tagger: ConstituentTagger) -> Path:
    from qgcal.training_constituents import train_constituent_tagger

    columns, values, counts = constituent_columns(cfg, tagger)
    log.info("training %s on %d nominal MC jets (%d constituents)", name, len(counts), len(values))
    try:
        result = train_constituent_tagger(
            columns,
            values,
            counts,
            features=tagger.features,
            pt_bins_gev=cfg.pt_bins_gev,
            epochs=tagger.train_epochs,
            hidden=tagger.hidden,
            architecture=tagger.architecture,
            neighbours=tagger.neighbours,
            coordinates=tagger.graph_coordinates,
            seed=0,
        )
    except ValueError as err:
        raise ConfigError(f"taggers.{name}: training failed: {err}") from None
    return _save_trained(cfg, name, tagger, result)


def _save_trained(cfg: Config, name: str, tagger: ModelTagger | ConstituentTagger, result: Any) -> Path:
    """Write a trained model where the config expects it, with its metrics and ROC; log its AUCs."""
    from qgcal.training import write_training_outputs

    path = model_path(cfg, tagger)
    path.parent.mkdir(parents=True, exist_ok=True)
    result.save(path)
    outputs = write_training_outputs(result, path.parent / f"{path.stem}-training", tagger=name)
    for m in result.metrics:
        log.info("%s: %g-%g GeV AUC %.3f (nTracks alone %.3f)", name, m.pt_low, m.pt_high, m.auc_model, m.auc_reference)
    log.info("%s: model %s, ROC %s", name, path, outputs["roc"])
    return path


def _available(cfg: Config) -> set[str]:
    return {"pt", "eta", "event", "parton_label", "weight", *jet_variables(cfg)}


def train_from_config(cfg: Config) -> list[Path]:
    """Train every model tagger; returns the model paths written."""
    from qgcal.training import train_tagger

    taggers = {n: t for n, t in cfg.taggers.items() if isinstance(t, ModelTagger)}
    constituents = {n: t for n, t in cfg.taggers.items() if isinstance(t, ConstituentTagger)}
    if not taggers and not constituents:
        raise ConfigError("taggers: no tagger of kind 'model' or 'constituents' to train; add one (see docs/config.md)")
    written = []
    with output_lock(cfg.output_path):
        runner = make_runner(cfg)
        try:  # only the jet tables: the first pass
            run_file_passes(cfg, plan_tasks(cfg, "nominal", include_data=False), runner, through=0)
        finally:
            runner.shutdown()
        for name, tagger in sorted(taggers.items()):
            columns = training_columns(cfg, list(tagger.features))
            log.info(
                "training %s on %d nominal MC jets (features %s)", name, len(columns["pt"]), ", ".join(tagger.features)
            )
            try:
                result = train_tagger(
                    columns,
                    features=tagger.features,
                    pt_bins_gev=cfg.pt_bins_gev,
                    max_iter=tagger.train_max_iter,
                    seed=0,
                )
            except ValueError as err:
                raise ConfigError(f"taggers.{name}: training failed: {err}") from None
            written.append(_save_trained(cfg, name, tagger, result))
        for name, ctagger in sorted(constituents.items()):
            written.append(_train_constituents(cfg, name, ctagger))
    return written
