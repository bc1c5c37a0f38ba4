"""Branch and weight variations share one read of a (file, tree) and give the same artifacts."""

from __future__ import annotations

import pyarrow.parquet as pq

from qgcal.plan import artifact_path, plan_tasks
from qgcal.stages import root2pkl
from qgcal.workflows.tasks import group_by_read


def test_one_read_feeds_every_variation_identically(small_sample, make_config, tmp_path, monkeypatch):
    _, cfg = make_config(small_sample)
    systs = ["nominal", "trk_eff", "pdf_1", "pdf_2"]
    tasks = [t for s in systs for t in plan_tasks(cfg, s, include_data=False)]
    group = [t for t in tasks if t.path == tasks[0].path]
    assert {t.variation for t in group} == set(systs)
    assert group_by_read(group) == [group]

    # separately: one read per variation
    separate = {}
    for t in group:
        out = tmp_path / "separate" / f"{t.variation}.parquet"
        root2pkl.run_file(cfg, t, out)
        separate[t.variation] = pq.read_table(out)

    calls = {"n": 0}
    real = root2pkl.read_chunk

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(root2pkl, "read_chunk", counting)
    outs = [artifact_path(cfg.output_path, t, "root2pkl") for t in group]
    root2pkl.run_files(cfg, group, outs)
    n_chunks = calls["n"]
    assert n_chunks >= 1
    calls["n"] = 0
    root2pkl.run_file(cfg, group[0], tmp_path / "again.parquet")
    assert calls["n"] == n_chunks  # the group read each chunk exactly as often as one variation does

    for t, out in zip(group, outs):
        assert pq.read_table(out).equals(separate[t.variation]), t.variation
    # and the variations really differ where they should
    nominal = separate["nominal"]
    assert not separate["pdf_1"].column("weight").equals(nominal.column("weight"))
    assert not separate["trk_eff"].column("nTracks").equals(nominal.column("nTracks"))
