"""``qgcal status``: done / missing / stale per systematic and pass, results and combined."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from test_outputs import _cli, published_small  # noqa: F401  (the finished sweep + combination, shared)

from conftest import write_config
from qgcal.stages import PASS_NAMES as STAGES
from qgcal.workflows.status import collect_status, print_status


def _row(status: Any, name: str) -> Any:
    return next(s for s in status.systematics if s.name == name)


def test_nothing_run_is_all_missing(small_sample, tmp_path):
    _, cfg = write_config(small_sample, tmp_path / "out", name=f"status-{tmp_path.name}")
    st = collect_status(cfg)
    assert [s.name for s in st.systematics] == cfg.variation_names()
    for s in [*st.systematics, st.total]:
        assert s.files > 0
        for stage in STAGES:
            assert s.passes[stage].missing == s.files and s.passes[stage].done == 0
    assert all(s.results == "missing" for s in st.systematics)
    assert st.combined.state == "missing" and not st.complete
    # data (2 files) and nominal MC (8) for nominal; a tree variation adds its own 8 MC files
    assert _row(st, "nominal").files == 10 and _row(st, "JES_up").files == 18
    assert _row(st, "gluon_rw").files == 10  # reweighting reuses nominal's files


def test_finished_sweep_is_done(published_small):  # noqa: F811
    cfg = published_small["cfg"]
    st = collect_status(cfg)
    for s in st.systematics:
        assert s.results == "done", s
        for stage in STAGES:
            assert s.passes[stage].done == s.files, (s.name, stage)
    # every file task once: data + nominal MC + herwig + 8 MC files per tree/branch/weight variation
    n_readers = sum(1 for v in cfg.variations.values() if v.kind in {"tree", "branch", "weight"})
    assert st.total.files == 2 + 8 + 8 + 8 * n_readers
    assert st.combined.state == "done", st.combined
    assert st.complete
    buf = io.StringIO()
    print_status(st, file=buf)
    text = buf.getvalue()
    assert "results/combined: done" in text
    for name in cfg.variation_names():
        assert f"\n{name} " in text


def test_changed_config_is_stale_and_new_variation_missing(published_small, small_sample, capsys):  # noqa: F811
    cfg = published_small["cfg"]

    def edit(doc: dict[str, Any]) -> None:
        doc["plots"] = {"enabled": False}
        doc["selection"]["subleading_pt_min_gev"] = 510  # root2pkl's config hash changes for every file
        doc["variations"]["JES_up_again"] = {"kind": "tree", "tree": "syst_JET_JES__1up", "group": "JES2"}

    path, changed = write_config(small_sample, cfg.output_path, name="status-changed", mutate=edit)
    st = collect_status(changed)
    nominal, again = _row(st, "nominal"), _row(st, "JES_up_again")
    for stage in STAGES:
        assert nominal.passes[stage].stale == nominal.files  # files exist, provenance no longer matches
        assert again.passes[stage].missing == 8 and again.passes[stage].stale == 2 + 8
    assert nominal.results == "stale"
    assert again.results == "missing"
    assert st.combined.state == "stale" and "JES_up_again" in st.combined.reason
    assert _cli(["status", "--config", str(path), "--check"]) == 1
    out = capsys.readouterr().out
    assert "stale" in out and "missing" in out
    assert _cli(["status", "--config", str(path), "--json", "--syst", "JES_up_again"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in doc["systematics"]] == ["JES_up_again"]
    assert doc["systematics"][0]["passes"]["root2pkl"]["missing"] == 8


def test_terminal_gets_a_rich_table(published_small):  # noqa: F811
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    buf = Tty()
    print_status(collect_status(published_small["cfg"], ["nominal"]), file=buf)
    text = buf.getvalue()
    assert "qgcal status" in text and "┏" in text and "results/combined: done" in text


def test_unknown_systematic_is_a_config_error(small_sample, tmp_path):
    from qgcal.errors import ConfigError

    _, cfg = write_config(small_sample, tmp_path / "out", name=f"status-bad-{tmp_path.name}")
    with pytest.raises(ConfigError, match="JES_upp.*did you mean 'JES_up'"):
        collect_status(cfg, ["JES_upp"])
