"""The passes after root2pkl take the variations of one (file, tree) together, sharing what their
jets share (pkl2predpkl: a model's inference; predpkl2hist: bins and Poisson draws), and every
artifact is the same bytes as when made alone."""

from __future__ import annotations

import pyarrow.parquet as pq

import qgcal
from qgcal.plan import fused_jobs, plan_tasks
from qgcal.stages import artifact, predpkl2hist
from qgcal.stages.predpkl2hist import HistJob, carry_for


def _config(small_sample, make_config):
    def mutate(doc):
        doc["bootstrap"] = 4
        doc["plots"] = {"enabled": False}

    return make_config(small_sample, mutate=mutate)[1]


def test_variations_filled_together_give_the_artifacts_of_one_at_a_time(
    small_sample, make_config, tmp_path, monkeypatch
):
    cfg = _config(small_sample, make_config)
    systs = ["nominal", "pdf_1", "pdf_2", "trk_eff"]
    calls = {"jets": 0, "tagger": 0}
    real_jets, real_tagger = predpkl2hist._jets, predpkl2hist._tagger_jets

    def jets(*args):
        calls["jets"] += 1
        return real_jets(*args)

    def tagger(*args):
        calls["tagger"] += 1
        return real_tagger(*args)

    monkeypatch.setattr(predpkl2hist, "_jets", jets)
    monkeypatch.setattr(predpkl2hist, "_tagger_jets", tagger)
    qgcal.sweep(cfg, systs, executor="serial")

    mc = plan_tasks(cfg, "nominal", include_data=False)
    group = [t for s in systs for t in plan_tasks(cfg, s, include_data=False) if t.path == mc[0].path]
    assert [t.variation for t in group] == systs
    assert fused_jobs(group) == [group]
    data = plan_tasks(cfg, "nominal", include_mc=False)
    every = sorted({t for s in systs for t in plan_tasks(cfg, s)}, key=lambda t: (t.key, t.variation))
    row_groups = sum(pq.ParquetFile(artifact(cfg, t, "pkl2predpkl")).num_row_groups for t in mc + data)
    assert len(fused_jobs(every)) == len(mc) + len(data)  # one job per file
    # per row group: the jets derived once for all four variations, each tagger once, and
    # trk_eff's track-count tagger (its values differ) once more
    assert calls["jets"] == row_groups
    n_mc_groups = sum(pq.ParquetFile(artifact(cfg, t, "pkl2predpkl")).num_row_groups for t in mc)
    assert calls["tagger"] == row_groups * len(cfg.taggers) + n_mc_groups

    fused = {t.variation: artifact(cfg, t, "predpkl2hist").read_bytes() for t in group}
    for t in group:
        up = artifact(cfg, t, "pkl2predpkl")
        alone = tmp_path / f"{t.variation}.npz"
        predpkl2hist.run_file(cfg, up, alone, is_data=False, carry=carry_for(t, up))
        assert alone.read_bytes() == fused[t.variation], t.variation
    assert len(set(fused.values())) == len(systs)  # and the variations do differ


def test_jets_that_differ_are_not_shared(small_sample, make_config, tmp_path):
    """A variation whose selection kept other jets (a weight cut), in row groups of another size,
    filled beside nominal: each artifact is still its own, the same bytes as filled alone."""
    import numpy as np
    import pyarrow as pa

    cfg = _config(small_sample, make_config)
    qgcal.sweep(cfg, ["nominal", "pdf_1"], executor="serial")
    t = plan_tasks(cfg, "nominal", include_data=False)[0]
    up = artifact(cfg, t, "pkl2predpkl")
    pdf = artifact(cfg, plan_tasks(cfg, "pdf_1", include_data=False)[0], "pkl2predpkl")
    table = pq.read_table(up)
    event = table.column("event").to_numpy()
    kept = table.filter(pa.array(event % 7 != 3))  # both jets of an event go together
    cut = tmp_path / "cut.parquet"
    pq.write_table(kept, cut, row_group_size=max(1, kept.num_rows // 3 + 1))
    assert pq.ParquetFile(cut).num_row_groups != pq.ParquetFile(up).num_row_groups or kept.num_rows < table.num_rows

    # and one with the same rows and row groups, its jet pT shifted (as by a JES variation)
    shifted = tmp_path / "shifted.parquet"
    pt = table.column("pt").to_numpy() * 1.05
    pq.write_table(
        table.set_column(table.schema.get_field_index("pt"), "pt", pa.array(pt, type=table.schema.field("pt").type)),
        shifted,
        row_group_size=pq.ParquetFile(up).metadata.row_group(0).num_rows,
    )
    assert pq.ParquetFile(shifted).num_row_groups == pq.ParquetFile(up).num_row_groups

    carry = carry_for(t, up)
    jobs = [
        HistJob(up, tmp_path / "fused-nominal.npz", False, carry),
        HistJob(cut, tmp_path / "fused-cut.npz", False, carry),
        HistJob(pdf, tmp_path / "fused-pdf.npz", False, carry),
        HistJob(shifted, tmp_path / "fused-shifted.npz", False, carry),
    ]
    jets = predpkl2hist.run_files(cfg, jobs)
    assert jets == [table.num_rows, kept.num_rows, table.num_rows, table.num_rows]
    for job in jobs:
        alone = job.out.with_name(job.out.name.replace("fused", "alone"))
        predpkl2hist.run_file(cfg, job.upstream, alone, is_data=False, carry=carry)
        assert alone.read_bytes() == job.out.read_bytes(), job.out.name
    nominal, cut_hists, _, shifted_hists = (np.load(j.out) for j in jobs)
    for other in (cut_hists, shifted_hists):
        assert any(not np.array_equal(nominal[k], other[k]) for k in nominal.files if k.endswith(".values"))


def test_a_model_scores_the_jets_of_a_files_variations_once(small_sample, make_config, tmp_path, monkeypatch):
    """pkl2predpkl: one inference per distinct input of a file, shared by its weight variations;
    a branch variation that changes a feature (trk_eff: nTracks) is scored on its own. Each
    artifact is the same bytes as when scored alone."""
    from qgcal.stages import pkl2predpkl

    def mutate(doc):
        doc["taggers"] = {k: v for k, v in doc["taggers"].items() if k in {"ntrk", "gbdt"}}
        doc["taggers"]["gbdt"]["train_max_iter"] = 10
        doc["plots"] = {"enabled": False}

    _, cfg = make_config(small_sample, mutate=mutate, model_taggers=True)
    qgcal.train(cfg, workers=1)
    calls = {"predict": 0}
    real_scorers = pkl2predpkl._scorers

    class Counting:
        def __init__(self, scorer):
            self.scorer = scorer

        def predict(self, x):
            calls["predict"] += 1
            return self.scorer.predict(x)

        def provenance(self):
            return self.scorer.provenance()

        def close(self):
            self.scorer.close()

    monkeypatch.setattr(
        pkl2predpkl, "_scorers", lambda c: {n: (Counting(s), own) for n, (s, own) in real_scorers(c).items()}
    )
    systs = ["nominal", "pdf_1", "pdf_2", "trk_eff"]
    qgcal.sweep(cfg, systs, executor="serial")

    mc = plan_tasks(cfg, "nominal", include_data=False)
    data = plan_tasks(cfg, "nominal", include_mc=False)
    groups = {t: pq.ParquetFile(artifact(cfg, t, "root2pkl")).num_row_groups for t in mc + data}
    # data: once per row group; MC: nominal's jets once for nominal, pdf_1 and pdf_2, trk_eff's once
    assert calls["predict"] == sum(groups[t] for t in data) + 2 * sum(groups[t] for t in mc)

    group = [t for s in systs for t in plan_tasks(cfg, s, include_data=False) if t.path == mc[0].path]
    fused = {t.variation: artifact(cfg, t, "pkl2predpkl").read_bytes() for t in group}
    for t in group:
        alone = tmp_path / f"{t.variation}.parquet"
        pkl2predpkl.run_file(cfg, artifact(cfg, t, "root2pkl"), alone)
        assert alone.read_bytes() == fused[t.variation], t.variation
    scores = {v: pq.read_table(artifact(cfg, t, "pkl2predpkl")).column("tagger.gbdt") for v, t in zip(systs, group)}
    assert scores["pdf_1"].equals(scores["nominal"]) and not scores["trk_eff"].equals(scores["nominal"])
