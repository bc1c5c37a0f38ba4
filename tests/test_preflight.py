"""Input that used to be accepted and then be quietly wrong, and states the tool misreported (issue 15).

Each test states the expected behaviour from the issue, with expected values written out by
hand (never computed by the code under test):

* ``qgcal validate`` (and ``run`` first, with the same exit code) catches, before any event is
  read: a file in two slices or twice in one, duplicate YAML keys, lax scalar types, missing or
  mismatched models, sum-of-weights histograms and trees that no file has, missing inputs;
* artifact identity survives ``cp -a`` of config + inputs + output; combined results are stale
  when a systematic is; ``combine`` refuses stale input (``--allow-stale`` records it); orphans
  are listed and cleaned;
* events lost are a number or "unknown"; OS errors name the file; broken pipes and Ctrl-C end
  quietly with 141 / 130; artifacts honour the umask; the test extra pulls no torch.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tomllib
import weakref
from pathlib import Path
from typing import Any

import pytest
import yaml

import qgcal
from conftest import REPO, write_config
from qgcal.cli import main
from qgcal.config import load_config
from qgcal.errors import ConfigError

JZ4 = "sample/mc/pythia/JZ4/*.root"


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _no_events_read(out: Path) -> bool:
    """Nothing of root2pkl exists: the check came before any event was read."""
    return not any(out.rglob("*.parquet"))


def _config(small_sample: Path, tmp_path: Path, mutate: Any, name: str = "c") -> tuple[Path, Path]:
    def edit(doc: dict[str, Any]) -> None:
        doc["variations"] = {k: doc["variations"][k] for k in ("JES_up", "JES_down")}
        doc["plots"] = {"enabled": False}
        mutate(doc)

    out = tmp_path / "out"
    path, _ = write_config(small_sample, out, name=f"{name}-{tmp_path.name}", mutate=edit)
    return path, out


def _both_commands(path: Path) -> list[tuple[int, str]]:
    """(exit code, last stderr line) of validate and of run."""
    res = []
    for argv in (["validate", str(path)], ["-q", "run", "--config", str(path), "--workers", "1"]):
        code, _, err = _cli(argv)
        res.append((code, (err.strip().splitlines() or [""])[-1]))
    return res


# ----------------------------------------------------------------------------- double counting


def test_a_file_in_two_slices_is_a_config_error_naming_both(small_sample, tmp_path):
    def mutate(doc: dict[str, Any]) -> None:
        doc["samples"]["pythia"]["slices"]["JZ5"]["files"].append(JZ4)

    path, out = _config(small_sample, tmp_path, mutate)
    for code, line in _both_commands(path):
        assert code == 2, line
        assert "pythia_JZ4_000.root" in line
        assert "samples.pythia.slices.JZ4" in line and "samples.pythia.slices.JZ5" in line
        assert "counted twice" in line
    assert _no_events_read(out)


def test_a_file_in_two_samples_is_a_config_error(small_sample, tmp_path):
    def mutate(doc: dict[str, Any]) -> None:
        doc["samples"]["herwig"]["slices"]["JZ4"]["files"].append(JZ4)

    path, _ = _config(small_sample, tmp_path, mutate)
    code, line = _both_commands(path)[0]
    assert code == 2 and "samples.herwig.slices.JZ4" in line and "samples.pythia.slices.JZ4" in line


def test_a_file_twice_in_one_slice_is_a_config_error_before_the_run(small_sample, tmp_path):
    def mutate(doc: dict[str, Any]) -> None:
        files = doc["samples"]["pythia"]["slices"]["JZ4"]["files"]
        files.append("sample/mc/pythia/JZ4/pythia_JZ4_000.root")  # also matched by the glob

    path, out = _config(small_sample, tmp_path, mutate)
    for code, line in _both_commands(path):
        assert code == 2, line
        assert "listed twice by samples.pythia.slices.JZ4" in line
        assert "share a key" not in line
    assert _no_events_read(out)


# ----------------------------------------------------------------------------- YAML and types


def test_duplicate_yaml_keys_are_an_error_with_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: x\nlumi_pb: 20.0\nlumi_pb: 2000.0\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'lumi_pb' on lines 2 and 3"):
        load_config(path)
    nested = tmp_path / "nested.yaml"
    nested.write_text("selection:\n  abs_eta_max: 2.1\n  require_trigger: true\n  abs_eta_max: 2.5\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'abs_eta_max' on lines 2 and 4"):
        load_config(nested)


def _with(small_sample: Path, tmp_path: Path, text_edit: tuple[str, str]) -> Path:
    path, _ = write_config(small_sample, tmp_path / "out", name=f"t-{tmp_path.name}")
    text = path.read_text()
    assert text_edit[0] in text, text_edit
    path.write_text(text.replace(text_edit[0], text_edit[1], 1))
    return path


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        ((r"lumi_pb: ", "lumi_pb: true #"), "lumi_pb"),
        (("require_trigger: true", "require_trigger: 'yes'"), "selection.require_trigger"),
        (("require_trigger: true", "require_trigger: 1"), "selection.require_trigger"),
        (("xsec_pb: ", "xsec_pb: true #"), "xsec_pb"),
    ],
)
def test_strict_scalars(small_sample, tmp_path, edit, key):
    path = _with(small_sample, tmp_path, edit)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert key in str(err.value)


def test_bool_as_bin_edge_is_rejected_and_int_as_float_is_kept(small_sample, tmp_path):
    def mutate(doc: dict[str, Any]) -> None:
        tagger = next(iter(doc["taggers"].values()))
        tagger["bins"] = {"n": 10, "low": 0, "high": True}

    with pytest.raises(ConfigError, match=r"bins\.high"):
        write_config(small_sample, tmp_path / "o", name=f"b-{tmp_path.name}", mutate=mutate)
    _, cfg = write_config(
        small_sample, tmp_path / "o", name=f"i-{tmp_path.name}", mutate=lambda d: d.update(lumi_pb=20)
    )
    assert cfg.lumi_pb == 20.0 and isinstance(cfg.lumi_pb, float)


# ----------------------------------------------------------------------------- models, trees, histograms


def _model_tagger(doc: dict[str, Any], model: str, features: list[str]) -> None:
    doc["taggers"]["bdt"] = {
        "kind": "model",
        "model": model,
        "features": features,
        "bins": {"n": 20, "low": -5, "high": 5},
    }


def test_missing_model_is_found_by_validate_and_before_root2pkl(small_sample, tmp_path):
    path, out = _config(small_sample, tmp_path, lambda d: _model_tagger(d, "nowhere.skops", ["pt", "nTracks"]))
    for code, line in _both_commands(path):
        assert code == 2, line
        assert "taggers.bdt.model" in line and "nowhere.skops" in line and "qgcal train" in line
    assert _no_events_read(out)


def test_model_features_must_match_the_model(small_sample, tmp_path, tagger):
    # the toy model was trained on pt, nTracks, trackWidth, trackC1 (tests/triton_fixture.py)
    swapped = ["nTracks", "pt", "trackWidth", "trackC1"]
    path, out = _config(small_sample, tmp_path, lambda d: _model_tagger(d, str(tagger.path), swapped))
    for code, line in _both_commands(path):
        assert code == 2, line
        assert "taggers.bdt.features" in line and "'trackC1'" in line
    assert _no_events_read(out)


def test_a_duplicated_model_feature_is_a_config_error(small_sample, tmp_path):
    with pytest.raises(ConfigError, match=r"taggers\.bdt\.features: .*'pt' is listed twice"):
        _config(small_sample, tmp_path, lambda d: _model_tagger(d, "m.skops", ["pt", "nTracks", "pt"]))


def test_unknown_sum_of_weights_histogram_is_found_before_any_event(small_sample, tmp_path):
    def mutate(doc: dict[str, Any]) -> None:
        doc["samples"]["pythia"]["sum_of_weights"]["histogram"] = "histoEventCnt"

    path, out = _config(small_sample, tmp_path, mutate)
    for code, line in _both_commands(path):
        assert code == 2, line
        assert "'histoEventCnt'" in line and "samples.pythia.sum_of_weights" in line and "histoEventCount" in line
    assert _no_events_read(out)


def test_unknown_variation_tree_is_found_before_any_event(small_sample, tmp_path):
    path, out = _config(small_sample, tmp_path, lambda d: d["variations"]["JES_up"].update(tree="JES_typo"))
    code, _, err = _cli(["validate", str(path)])
    assert code == 2 and "'JES_typo'" in err and "variations.JES_up.tree" in err
    code, _, err = _cli(["-q", "run", "--config", str(path), "--syst", "JES_up", "--workers", "1"])
    assert code == 2 and "'JES_typo'" in err
    assert _no_events_read(out)


def test_missing_input_has_the_same_exit_code_in_validate_and_run(small_sample, tmp_path):
    def mutate(doc: dict[str, Any]) -> None:
        doc["samples"]["data"]["files"] = ["sample/data/data_000.root", "sample/data/gone.root"]

    path, out = _config(small_sample, tmp_path, mutate)
    results = _both_commands(path)
    assert [code for code, _ in results] == [2, 2]
    assert all("gone.root" in line and "not found" in line for _, line in results)
    assert _no_events_read(out)


def test_validate_names_a_bad_file_and_run_leaves_it_to_the_bad_file_policy(small_sample, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_sample / "sample" / "data", data)
    bad = data / "data_001.root"
    blob = bad.read_bytes()
    bad.write_bytes(blob[: len(blob) // 2])

    def mutate(doc: dict[str, Any]) -> None:
        doc["samples"]["data"]["files"] = [str(data / "*.root")]

    path, _ = _config(small_sample, tmp_path, mutate)
    code, _, err = _cli(["validate", str(path)])
    assert code == 1 and str(bad) in err and "truncated" in err  # a bad file, not a config error
    doc = yaml.safe_load(path.read_text())
    doc["reading"]["skip_bad_files"] = True
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out, err = _cli(["validate", str(path)])
    assert code == 0 and "valid" in out and str(bad) in err and "will skip it" in err


_FORKED_CHECKS = """
import json, os, sys
import qgcal.workflows.preflight as pf
from qgcal.config import load_config
from qgcal.errors import ConfigError

path, typo_path, pids = sys.argv[1:]
check = pf._check_file


def recording(*args):
    with open(pids, "a") as fh:
        fh.write(f"{os.getpid()}\\n")
    return check(*args)


pf._check_file = recording
out = {"me": os.getpid()}
for per_worker in (10**6, 1):  # serial, then forked (2 workers)
    pf.FILES_PER_WORKER = per_worker
    open(pids, "w").close()
    report = pf.preflight(load_config(path).with_overrides({"executor.workers": 2}))
    try:
        pf.preflight(load_config(typo_path).with_overrides({"executor.workers": 2}))
        error = None
    except ConfigError as err:
        error = str(err)
    readers = sorted({int(x) for x in open(pids).read().split()})
    out[str(per_worker)] = [report.tasks, report.files, report.unreadable, error, readers]
print(json.dumps(out))
"""


def test_header_checks_over_forked_workers_report_what_a_serial_check_does(small_sample, tmp_path):
    """preflight reads files' headers over executor.workers forked processes: the same report,
    the same first error, whichever process read which file. In a fresh interpreter: a pytest
    process may hold other tests' threads, and then nothing forks (qgcal.executors.can_fork)."""
    data = tmp_path / "data"
    shutil.copytree(small_sample / "sample" / "data", data)
    bad = data / "data_001.root"
    bad.write_bytes(bad.read_bytes()[:4000])

    def mutate(doc: dict[str, Any]) -> None:
        doc["samples"]["data"]["files"] = [str(data / "*.root")]
        doc["reading"]["skip_bad_files"] = True

    def with_typo(doc: dict[str, Any]) -> None:
        mutate(doc)
        doc["variations"]["JES_up"]["tree"] = "JES_typo"

    path, _ = _config(small_sample, tmp_path, mutate)
    typo_path, _ = _config(small_sample, tmp_path, with_typo, name="typo")
    script = tmp_path / "forked_checks.py"
    script.write_text(_FORKED_CHECKS)
    proc = subprocess.run(
        [sys.executable, str(script), str(path), str(typo_path), str(tmp_path / "pids")],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    serial, forked = got[str(10**6)], got["1"]
    assert serial[4] == [got["me"]]  # serial: read here
    assert got["me"] not in forked[4] and len(forked[4]) >= 2  # forked: by other processes (a pool per call)
    assert forked[:4] == serial[:4]
    _, files, unreadable, typo_error = forked[:4]
    assert files >= 8  # at least one file in each of the 4 x 2 chunks
    assert len(unreadable) == 1 and str(bad) in unreadable[0]
    assert "'JES_typo'" in typo_error and "variations.JES_up.tree" in typo_error


def test_the_good_config_validates(small_sample, tmp_path):
    path, _ = _config(small_sample, tmp_path, lambda d: None)
    code, out, err = _cli(["validate", str(path)])
    assert code == 0, err
    assert "valid" in out


# ----------------------------------------------------------------------------- status, combine, orphans


def _project(small_sample: Path, tmp_path: Path) -> Path:
    """config + inputs + output in one folder, the output relative to the config."""
    proj = tmp_path / "proj"
    shutil.copytree(small_sample / "sample", proj / "sample")  # copy2: times kept
    doc = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    doc["taggers"] = {k: v for k, v in doc["taggers"].items() if v["kind"] != "model"}
    doc["lumi_pb"] = json.loads((proj / "sample" / "truth.json").read_text())["luminosity_pb"]
    doc["output"] = "out"
    doc["variations"] = {k: doc["variations"][k] for k in ("JES_up", "JES_down")}
    doc["plots"] = {"enabled": False}
    (proj / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return proj


def test_status_is_right_after_cp_a(small_sample, tmp_path):
    proj = _project(small_sample, tmp_path)
    cfg = load_config(proj / "config.yaml")
    qgcal.run(cfg, "nominal", workers=1)
    assert qgcal.status(cfg, ["nominal"]).systematics[0].complete
    subprocess.run(["cp", "-a", str(proj), str(tmp_path / "copy")], check=True)
    copy = load_config(tmp_path / "copy" / "config.yaml")
    row = qgcal.status(copy, ["nominal"]).systematics[0]
    assert row.results == "done"
    for counts in row.passes.values():
        assert counts.missing == 0 and counts.stale == 0 and counts.done == row.files
    res = qgcal.run(copy, "nominal", workers=1)  # nothing is redone on the copy
    assert sum(res.files_processed.values()) == 0


def test_stale_systematic_makes_combined_stale_and_combine_refuses(small_sample, tmp_path, caplog):
    proj = _project(small_sample, tmp_path)
    path = proj / "config.yaml"
    assert _cli(["-q", "sweep", "--config", str(path), "--workers", "2"])[0] == 0
    assert _cli(["-q", "combine", "--config", str(path), "--no-plots"])[0] == 0
    assert qgcal.status(load_config(path)).combined.state == "done"

    # JES_up now reads another tree: its per-file work and results are stale
    doc = yaml.safe_load(path.read_text())
    doc["variations"]["JES_up"]["tree"] = doc["variations"]["JES_down"]["tree"]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    cfg = load_config(path)
    st = qgcal.status(cfg)
    assert {s.name: s.results for s in st.systematics} == {"nominal": "done", "JES_up": "stale", "JES_down": "done"}
    assert st.combined.state == "stale" and "JES_up" in st.combined.reason

    before = (proj / "out" / "results" / "combined" / "scale_factors.json").read_bytes()
    code, _, err = _cli(["-q", "combine", "--config", str(path), "--no-plots"])
    assert code == 1 and "JES_up" in err and "stale" in err and "--allow-stale" in err
    assert (proj / "out" / "results" / "combined" / "scale_factors.json").read_bytes() == before

    code, _, err = _cli(["combine", "--config", str(path), "--no-plots", "--allow-stale"])
    assert code == 0, err
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("stale" in m and "JES_up" in m for m in warned), warned
    record = json.loads((proj / "out" / "results" / "combined" / "stale_inputs.json").read_text())
    assert record["stale_inputs"] == ["JES_up"]
    assert qgcal.status(cfg).combined.state == "stale"

    # orphans: drop JES_down and one data file
    doc["variations"].pop("JES_down")
    doc["variations"]["JES_up"].pop("pair", None)
    doc["variations"]["JES_up"]["direction"] = "single"
    doc["samples"]["data"]["files"] = ["sample/data/data_000.root"]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out, _ = _cli(["status", "--config", str(path), "--orphans", "--json"])
    assert code == 0
    listed = {str(Path(o["path"]).relative_to(proj / "out")) for o in json.loads(out)["orphans"]}
    assert "JES_down" in listed and "results/JES_down" in listed
    data_001 = {p for p in listed if "data_001" in p}
    assert {p.split("/")[1] for p in data_001} == {"root2pkl", "pkl2predpkl", "predpkl2hist"}
    assert not any("data_000" in p or p.startswith("nominal/final_reweighting") for p in listed)

    code, out, _ = _cli(["clean", "--config", str(path)])  # a dry run
    assert code == 0 and "would remove" in out
    assert (proj / "out" / "JES_down").is_dir()
    code, out, _ = _cli(["clean", "--config", str(path), "--delete"])
    assert code == 0 and "removed" in out
    assert not (proj / "out" / "JES_down").exists() and not (proj / "out" / "results" / "JES_down").exists()
    code, out, _ = _cli(["status", "--config", str(path), "--orphans", "--json"])
    assert json.loads(out)["orphans"] == []
    assert (proj / "out" / "results" / "combined" / "scale_factors.json").is_file()


# ----------------------------------------------------------------------------- events lost, OS errors


def test_a_truncated_file_has_an_unknown_event_count(small_sample, tmp_path):
    from qgcal.workflows.runner import _events_in

    good = small_sample / "sample" / "mc" / "pythia" / "JZ4" / "pythia_JZ4_000.root"
    blob = good.read_bytes()
    bad = tmp_path / "truncated30.root"
    bad.write_bytes(blob[: int(len(blob) * 0.3)])
    assert _events_in(str(bad), "nominal") is None  # never 0, never a guess
    assert _events_in(str(good), "nominal") is not None


def test_a_skipped_mc_file_of_unknown_size_is_unknown_in_the_log_the_json_and_the_summary(
    small_sample, tmp_path, caplog
):
    proj = _project(small_sample, tmp_path)
    bad = proj / "sample" / "mc" / "pythia" / "JZ5" / "pythia_JZ5_000.root"
    blob = bad.read_bytes()
    bad.write_bytes(blob[: int(len(blob) * 0.3)])
    code, out, err = _cli(["-q", "run", "--config", str(proj / "config.yaml"), "--skip-bad-files", "--workers", "1"])
    assert code == 0, err
    meta = json.loads((proj / "out" / "results" / "nominal" / "scale_factors.json").read_text())["metadata"]
    assert meta["events_lost"] == "unknown"
    assert meta["events_lost_known"] == 0
    assert meta["events_lost_unknown_files"] == [str(bad)]
    summary = [ln for ln in out.splitlines() if "skipped as bad" in ln]
    assert summary == [
        f"WARNING: 1 input file(s) skipped as bad, unknown events lost (1 file(s) could not be counted): {bad}"
    ]
    logged = [r.getMessage() for r in caplog.records if "skipped as bad" in r.getMessage()]
    assert logged and all("unknown events lost" in m and "0 events" not in m for m in logged), logged


def test_events_lost_are_a_number_or_unknown():
    from qgcal.cli.options import skipped_line
    from qgcal.contract import events_lost

    known = [{"file": "a.root", "events_lost": 10}, {"file": "a.root", "events_lost": 10}]
    assert events_lost(known).total == 10
    assert skipped_line(known) == "WARNING: 1 input file(s) skipped as bad, 10 events lost: a.root"
    only_unknown = [{"file": "b.root", "events_lost": None}]
    assert events_lost(only_unknown).total == "unknown"
    line = skipped_line(only_unknown)
    assert "0 events" not in line and "0+" not in line
    assert (
        line == "WARNING: 1 input file(s) skipped as bad, unknown events lost (1 file(s) could not be counted): b.root"
    )
    mixed = [*known, *only_unknown]
    assert events_lost(mixed).total == "unknown"
    assert "unknown events lost (at least 10; 1 file(s) could not be counted)" in skipped_line(mixed)


def test_a_full_disk_names_the_file(tmp_path, monkeypatch):
    from qgcal import artifacts

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(artifacts.os, "fsync", full)
    target = tmp_path / "results" / "x.json"
    with pytest.raises(OSError) as err:
        artifacts.write_json_atomic(target, {"a": 1})
    assert err.value.filename == str(target) and err.value.errno == errno.ENOSPC
    assert list(target.parent.iterdir()) == []  # no temporary file left


def test_the_cli_names_the_file_of_an_os_error(small_sample, tmp_path, monkeypatch):
    from qgcal import artifacts

    path, out = _config(small_sample, tmp_path, lambda d: None)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(artifacts.os, "fsync", full)
    code, _, err = _cli(["-q", "run", "--config", str(path), "--workers", "1"])
    assert code == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"qgcal: error: {out}") and "No space left on device" in line


# ----------------------------------------------------------------------------- pipes, Ctrl-C


def test_a_closed_pipe_ends_quietly(small_sample, tmp_path):
    path, _ = _config(small_sample, tmp_path, lambda d: None)
    read, write = os.pipe()
    os.close(read)  # the reader ('head') has gone
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "qgcal", "status", "--config", str(path), "--json"],
            stdout=write,
            stderr=subprocess.PIPE,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write)
    assert proc.returncode == 141
    assert proc.stderr.decode() == ""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the point of the test
def test_ctrl_c_is_never_lost(monkeypatch):
    """A KeyboardInterrupt raised where Python ignores it (a weakref callback) still ends with 130."""
    import qgcal.cli.status as status_cmd

    class Thing:
        pass

    def interrupted_in_a_callback(args: Any) -> int:
        thing = Thing()
        ref = weakref.ref(thing, lambda r: os.kill(os.getpid(), signal.SIGINT))
        del thing  # the callback runs here and the interrupt is "ignored" by Python
        assert ref() is None
        return 0

    real = status_cmd.register

    def register(sub: Any) -> None:
        real(sub)
        sub.choices["status"].set_defaults(func=interrupted_in_a_callback)

    monkeypatch.setattr(status_cmd, "register", register)
    code, _, err = _cli(["status", "--config", "x.yaml"])
    assert code == 130 and "interrupted" in err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


# ----------------------------------------------------------------------------- umask, installs


@pytest.mark.parametrize(("umask", "mode"), [(0o002, 0o664), (0o022, 0o644), (0o077, 0o600)])
def test_artifacts_honour_the_umask(tmp_path, umask, mode):
    from qgcal.artifacts import write_json_atomic

    old = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == mode


def test_the_test_extra_pulls_no_torch_and_ci_installs_the_cpu_build():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert not [r for r in extras["test"] if r.lower().startswith("torch")]
    assert any(r.startswith("torch") for r in extras["gpu"])
    ci = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    test_cmd = "python -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && python -m pytest"
    assert test_cmd in readme and test_cmd in ci
    assert ci.index("pip install -q torch==2.13.0") < ci.index(test_cmd)
    assert "CPU" in readme and "torch" in readme


def _constituent_tagger(doc: dict[str, Any], model: str, architecture: str = "deepsets") -> None:
    doc["branches"].update({"nConstituents": "jet_nConstituents", "constit_ptFrac": "constit_ptFrac"})
    doc["taggers"]["cons"] = {
        "kind": "constituents",
        "model": model,
        "counts": "nConstituents",
        "features": ["constit_ptFrac"],
        "architecture": architecture,
        "bins": {"n": 20, "low": -5, "high": 5},
    }
    if architecture == "knn":
        doc["taggers"]["cons"]["graph_coordinates"] = ["constit_ptFrac"]


def test_missing_constituent_model_is_found_by_validate_and_before_root2pkl(small_sample, tmp_path):
    path, out = _config(small_sample, tmp_path, lambda d: _constituent_tagger(d, "nowhere.safetensors"))
    for code, line in _both_commands(path):
        assert code == 2, line
        assert "taggers.cons.model" in line and "nowhere.safetensors" in line and "qgcal train" in line
    assert _no_events_read(out)


def test_constituent_model_must_match_features_and_architecture(small_sample, tmp_path):
    from qgcal.inference.constituent_model import FORMAT

    model = tmp_path / "m.safetensors"
    model.write_bytes(b"not read by the pre-flight check")
    sidecar = {
        "format": FORMAT,
        "features": ["constit_deta"],
        "weights_sha256": "0" * 64,
        "architecture": {"kind": "deepsets", "hidden": 8},
    }
    (tmp_path / "m.safetensors.json").write_text(json.dumps(sidecar))
    path, out = _config(small_sample, tmp_path, lambda d: _constituent_tagger(d, str(model)))
    for code, line in _both_commands(path):
        assert code == 2, line
        assert "taggers.cons.features" in line and "'constit_deta'" in line
    sidecar["features"] = ["constit_ptFrac"]
    (tmp_path / "m.safetensors.json").write_text(json.dumps(sidecar))
    path, out = _config(small_sample, tmp_path, lambda d: _constituent_tagger(d, str(model), "knn"), name="k")
    for code, line in _both_commands(path):
        assert code == 2, line
        assert "taggers.cons.architecture" in line and "deepsets" in line
    assert _no_events_read(out)
