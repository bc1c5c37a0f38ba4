"""Byte-identical results for any worker count, executor, and file order."""

from __future__ import annotations

import glob
from pathlib import Path

import qgcal


def _outputs(cfg) -> dict[str, bytes]:
    out = cfg.output_path
    files = {
        "sf": out / "results" / "nominal" / "scale_factors.json",
        "cuts": out / "results" / "nominal" / "cuts.json",
        "extraction": out / "results" / "nominal" / "extraction.json",
        "mc": out / "nominal" / "final_reweighting" / "merged_pythia.npz",
        "data": out / "nominal" / "final_reweighting" / "merged_data.npz",
    }
    return {k: p.read_bytes() for k, p in files.items()}


def _shuffled(base: Path):
    def mutate(doc):
        for sample in doc["samples"].values():
            if "files" in sample:
                sample["files"] = sorted(glob.glob(str(base / sample["files"][0])), reverse=True)
            for sl in (sample.get("slices") or {}).values():
                sl["files"] = sorted(glob.glob(str(base / sl["files"][0])), reverse=True)

    return mutate


def test_workers_executors_and_file_order_give_identical_bytes(small_sample, make_config):
    _, c1 = make_config(small_sample)
    qgcal.run(c1, "nominal", workers=1)
    _, c2 = make_config(small_sample)
    qgcal.run(c2, "nominal", workers=2)
    _, c3 = make_config(small_sample, mutate=_shuffled(small_sample))
    qgcal.run(c3, "nominal", workers=2, executor="process")
    a, b, c = _outputs(c1), _outputs(c2), _outputs(c3)
    assert a == b
    assert a == c


def test_chunk_size_does_not_change_results(small_sample, make_config):
    _, big = make_config(small_sample)
    qgcal.run(big, "nominal", workers=1)

    def tiny_chunks(doc):
        doc["reading"]["step_size"] = 1000  # entries; many chunks per file

    _, small = make_config(small_sample, mutate=tiny_chunks)
    qgcal.run(small, "nominal", workers=1)
    assert _outputs(big)["sf"] == _outputs(small)["sf"]
    assert _outputs(big)["mc"] == _outputs(small)["mc"]
