"""Branch and weight variations share one read of a (file, tree) and give the same artifacts."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from qgcal.plan import group_by_read, plan_tasks
from qgcal.stages import artifact, root2pkl


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
    outs = [artifact(cfg, t, "root2pkl") for t in group]
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


def test_progress_lines_name_the_tree_and_variations_of_each_read(small_sample, make_config, caplog):
    """Regression: one line per read, not one per variation repeating the same file name."""
    import logging
    import re

    import qgcal

    _, cfg = make_config(small_sample, mutate=lambda d: d.__setitem__("plots", {"enabled": False}))
    systs = ["nominal", "JES_up", "trk_eff", "pdf_1"]
    with caplog.at_level(logging.INFO, logger="qgcal"):
        qgcal.sweep(cfg, systs, executor="serial")
    lines = [r.getMessage() for r in caplog.records if re.match(r"root2pkl: \d+/\d+ reads", r.getMessage())]
    labels = [ln.split(" events/s ")[1] for ln in lines]
    assert len(labels) == len(set(labels)), labels
    data_files = [p.name for p in (small_sample / "sample" / "data").rglob("*.root")]
    mc_nominal = [t for t in plan_tasks(cfg, "nominal", include_data=False)]
    assert len(lines) == len(data_files) + 2 * len(mc_nominal)  # MC: the nominal tree and the JES_up tree
    mc = Path(mc_nominal[0].path).name
    assert f"{mc} [tree nominal: nominal, pdf_1, trk_eff]" in labels
    assert f"{mc} [tree syst_JET_JES__1up: JES_up]" in labels
