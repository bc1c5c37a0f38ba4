"""Config validation: key path, what was expected, what was found; unknown keys rejected."""

from __future__ import annotations

import copy

import pytest
import yaml

from conftest import DEMO
from qgcal.config import load_config, parse_config
from qgcal.errors import ConfigError

BASE = yaml.safe_load(DEMO.read_text())


def _err(mutate) -> str:
    doc = copy.deepcopy(BASE)
    mutate(doc)
    with pytest.raises(ConfigError) as info:
        parse_config(doc, source="c.yaml")
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_demo_config_is_valid():
    cfg = parse_config(copy.deepcopy(BASE))
    assert cfg.pt_bins_gev == [500, 600, 800, 1000, 1200, 1500, 2000]
    assert set(cfg.variation_names()) >= {"nominal", "JES_up", "trk_eff", "pdf_1", "pdf_3", "herwig", "gluon_rw"}
    assert cfg.variations["pdf_2"].multiply == ["pdf_weight[2]"] and cfg.variations["pdf_2"].set == "pdf"


def test_unknown_key_suggests_the_closest():
    msg = _err(lambda d: d["selection"].__setitem__("subleading_pt_mim_gev", 400))
    assert "selection.subleading_pt_mim_gev: unknown key" in msg
    assert "did you mean 'subleading_pt_min_gev'" in msg


def test_unknown_key_inside_a_variation():
    msg = _err(lambda d: d["variations"]["JES_up"].__setitem__("treee", "x"))
    assert "variations.JES_up.treee: unknown key" in msg and "'tree'" in msg


def test_wrong_type_names_path_expected_and_found():
    msg = _err(lambda d: d["samples"]["pythia"]["slices"]["JZ4"].__setitem__("xsec_pb", -3))
    assert "samples.pythia.slices.JZ4.xsec_pb" in msg and "greater than 0" in msg and "-3" in msg


def test_non_increasing_bins():
    msg = _err(lambda d: d.__setitem__("pt_bins_gev", [500, 400, 800]))
    assert "pt_bins_gev" in msg and "increase" in msg


def test_working_point_out_of_range():
    msg = _err(lambda d: d.__setitem__("working_points", [0.5, 1.2]))
    assert "working_points" in msg and "1.2" in msg


def test_tagger_variable_must_be_a_branch():
    msg = _err(lambda d: d["taggers"]["ntrk"].__setitem__("variable", "nTrack"))
    assert "taggers.ntrk" in msg and "did you mean 'nTracks'" in msg


def test_unsafe_names_are_rejected():
    msg = _err(lambda d: d["variations"].__setitem__("../../etc", {"kind": "tree", "tree": "x"}))
    assert "../../etc" in msg


def test_bad_branch_expression():
    msg = _err(lambda d: d["variations"]["pdf"].__setitem__("multiply", ["pdf_weight[x]"]))
    assert "pdf_weight[x]" in msg


def test_variation_kind_must_be_known():
    msg = _err(lambda d: d["variations"].__setitem__("odd", {"kind": "magic"}))
    assert "variations.odd" in msg and "magic" in msg


def test_invalid_yaml_reports_line(tmp_path):
    from qgcal.config import load_config

    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nsamples: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+"):
        load_config(p)


def test_atlas_config_is_valid():
    from conftest import REPO

    cfg = parse_config(yaml.safe_load((REPO / "configs" / "atlas.yaml").read_text()), source="atlas.yaml")
    assert cfg.units.energy == "MeV" and cfg.energy_scale() == 1e-3
    assert set(cfg.samples["pythia"].slices) == {f"JZ{i}" for i in range(3, 9)}


def test_config_reference_is_current():
    from conftest import REPO
    from qgcal.config_docs import render_markdown

    assert (REPO / "docs" / "config.md").read_text() == render_markdown(), (
        "docs/config.md is stale: python -m qgcal.config_docs > docs/config.md"
    )


def test_pair_must_point_back():
    def mutate(d):
        d["variations"]["JES_down"]["pair"] = "JER_up"

    msg = _err(mutate)
    assert "variations.JES_up.pair" in msg or "variations.JES_down.pair" in msg


def test_sample_variation_needs_an_mc_sample():
    msg = _err(lambda d: d["variations"]["herwig"].__setitem__("sample", "herwg"))
    assert "variations.herwig.sample" in msg and "did you mean 'herwig'" in msg


def test_command_line_settings_are_applied_once_and_validated():
    import argparse

    from qgcal.cli.options import config_overrides

    cfg = load_config(DEMO)
    args = argparse.Namespace(
        workers=3, executor=None, backend="triton", device=None, triton_url="[::1]:9001", skip_bad_files=None
    )
    got = cfg.with_overrides(config_overrides(args))
    assert (got.executor.workers, got.inference.backend, got.inference.triton.url) == (3, "triton", "[::1]:9001")
    assert got.executor.kind == cfg.executor.kind and got.inference.device == cfg.inference.device  # None keeps
    assert cfg.executor.workers != 3 or cfg.inference.backend != "triton"  # the original is untouched
    with pytest.raises(ConfigError, match=r"^command-line option: executor\.workers: Input should be greater"):
        cfg.with_overrides({"executor.workers": 0})
    with pytest.raises(ConfigError, match=r"executor\.wrkers: no such config setting \(did you mean 'workers'"):
        cfg.with_overrides({"executor.wrkers": 2})
