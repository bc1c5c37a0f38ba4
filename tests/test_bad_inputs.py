"""Bad input ends with one clear line and a non-zero exit; nothing half-written is left to trust."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qgcal.cli import main


def _run_cli(capsys, cfg_path: Path, *extra: str) -> tuple[int, str]:
    code = main(["-q", "run", "--config", str(cfg_path), "--workers", "1", *extra])
    err = capsys.readouterr().err
    return code, err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, lines
    assert lines[0].startswith("qgcal: error: ")
    return lines[0]


def test_missing_file(small_sample, make_config, capsys):
    def mutate(doc):
        doc["samples"]["data"]["files"] = ["sample/data/data_000.root", "sample/data/no_such_file.root"]

    path, _ = make_config(small_sample, mutate=mutate)
    code, err = _run_cli(capsys, path)
    line = _one_error_line(err)
    assert code != 0
    assert "no_such_file.root" in line and "not found" in line and "samples.data" in line


def test_glob_matching_nothing(small_sample, make_config, capsys):
    def mutate(doc):
        doc["samples"]["data"]["files"] = ["sample/dta/*.root"]

    path, _ = make_config(small_sample, mutate=mutate)
    code, err = _run_cli(capsys, path)
    line = _one_error_line(err)
    assert code != 0 and "sample/dta/*.root" in line and "matches no file" in line


def test_missing_tree_names_file_tree_and_config_key(small_sample, make_config, capsys):
    def mutate(doc):
        doc["variations"]["JES_up"]["tree"] = "syst_JET_JES__1upp"

    path, _ = make_config(small_sample, mutate=mutate)
    code, err = _run_cli(capsys, path, "--syst", "JES_up")
    line = _one_error_line(err)
    assert code != 0
    assert "syst_JET_JES__1upp" in line and "variations.JES_up.tree" in line and ".root" in line
    assert "did you mean 'syst_JET_JES__1up'" in line


def test_missing_branch_names_file_branch_and_config_key(small_sample, make_config, capsys):
    def mutate(doc):
        doc["branches"]["nTracks"] = "jet_nTrack"

    path, _ = make_config(small_sample, mutate=mutate)
    code, err = _run_cli(capsys, path)
    line = _one_error_line(err)
    assert code != 0
    assert "'jet_nTrack'" in line and "branches.nTracks" in line and ".root" in line
    assert "jet_nTracks" in line  # the suggestion


@pytest.mark.parametrize("fraction", [0.3, 0.9, 0.999])
def test_truncated_file(small_sample, make_config, capsys, tmp_path, fraction):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    good = small_sample / "sample" / "data" / "data_000.root"
    shutil.copy(good, data_dir / "data_000.root")
    bad = data_dir / "data_001.root"
    blob = (small_sample / "sample" / "data" / "data_001.root").read_bytes()
    bad.write_bytes(blob[: int(len(blob) * fraction)])

    def mutate(doc):
        doc["samples"]["data"]["files"] = [str(data_dir / "*.root")]

    path, cfg = make_config(small_sample, mutate=mutate)
    code, err = _run_cli(capsys, path)
    line = _one_error_line(err)
    assert code != 0 and "data_001.root" in line and "truncated" in line
    arts = list((cfg.output_path / "nominal" / "root2pkl" / "data").rglob("*"))
    assert not any("data_001" in p.name for p in arts)  # nothing for the bad file
    assert not any(".tmp-" in p.name for p in arts)  # no half-written file left


def test_not_a_root_file_and_empty_file(small_sample, make_config, capsys, tmp_path):
    for name, blob in (("text.root", b"this is not ROOT\n" * 100), ("empty.root", b"")):
        d = tmp_path / name.split(".")[0]
        d.mkdir()
        (d / name).write_bytes(blob)

        def mutate(doc, d=d):
            doc["samples"]["data"]["files"] = [str(d / "*.root")]

        path, _ = make_config(small_sample, mutate=mutate)
        code, err = _run_cli(capsys, path)
        line = _one_error_line(err)
        assert code != 0 and name in line
        assert ("not a ROOT file" in line) if name == "text.root" else ("empty file" in line)


def test_data_with_no_events_after_selection(small_sample, make_config, capsys):
    def mutate(doc):
        doc["selection"]["abs_eta_max"] = 1e-6

    path, _ = make_config(small_sample, mutate=mutate)
    code, err = _run_cli(capsys, path)
    line = _one_error_line(err)
    assert code != 0 and "no events after selection" in line and "'data'" in line


def test_unknown_systematic(small_sample, make_config, capsys):
    path, _ = make_config(small_sample)
    code, err = _run_cli(capsys, path, "--syst", "JES_upp")
    line = _one_error_line(err)
    assert code != 0 and "JES_upp" in line and "did you mean 'JES_up'" in line
