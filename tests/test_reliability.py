"""Reliability: stale artifacts, corrupt and bad inputs, safe configs and artifacts.

Every bad input is built here from a valid generated file: truncated copies, a
flipped byte inside a compressed basket (found with uproot's ``fBasketSeek``),
a text file, an empty file, and files rewritten without the tree or a branch.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uproot
import yaml

import qgcal
from conftest import DEMO, write_config
from qgcal.artifacts import file_fingerprint
from qgcal.cli import main
from qgcal.config import Config, load_config, parse_config
from qgcal.errors import ArtifactError, ConfigError
from qgcal.histset import load_histset
from qgcal.plan import plan_tasks
from qgcal.stages import PASS_NAMES as STAGES
from qgcal.stages import artifact
from qgcal.stages.final_reweighting import config_hash_for
from qgcal.workflows.runner import skip_record_path
from qgcal.workflows.status import collect_status, print_status
from qgcal.workflows.tasks import pass_is_valid

# ----------------------------------------------------------------------------- building bad inputs


def truncate(src: Path, dst: Path, fraction: float) -> Path:
    blob = src.read_bytes()
    dst.write_bytes(blob[: int(len(blob) * fraction)])
    return dst


def basket_payload_offset(path: Path, tree: str, branch: str, basket: int = 0) -> int:
    """File offset of the middle of a basket's compressed payload (after its key and the 9-byte ROOT
    compression header)."""
    blob = path.read_bytes()
    with uproot.open(path) as f:
        seek = int(f[tree][branch].member("fBasketSeek")[basket])
    nbytes = int.from_bytes(blob[seek : seek + 4], "big")
    keylen = int.from_bytes(blob[seek + 14 : seek + 16], "big")  # fNbytes, fVersion, fObjlen, fDatime, fKeylen
    assert blob[seek + keylen : seek + keylen + 2] == b"ZL", "expected a zlib-compressed basket"
    return seek + keylen + 9 + (nbytes - keylen - 9) // 2


def flip_byte(src: Path, dst: Path, offset: int) -> Path:
    blob = bytearray(src.read_bytes())
    blob[offset] ^= 0xFF
    dst.write_bytes(bytes(blob))
    return dst


def rewrite_tree(
    src: Path, dst: Path, *, tree: str = "nominal", new_name: str | None = None, drop: tuple[str, ...] = ()
) -> Path:
    """The tree copied with uproot, renamed and/or without some branches (and nothing else)."""
    with uproot.open(src) as f:
        t = f[tree]
        keep = [k for k in t.keys() if k not in drop and not k.startswith("n")]
        arrays = t.arrays(keep, library="ak")
    with uproot.recreate(dst) as f:
        name = new_name or tree
        f.mktree(name, {k: arrays[k].type.content for k in arrays.fields})
        f[name].extend({k: arrays[k] for k in arrays.fields})
    return dst


def entries(path: Path, tree: str = "nominal") -> int:
    with uproot.open(path) as f:
        return int(f[tree].num_entries)


BAD_KINDS: dict[str, tuple[Callable[[Path, Path], Path], tuple[str, ...]]] = {
    # name: (builder from a good data file, words the one-line error must contain)
    "truncated30": (lambda g, d: truncate(g, d, 0.30), ("truncated", "30.0%")),
    "truncated90": (lambda g, d: truncate(g, d, 0.90), ("truncated", "90.0%")),
    "truncated999": (lambda g, d: truncate(g, d, 0.999), ("truncated", "99.9%")),
    "flipped": (
        lambda g, d: flip_byte(g, d, basket_payload_offset(g, "nominal", "jet_nTracks")),
        ("'jet_nTracks'", "cannot be read", "corrupt"),
    ),
    "text": (lambda g, d: (d.write_bytes(b"this is not a ROOT file\n" * 100), d)[1], ("not a ROOT file",)),
    "empty": (lambda g, d: (d.write_bytes(b""), d)[1], ("empty file",)),
    "notree": (lambda g, d: rewrite_tree(g, d, new_name="nominl"), ("no tree 'nominal'", "did you mean 'nominl'")),
    "nobranch": (
        lambda g, d: rewrite_tree(g, d, drop=("jet_nTracks",)),
        ("no branch 'jet_nTracks'", "branches.nTracks"),
    ),
}


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, lines
    assert lines[0].startswith("qgcal: error: ")
    return lines[0]


def _data_files(doc: dict[str, Any], files: list[str]) -> None:
    doc["samples"]["data"]["files"] = files
    doc["plots"] = {"enabled": False}


@pytest.fixture
def data_dir(small_sample: Path, tmp_path: Path) -> Path:
    """A private copy of the generated data files (tests modify and add files here)."""
    d = tmp_path / "data"
    shutil.copytree(small_sample / "sample" / "data", d)
    return d


# ----------------------------------------------------------------------------- stale artifacts


def _status_rows(cfg: Config) -> dict[str, dict[str, int]]:
    row = collect_status(cfg, ["nominal"]).systematics[0]
    return {
        stage: {"done": row.passes[stage].done, "missing": row.passes[stage].missing, "stale": row.passes[stage].stale}
        for stage in STAGES
    } | {"results": row.results}


def _status_text(cfg: Config) -> str:
    buf = io.StringIO()
    print_status(collect_status(cfg, ["nominal"]), file=buf)
    return next(ln for ln in buf.getvalue().splitlines() if ln.startswith("nominal "))


def test_config_changes_rerun_the_passes_that_depend_on_them_only(small_sample, data_dir, tmp_path):
    out = tmp_path / "out"
    files = [str(data_dir / "*.root")]

    def cfg_with(name: str, edit: Callable[[dict[str, Any]], None] | None = None) -> Config:
        def mutate(doc: dict[str, Any]) -> None:
            _data_files(doc, files)
            if edit:
                edit(doc)

        return write_config(small_sample, out, name=f"stale-{tmp_path.name}-{name}", mutate=mutate)[1]

    cfg = cfg_with("base")
    n = len(plan_tasks(cfg, "nominal"))
    first = qgcal.run(cfg, "nominal", workers=1)
    assert first.files_processed == {s: n for s in STAGES}
    sf = (cfg.output_path / "results" / "nominal" / "scale_factors.json").read_bytes()

    # plot settings: no pass depends on them; status says everything is done
    plots = cfg_with(
        "plots", lambda d: d.__setitem__("plots", {"enabled": False, "label": "Preliminary", "com_energy_tev": 13.6})
    )
    assert _status_rows(plots) == {s: {"done": n, "missing": 0, "stale": 0} for s in STAGES} | {"results": "done"}
    assert qgcal.run(plots, "nominal", workers=1).files_processed == {s: 0 for s in STAGES}
    assert (cfg.output_path / "results" / "nominal" / "scale_factors.json").read_bytes() == sf

    # a cross-section: only the final pass (always rerun) depends on it
    def xsec(d: dict[str, Any]) -> None:
        d["samples"]["pythia"]["slices"]["JZ5"]["xsec_pb"] *= 1.5

    xsec_cfg = cfg_with("xsec", xsec)
    assert config_hash_for(xsec_cfg, "nominal") != config_hash_for(cfg, "nominal")
    assert config_hash_for(plots, "nominal") == config_hash_for(cfg, "nominal")
    res = qgcal.run(xsec_cfg, "nominal", workers=1)
    assert res.files_processed == {s: 0 for s in STAGES}
    doc = json.loads((cfg.output_path / "results" / "nominal" / "scale_factors.json").read_text())
    assert doc["metadata"]["config_hash"] == config_hash_for(xsec_cfg, "nominal")  # what status can compare
    assert (cfg.output_path / "results" / "nominal" / "scale_factors.json").read_bytes() != sf

    # a tagger binning: predpkl2hist onwards
    def rebin(d: dict[str, Any]) -> None:
        d["taggers"]["ntrk"]["bins"] = {"n": 30, "low": 0, "high": 60}

    rebinned = cfg_with("rebin", rebin)
    assert _status_rows(rebinned) == {
        "root2pkl": {"done": n, "missing": 0, "stale": 0},
        "pkl2predpkl": {"done": n, "missing": 0, "stale": 0},
        "predpkl2hist": {"done": 0, "missing": 0, "stale": n},
        "results": "stale",
    }
    assert _status_text(rebinned).split()[-4:] == ["0", "done,", f"{n}", "stale", "stale"][-4:]
    assert qgcal.run(rebinned, "nominal", workers=1).files_processed == {
        "root2pkl": 0,
        "pkl2predpkl": 0,
        "predpkl2hist": n,
    }

    # a selection cut: everything from root2pkl
    def recut(d: dict[str, Any]) -> None:
        rebin(d)
        d["selection"]["abs_eta_max"] = 2.0

    recut_cfg = cfg_with("recut", recut)
    assert _status_rows(recut_cfg) == {s: {"done": 0, "missing": 0, "stale": n} for s in STAGES} | {"results": "stale"}
    assert f"0 done, {n} stale" in _status_text(recut_cfg)
    assert qgcal.run(recut_cfg, "nominal", workers=1).files_processed == {s: n for s in STAGES}
    assert _status_rows(recut_cfg)["results"] == "done"


def _mc_copy(small_sample: Path, tmp_path: Path) -> Path:
    d = tmp_path / "JZ4"
    shutil.copytree(small_sample / "sample" / "mc" / "pythia" / "JZ4", d)
    return d


def test_changed_input_file_is_reprocessed_alone(small_sample, data_dir, tmp_path):
    jz4 = _mc_copy(small_sample, tmp_path)

    def mutate(doc: dict[str, Any]) -> None:
        _data_files(doc, [str(data_dir / "*.root")])
        doc["samples"]["pythia"]["slices"]["JZ4"]["files"] = [str(jz4 / "*.root")]

    _, cfg = write_config(small_sample, tmp_path / "out", name=f"input-{tmp_path.name}", mutate=mutate)
    n = len(plan_tasks(cfg, "nominal"))
    qgcal.run(cfg, "nominal", workers=1)
    sf_path = cfg.output_path / "results" / "nominal" / "scale_factors.json"
    sf = sf_path.read_bytes()
    data0 = data_dir / "data_000.root"
    mc0 = next(iter(sorted(jz4.glob("*.root"))))
    assert 1 << 20 < mc0.stat().st_size < 2 << 20  # the size range an earlier fingerprint only half hashed

    def append(path: Path, blob: bytes) -> None:
        with path.open("ab") as fh:
            fh.write(blob)

    def keep_mtime(path: Path, change: Callable[[], None]) -> None:
        st = path.stat()
        change()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert path.stat().st_mtime_ns == st.st_mtime_ns

    def unread_basket_beyond_first_mib(path: Path) -> int:
        """A byte of a basket no nominal pass reads (a JER tree's jet_phi), after the first MiB."""
        with uproot.open(path) as f:
            for tree in ("syst_JET_JER__1up", "syst_JET_JES__1down", "syst_JET_JES__1up"):
                b = f[tree]["jet_phi"]
                for i in range(b.num_baskets):
                    if int(b.member("fBasketSeek")[i]) > (1 << 20) + 4096:
                        return basket_payload_offset(path, tree, "jet_phi", i)
        raise AssertionError("no basket beyond the first MiB")

    changes: list[tuple[str, Path, Callable[[], None]]] = [
        ("mtime", data0, lambda: os.utime(data0, ns=(data0.stat().st_atime_ns, data0.stat().st_mtime_ns + 10**9))),
        ("size", data0, lambda: keep_mtime(data0, lambda: append(data0, b"\0" * 64))),
        ("content", mc0, lambda: keep_mtime(mc0, lambda: flip_byte(mc0, mc0, unread_basket_beyond_first_mib(mc0)))),
    ]
    for what, path, change in changes:
        before = file_fingerprint(path)
        change()
        assert file_fingerprint(path) != before, what
        rows = _status_rows(cfg)
        assert rows == {s: {"done": n - 1, "missing": 0, "stale": 1} for s in STAGES} | {"results": "stale"}, what
        assert _status_text(cfg).count(f"{n - 1} done, 1 stale") == 3, what
        res = qgcal.run(cfg, "nominal", workers=1)
        assert res.files_processed == {s: 1 for s in STAGES}, what  # that file only
        # the bytes the calibration reads did not change: nor do the results
        assert sf_path.read_bytes() == sf, what
        assert _status_rows(cfg)["results"] == "done"


def test_fingerprint_covers_every_byte_of_files_up_to_two_mib(tmp_path):
    rng = np.random.default_rng(3)
    for size in (1000, (1 << 20) + 1, 3 << 19, 2 << 20):
        p = tmp_path / f"f{size}"
        p.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        for offset in (0, size // 2, (1 << 20) + 10 if size > (1 << 20) + 10 else size - 1, size - 1):
            st = p.stat()
            before = file_fingerprint(p)
            flip_byte(p, p, offset)
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
            assert file_fingerprint(p) != before, (size, offset)


def test_corrupt_artifacts_are_recomputed(small_sample, make_config):
    _, cfg = make_config(small_sample, mutate=lambda d: d.__setitem__("plots", {"enabled": False}))
    qgcal.run(cfg, "nominal", workers=1)
    sf = (cfg.output_path / "results" / "nominal" / "scale_factors.json").read_bytes()
    tasks = plan_tasks(cfg, "nominal")
    for task, stage in ((tasks[0], "root2pkl"), (tasks[3], "pkl2predpkl"), (tasks[5], "predpkl2hist")):
        truncate(artifact(cfg, task, stage), artifact(cfg, task, stage), 0.5)
    res = qgcal.run(cfg, "nominal", workers=1)
    # a recomputed artifact has the same provenance, so what was built on it stays valid
    assert res.files_processed == {"root2pkl": 1, "pkl2predpkl": 1, "predpkl2hist": 1}
    assert (cfg.output_path / "results" / "nominal" / "scale_factors.json").read_bytes() == sf


# ----------------------------------------------------------------------------- corrupt and bad inputs


def test_each_bad_input_stops_the_run_with_one_line_and_keeps_good_artifacts(small_sample, data_dir, tmp_path):
    good = data_dir / "data_001.root"
    out = tmp_path / "out"
    _, cfg0 = write_config(
        small_sample, out, name=f"good-{tmp_path.name}", mutate=lambda d: _data_files(d, [str(data_dir / "*.root")])
    )
    qgcal.run(cfg0, "nominal", workers=1)
    good_tasks = plan_tasks(cfg0, "nominal")
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    for kind, (build, words) in BAD_KINDS.items():
        bad = build(good, bad_dir / f"{kind}.root")
        path, cfg = write_config(
            small_sample,
            out,
            name=f"bad-{tmp_path.name}-{kind}",
            mutate=lambda d, bad=bad: _data_files(d, [str(data_dir / "*.root"), str(bad)]),
        )
        code, _, err = _cli(["-q", "run", "--config", str(path), "--workers", "1"])
        line = _one_error_line(err)
        assert code == 1, (kind, line)
        assert str(bad) in line, (kind, line)
        for w in words:
            assert w in line, (kind, w, line)
        task = next(t for t in plan_tasks(cfg, "nominal") if t.path == str(bad))
        assert not artifact(cfg, task, "root2pkl").exists()
        assert not skip_record_path(cfg, task).exists()
        for t in good_tasks:  # the work already done is kept, valid
            assert all(pass_is_valid(cfg, t, s) for s in STAGES), (kind, t.path)
        assert not [p for p in out.rglob("*") if ".tmp-" in p.name], kind


def test_bad_file_with_a_process_pool_stops_after_running_files_and_keeps_their_work(small_sample, data_dir, tmp_path):
    bad = truncate(data_dir / "data_001.root", data_dir / "a_truncated.root", 0.5)  # sorts first

    def mutate(doc: dict[str, Any]) -> None:
        _data_files(doc, [str(data_dir / "*.root")])
        doc["executor"]["workers"] = 2

    path, cfg = write_config(small_sample, tmp_path / "out", name=f"pool-{tmp_path.name}", mutate=mutate)
    code, _, err = _cli(["-q", "run", "--config", str(path)])
    assert code == 1 and "a_truncated.root" in _one_error_line(err)
    tasks = [t for t in plan_tasks(cfg, "nominal") if t.path != str(bad)]
    done = [t for t in tasks if artifact(cfg, t, "root2pkl").exists()]
    assert all(pass_is_valid(cfg, t, "root2pkl") for t in done)  # nothing half-written kept
    assert not [p for p in cfg.output_path.rglob("*") if ".tmp-" in p.name]
    bad.unlink()
    res = qgcal.run(cfg, "nominal", workers=2)
    assert res.files_processed["root2pkl"] == len(tasks) - len(done)


def test_skip_bad_files_completes_and_reports_every_skipped_file(small_sample, data_dir, tmp_path):
    good = data_dir / "data_001.root"
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad = {kind: build(good, bad_dir / f"{kind}.root") for kind, (build, _) in BAD_KINDS.items()}
    n_entries = entries(good)

    def mutate(doc: dict[str, Any], with_bad: bool = True) -> None:
        _data_files(doc, [str(data_dir / "*.root")] + ([str(bad_dir / "*.root")] if with_bad else []))
        doc["variations"] = {k: doc["variations"][k] for k in ("JES_up", "JES_down")}

    path, cfg = write_config(small_sample, tmp_path / "out", name=f"skip-{tmp_path.name}", mutate=mutate)
    code, out, err = _cli(["-q", "sweep", "--config", str(path), "--skip-bad-files"])
    assert code == 0, err
    assert "Traceback" not in err
    summary = [ln for ln in out.splitlines() if "skipped as bad" in ln]
    assert len(summary) == 1
    for p in bad.values():
        assert str(p) in summary[0]

    for syst in cfg.variation_names():
        meta = json.loads((cfg.output_path / "results" / syst / "scale_factors.json").read_text())["metadata"]
        listed = {r["file"]: r for r in meta["skipped_files"]}
        assert set(listed) == {str(p) for p in bad.values()}, syst
        for kind, p in bad.items():
            rec = listed[str(p)]
            assert str(p) in rec["reason"] and all(w in rec["reason"] for w in BAD_KINDS[kind][1]), rec
            # the entries of the file's tree when the file can still tell, else unknown: never a guess
            if kind in {"flipped", "nobranch"}:
                assert rec["events_lost"] == n_entries
            # a truncated file is never counted: uproot may find an early cycle of its tree (0 entries)
            if kind in {"text", "empty", "notree", "truncated30", "truncated90", "truncated999"}:
                assert rec["events_lost"] is None
            assert rec["events_lost"] in (None, n_entries)
        # some files could not be counted: the total is "unknown", never the sum of the others
        assert meta["events_lost"] == "unknown"
        assert meta["events_lost_known"] == 2 * n_entries  # flipped and nobranch
        assert set(meta["events_lost_unknown_files"]) == {f for f, r in listed.items() if r["events_lost"] is None}
        assert len(meta["events_lost_unknown_files"]) == 6
    assert f"unknown events lost (at least {2 * n_entries}; 6 file(s) could not be counted)" in summary[0]

    # the bad files are left out, nothing else: the scale factors equal a run without them
    path2, cfg2 = write_config(
        small_sample,
        tmp_path / "out-good",
        name=f"skip-good-{tmp_path.name}",
        mutate=lambda d: mutate(d, with_bad=False),
    )
    assert _cli(["-q", "run", "--config", str(path2)])[0] == 0
    recs = json.loads((cfg.output_path / "results" / "nominal" / "scale_factors.json").read_text())["records"]
    recs2 = json.loads((cfg2.output_path / "results" / "nominal" / "scale_factors.json").read_text())["records"]
    assert recs == recs2

    code, out, err = _cli(["-q", "combine", "--config", str(path), "--no-plots"])
    assert code == 0, err
    report = (cfg.output_path / "results" / "combined" / "report.md").read_text()
    section = report.split("## Skipped input files")[1].split("\n## ")[0]
    assert f"{len(bad)} input file(s) were skipped" in section
    assert f"**unknown events lost (at least {2 * n_entries}; 6 file(s) could not be counted)**" in section
    for kind, p in bad.items():
        row = next(ln for ln in section.splitlines() if f"`{p}`" in ln)
        assert ("unknown" if listed[str(p)]["events_lost"] is None else f"| {n_entries} |") in row
        assert all(w in row for w in BAD_KINDS[kind][1]), row

    # the config equivalent; and a later run without skipping stops again (a skip is not sticky)
    def in_config(doc: dict[str, Any]) -> None:
        mutate(doc)
        doc["reading"]["skip_bad_files"] = True

    path3, _ = write_config(small_sample, tmp_path / "out", name=f"skip-cfg-{tmp_path.name}", mutate=in_config)
    code, out, err = _cli(["-q", "run", "--config", str(path3)])
    assert code == 0 and "skipped as bad" in out, err
    code, out, err = _cli(["-q", "run", "--config", str(path)])
    assert code == 1 and "bad" in _one_error_line(err)


def test_a_file_that_breaks_after_it_was_processed_is_skipped_not_merged_from_old_artifacts(
    small_sample, data_dir, tmp_path
):
    def cfg_for(name: str, files: list[str], out: Path) -> tuple[Path, Config]:
        return write_config(small_sample, out, name=f"{name}-{tmp_path.name}", mutate=lambda d: _data_files(d, files))

    path, cfg = cfg_for("later", [str(data_dir / "*.root")], tmp_path / "out")
    assert _cli(["-q", "run", "--config", str(path), "--workers", "1"])[0] == 0
    broken = data_dir / "data_001.root"
    truncate(broken, broken, 0.5)  # re-copied badly after the first run
    code, out, err = _cli(["-q", "run", "--config", str(path), "--workers", "1", "--skip-bad-files"])
    assert code == 0 and str(broken) in out and "skipped as bad" in out, err
    task = next(t for t in plan_tasks(cfg, "nominal") if t.path == str(broken))
    assert not any(artifact(cfg, task, s).exists() for s in STAGES)
    ref_path, ref = cfg_for("only-good", [str(data_dir / "data_000.root")], tmp_path / "ref")
    assert _cli(["-q", "run", "--config", str(ref_path), "--workers", "1"])[0] == 0

    def records(c: Config) -> list[dict[str, Any]]:
        return json.loads((c.output_path / "results" / "nominal" / "scale_factors.json").read_text())["records"]

    assert records(cfg) == records(ref)  # the old artifacts of the broken file are not merged


# ----------------------------------------------------------------------------- safe configs


BASE = yaml.safe_load(DEMO.read_text())
BASE["taggers"] = {k: v for k, v in BASE["taggers"].items() if v["kind"] != "model"}


def _config_error(doc: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, source="c.yaml")
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def _leaf_paths(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(node, dict):
        out = []
        for k, v in node.items():
            out.append((*prefix, k))
            out += _leaf_paths(v, (*prefix, k))
        return out
    return []


def _full_demo() -> dict[str, Any]:
    """The demo config with every optional section written out (defaults), so every field is visited."""
    doc = copy.deepcopy(BASE)
    dumped = parse_config(copy.deepcopy(doc)).model_dump(mode="json", exclude={"base_dir"})
    dumped["variations"] = copy.deepcopy(doc["variations"])  # keep the range, not its expansion
    for sample in dumped["samples"].values():
        for key in [k for k, v in sample.items() if v is None]:
            del sample[key]
    return dumped


@pytest.mark.parametrize("path", _leaf_paths(_full_demo()), ids=lambda p: ".".join(map(str, p)))
def test_every_field_is_validated(path):
    doc = _full_demo()
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = [[{"not": "valid"}]]  # no typed field accepts this
    msg = _config_error(doc)
    where = ".".join(path)
    if path[-1] == "kind" and path[0] in ("variations", "taggers"):
        where = ".".join(path[:-1])  # the discriminator: reported at the item
    assert f"c.yaml: {where}" in msg or f"; {where}" in msg, msg


@pytest.mark.parametrize(
    "path, typo, suggestion",
    [
        ((), "lumi", "lumi_pb"),
        (("samples", "pythia"), "slice", "slices"),
        (("samples", "pythia", "slices", "JZ4"), "xsec", "xsec_pb"),  # used to get no suggestion
        (("samples", "pythia", "sum_of_weights"), "histogrm", "histogram"),
        (("taggers", "ntrk", "bins"), "hihg", "high"),
        (("variations", "herwig"), "sampel", "sample"),
        (("variations", "JES_up"), "treee", "tree"),
        (("executor",), "retry", "retries"),
        (("reading",), "skip_bad_file", "skip_bad_files"),
        (("calibration",), "min_fraction_seperation", "min_fraction_separation"),
        (("plots",), "enable", "enabled"),
    ],
)
def test_unknown_key_suggests_the_closest_valid_key(path, typo, suggestion):
    doc = copy.deepcopy(BASE)
    node = doc
    for key in path:
        node = node.setdefault(key, {})
    node[typo] = 1
    msg = _config_error(doc)
    assert f"{'.'.join((*path, typo))}: unknown key (did you mean '{suggestion}'" in msg, msg


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "a/b",
        "/abs",
        ".hidden",
        "..",
        "x\n",
        "nominal\n",
        "a b",
        "",
        "x" * 101,
        "nominal",
        "results",
        "combined",
        "ü",
        "a\\b",
        "-x",
    ],
)
@pytest.mark.parametrize("where", ["samples", "variations", "taggers", "slices"])
def test_unsafe_names_are_rejected(name, where):
    doc = copy.deepcopy(BASE)
    if where == "samples":
        doc["samples"][name] = copy.deepcopy(doc["samples"]["herwig"])
    elif where == "variations":
        doc["variations"][name] = {"kind": "tree", "tree": "x"}
    elif where == "taggers":
        doc["taggers"][name] = copy.deepcopy(doc["taggers"]["ntrk"])
    else:
        doc["samples"]["herwig"]["slices"][name] = doc["samples"]["herwig"]["slices"].pop("JZ4")
    msg = _config_error(doc)
    assert repr(name) in msg and ("reserved" in msg or "letters, digits" in msg), msg


def test_every_artifact_and_result_path_stays_inside_the_output(small_sample, make_config):
    _, cfg = make_config(small_sample)
    out = cfg.output_path.resolve()
    for syst in cfg.variation_names():
        for task in plan_tasks(cfg, syst):
            for stage in STAGES:
                assert artifact(cfg, task, stage).resolve().is_relative_to(out)
            assert skip_record_path(cfg, task).resolve().is_relative_to(out)
        assert (cfg.output_path / "results" / syst).resolve().parent == out / "results"


@pytest.mark.parametrize(
    "doc_change, where",
    [
        (lambda d: d.__setitem__("lumi_pb", float("inf")), "lumi_pb"),
        (lambda d: d["selection"].__setitem__("abs_eta_max", float("nan")), "selection.abs_eta_max"),
        (lambda d: d["taggers"]["ntrk"]["bins"].__setitem__("high", float("inf")), "taggers.ntrk.bins.high"),
        (lambda d: d["reading"].__setitem__("step_size", "lots"), "reading.step_size"),
        (lambda d: d["reading"].__setitem__("step_size", 0), "reading.step_size"),
        (lambda d: d["reading"].__setitem__("step_size", True), "reading.step_size"),
        (lambda d: d["reading"].__setitem__("step_size", "-5 MB"), "reading.step_size"),
        (lambda d: d["variations"]["pdf"].__setitem__("multiply", 5), "variations.pdf.multiply"),
        (lambda d: d["executor"].__setitem__("retries", -1), "executor.retries"),
    ],
)
def test_non_finite_and_unusable_values_are_rejected(doc_change, where):
    doc = copy.deepcopy(BASE)
    doc_change(doc)
    assert f"c.yaml: {where}" in _config_error(doc)


@pytest.mark.parametrize("step", [1, 5000, "100 MB", "1.5 GiB", "200kB"])
def test_valid_step_sizes_are_accepted(step):
    doc = copy.deepcopy(BASE)
    doc["reading"]["step_size"] = step
    assert parse_config(doc).reading.step_size == step


@pytest.mark.parametrize(
    "text, words",
    [
        ("a: 2001-02-30\n", "day is out of range"),
        ("[" * 5000 + "]" * 5000, "nested too deeply"),
        ("a: !!python/object/apply:os.system ['touch {marker}']\n", "could not determine a constructor"),
        ("a: !!binary AAA=\n", "lumi_pb: Field required"),
        ("? [a, b]\n: c\n", "unhashable key"),
        ("\x00", "invalid YAML"),
    ],
)
def test_yaml_that_used_to_escape_as_other_errors(tmp_path, text, words):
    marker = tmp_path / "executed"
    p = tmp_path / "c.yaml"
    p.write_text(text.replace("{marker}", str(marker)))
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_config(p)
    assert not marker.exists()


def test_branch_expressions_are_never_evaluated(small_sample, tmp_path):
    marker = tmp_path / "executed"
    evil = f"__import__('os').system('touch {marker}')"

    def mutate(doc: dict[str, Any]) -> None:
        doc["branches"]["nTracks"] = evil.replace(" ", "")  # a branch name has no spaces
        doc["plots"] = {"enabled": False}

    path, cfg = write_config(small_sample, tmp_path / "out", name=f"evil-{tmp_path.name}", mutate=mutate)
    assert cfg.branches["nTracks"] == evil.replace(" ", "")  # accepted as a name, and only a name
    code, _, err = _cli(["-q", "run", "--config", str(path), "--workers", "1"])
    line = _one_error_line(err)
    # no file has that branch: a config error, found before any event is read (exit 2)
    assert code == 2 and "has no branch" in line and "branches.nTracks" in line
    assert not marker.exists()
    doc = copy.deepcopy(BASE)
    doc["branches"]["nTracks"] = evil  # with a space: not even a name
    assert "branches" in _config_error(doc)


class _Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_an_artifact_with_a_pickled_object_is_rejected_never_loaded(small_sample, make_config, tmp_path):
    cfg_path, cfg = make_config(small_sample, mutate=lambda d: d.__setitem__("plots", {"enabled": False}))
    qgcal.run(cfg, "nominal", workers=1)
    task = plan_tasks(cfg, "nominal")[0]
    hpath = artifact(cfg, task, "predpkl2hist")
    marker = tmp_path / "executed"
    with np.load(hpath, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    name = next(k for k in arrays if k.endswith(".values"))
    payload = np.empty(1, dtype=object)
    payload[0] = _Payload(marker)
    arrays[name] = payload  # same __meta__: the provenance still matches
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    hpath.write_bytes(buf.getvalue())
    with np.load(hpath, allow_pickle=True) as npz:  # the payload is live...
        npz[name]
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ArtifactError, match="unreadable histogram artifact"):
        load_histset(hpath)
    code, _, err = _cli(["-q", "run", "--config", str(cfg_path), "--workers", "1"])
    line = _one_error_line(err)
    assert code == 1 and str(hpath) in line and "--force" in line
    assert not marker.exists()  # ...but qgcal never unpickles it
