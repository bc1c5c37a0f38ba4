"""``qgcal status``: what is done, missing or stale, per systematic and pass, without running anything.

For every systematic the files are those ``qgcal run --syst`` needs: data and
the systematic's MC, plus the nominal MC its cuts are frozen from (shared
artifacts, e.g. data under ``nominal/``, count in every systematic that needs
them; the ``all`` row counts each file task once, as ``qgcal sweep`` runs them).

Per file task and pass:

* ``done``: the artifact exists and its provenance matches the input file and
  the config (:func:`qgcal.workflows.tasks.pass_is_valid`), upstream included;
* ``missing``: no artifact file;
* ``stale``: the file exists but would be redone (input or config changed,
  or an upstream artifact is not done).

Results: ``results/<syst>/scale_factors.json`` is ``missing``, ``stale`` (older
than one of its histogram artifacts, or one of them is not done) or ``done``;
``results/combined`` is ``stale`` when the per-systematic results it was made
from changed since (content hashes recorded in its metadata), or when one of
them is itself stale (a combination of stale results is not up to date either).

Cut flows: the nominal data and MC cut flows summed over the histogram artifacts
present (:mod:`qgcal.cutflow`), printed below the table and in ``--json``.

Orphans (``qgcal status --orphans``, removed by ``qgcal clean``): files under the
output that no current file task, systematic or combination would read or write:
artifacts of renamed or removed input files, of removed variations or samples,
and temporary files of killed writers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from qgcal.config import Config
from qgcal.cutflow import CutFlow, read_cutflow
from qgcal.errors import QgcalError
from qgcal.passes import artifact_of
from qgcal.plan import FileTask, plan_tasks
from qgcal.report import print_table
from qgcal.stages import FILE_PASSES, PASS_NAMES, file_pass, pass_index
from qgcal.stages.final_reweighting import config_hash_for
from qgcal.workflows.tasks import artifact_is_valid

__all__ = [
    "COMBINED_FILES",
    "STALE_RECORD",
    "CombinedStatus",
    "Orphan",
    "PassCounts",
    "Status",
    "SystStatus",
    "check_combinable",
    "collect_status",
    "find_orphans",
    "print_orphans",
    "print_status",
    "record_stale_inputs",
    "remove_orphans",
    "stale_results",
]

State = Literal["done", "missing", "stale"]
COMBINED_FILES = ("scale_factors.json", "corrections.json", "scale_factors.root", "report.md", "plots")


@dataclass
class PassCounts:
    done: int = 0
    missing: int = 0
    stale: int = 0

    def add(self, state: State) -> None:
        setattr(self, state, getattr(self, state) + 1)

    @property
    def total(self) -> int:
        return self.done + self.missing + self.stale

    def text(self) -> str:
        parts = [f"{self.done} done"]
        parts += [f"{n} {label}" for n, label in ((self.missing, "missing"), (self.stale, "stale")) if n]
        return ", ".join(parts)


@dataclass
class SystStatus:
    name: str
    group: str
    kind: str
    files: int
    inputs_missing: int
    passes: dict[str, PassCounts]
    results: str  # done | missing | stale

    @property
    def complete(self) -> bool:
        return self.results == "done" and all(c.done == c.total for c in self.passes.values())


@dataclass
class CombinedStatus:
    state: str  # done | missing | stale
    files: dict[str, bool] = field(default_factory=dict)
    reason: str = ""


@dataclass
class Status:
    output: Path
    systematics: list[SystStatus]
    total: SystStatus  # every file task once (the "all" row)
    combined: CombinedStatus
    cutflows: list[CutFlow] = field(default_factory=list)  # nominal data and MC, from the artifacts present

    @property
    def complete(self) -> bool:
        return all(s.complete for s in self.systematics) and self.combined.state == "done"

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "systematics": [_row_dict(s) for s in self.systematics],
            "all": _row_dict(self.total),
            "combined": asdict(self.combined),
            "complete": self.complete,
            "cutflows": {
                f.sample: {
                    "kind": f.kind,
                    "files": f.files,
                    "cuts": [[cut, n, _finite(f.sumw.get(cut))] for cut, n in f.events.items()],
                    "invalid_scores": f.invalid_scores,
                    "nan_scores": f.nan_scores,
                }
                for f in self.cutflows
            },
        }


def _finite(x: float | None) -> float | None:
    """JSON has no NaN: an unknown sum (artifacts from before sums were recorded) is null."""
    return x if x is not None and math.isfinite(x) else None


def _row_dict(s: SystStatus) -> dict[str, Any]:
    return {**asdict(s), "passes": {k: asdict(v) for k, v in s.passes.items()}}


# ----------------------------------------------------------------------------- collecting


def needed_tasks(cfg: Config, syst: str) -> list[FileTask]:
    """What ``qgcal run --syst`` processes (as ``workflows.single.tasks_for``, without the input check)."""
    tasks = {f"{t.variation}@{t.key}": t for t in plan_tasks(cfg, syst)}
    if syst != "nominal":
        for t in plan_tasks(cfg, "nominal", include_data=False):
            tasks.setdefault(f"{t.variation}@{t.key}", t)
    return [tasks[k] for k in sorted(tasks)]


class _Checker:
    """Per (task, pass) state, each computed once (data are shared by every systematic)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.cache: dict[tuple[FileTask, str], State] = {}

    def state(self, task: FileTask, stage: str) -> State:
        key = (task, stage)
        if key not in self.cache:
            self.cache[key] = self._state(task, stage)
        return self.cache[key]

    def _state(self, task: FileTask, stage: str) -> State:
        if not artifact_of(self.cfg, task, file_pass(stage)).is_file():
            return "missing"
        if not Path(task.path).is_file():
            return "stale"  # the input is gone: the artifact cannot be trusted
        i = pass_index(stage)
        if i > 0 and self.state(task, PASS_NAMES[i - 1]) != "done":
            return "stale"
        return "done" if artifact_is_valid(self.cfg, task, stage) else "stale"  # upstream: checked just above


def _results_state(cfg: Config, syst: str, tasks: Sequence[FileTask], checker: _Checker) -> str:
    path = cfg.output_path / "results" / syst / "scale_factors.json"
    if not path.is_file():
        return "missing"
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))["metadata"].get("config_hash")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "stale"
    if recorded != config_hash_for(cfg, syst):  # lumi, cross-sections, WPs, calibration.* changed
        return "stale"
    mtime = path.stat().st_mtime_ns
    for t in tasks:
        if checker.state(t, PASS_NAMES[-1]) != "done":
            if _skipped_as_bad(cfg, t):  # left out of the results, and recorded in them
                continue
            return "stale"
        if artifact_of(cfg, t, FILE_PASSES[-1]).stat().st_mtime_ns > mtime:
            return "stale"
    return "done"


def _skipped_as_bad(cfg: Config, task: FileTask) -> bool:
    from qgcal.workflows.runner import read_skip_record

    return read_skip_record(cfg, task) is not None and not artifact_of(cfg, task, FILE_PASSES[0]).is_file()


def stale_results(cfg: Config, checker: _Checker | None = None) -> dict[str, str]:
    """``{syst: state}`` for the configured systematics whose results are not ``done`` (stale or missing)."""
    checker = checker or _Checker(cfg)
    out = {}
    for syst in cfg.variation_names():
        state = _results_state(cfg, syst, needed_tasks(cfg, syst), checker)
        if state != "done":
            out[syst] = state
    return out


def _combined_state(cfg: Config, checker: _Checker | None = None) -> CombinedStatus:
    from qgcal.artifacts import sha256_file

    d = cfg.output_path / "results" / "combined"
    files = {name: (d / name).exists() for name in COMBINED_FILES}
    sf = d / "scale_factors.json"
    if not sf.is_file():
        return CombinedStatus("missing", files, "run 'qgcal combine'")
    try:
        inputs = json.loads(sf.read_text(encoding="utf-8"))["metadata"]["inputs"]
    except (ValueError, KeyError, TypeError):
        return CombinedStatus("stale", files, "unreadable scale_factors.json")
    for syst in cfg.variation_names():
        p = cfg.output_path / "results" / syst / "scale_factors.json"
        rec = inputs.get(syst)
        if rec is None or not p.is_file() or sha256_file(p) != rec.get("sha256"):
            return CombinedStatus("stale", files, f"results/{syst} changed since the combination")
    not_done = stale_results(cfg, checker)
    if not_done:
        names = ", ".join(f"results/{k} {v}" for k, v in not_done.items())
        return CombinedStatus("stale", files, f"made from results that are not up to date ({names}); rerun the sweep")
    required = [k for k in COMBINED_FILES if k != "plots" or cfg.plots.enabled]  # plots.enabled: false draws none
    if not all(files[k] for k in required):
        return CombinedStatus("stale", files, "some outputs are missing; rerun 'qgcal combine'")
    return CombinedStatus("done", files)


def _row(name: str, group: str, kind: str, tasks: Sequence[FileTask], checker: _Checker, results: str) -> SystStatus:
    passes = {stage: PassCounts() for stage in PASS_NAMES}
    for t in tasks:
        for stage in PASS_NAMES:
            passes[stage].add(checker.state(t, stage))
    missing_inputs = sum(1 for t in {t.path for t in tasks} if not Path(t).is_file())
    return SystStatus(name, group, kind, len(tasks), missing_inputs, passes, results)


def collect_status(cfg: Config, systs: Iterable[str] | None = None) -> Status:
    """The status of every (or the named) systematic, an ``all`` row, and results/combined."""
    names = list(systs) if systs is not None else cfg.variation_names()
    for s in names:
        cfg.variation(s)  # unknown names: one-line error listing the valid ones
    checker = _Checker(cfg)
    rows = []
    union: dict[str, FileTask] = {}
    for s in names:
        tasks = needed_tasks(cfg, s)
        for t in tasks:
            union.setdefault(f"{t.variation}@{t.key}", t)
        var = cfg.variations.get(s)
        rows.append(
            _row(
                s,
                var.group if var else "-",
                var.kind if var else "-",
                tasks,
                checker,
                _results_state(cfg, s, tasks, checker),
            )
        )
    everything = [union[k] for k in sorted(union)]
    done = sum(1 for r in rows if r.results == "done")
    total = _row("all", "-", "-", everything, checker, f"{done}/{len(rows)} done")
    return Status(cfg.output_path, rows, total, _combined_state(cfg, checker), nominal_cutflows(cfg))


def nominal_cutflows(cfg: Config) -> list[CutFlow]:
    """The cut flows of the nominal data and MC over the histogram artifacts present (done or not)."""
    last = FILE_PASSES[-1]
    out = []
    for sample in (cfg.data, cfg.nominal_mc):
        try:
            tasks = plan_tasks(cfg, "nominal", include_data=sample == cfg.data, include_mc=sample != cfg.data)
        except QgcalError:  # an input glob matching nothing: the table says what is missing
            continue
        arts = [(t.key, artifact_of(cfg, t, last)) for t in tasks]
        present = [(k, p) for k, p in arts if p.is_file()]
        if present:
            out.append(read_cutflow(cfg, sample, present))
    return out


# ----------------------------------------------------------------------------- printing


def _table_rows(status: Status) -> tuple[list[str], list[list[str]]]:
    header = ["systematic", "group", "kind", "files", *PASS_NAMES, "results"]
    rows = []
    for s in [*status.systematics, status.total]:
        files = f"{s.files}" + (f" ({s.inputs_missing} inputs missing)" if s.inputs_missing else "")
        rows.append([s.name, s.group, s.kind, files, *(s.passes[k].text() for k in PASS_NAMES), s.results])
    return header, rows


def print_status(status: Status, file: TextIO | None = None) -> None:
    """A rich table on a terminal, aligned plain text otherwise."""
    header, rows = _table_rows(status)
    c = status.combined
    present = ", ".join(k for k, v in c.files.items() if v) or "nothing"
    combined_line = f"results/combined: {c.state}" + (f" ({c.reason})" if c.reason else "") + f"; present: {present}"
    print_table(header, rows, title=f"qgcal status: {status.output}", file=file, footer=combined_line)
    for flow in status.cutflows:
        print("\n".join(flow.lines()), file=file)


STALE_RECORD = "stale_inputs.json"


def check_combinable(cfg: Config, *, allow_stale: bool = False) -> dict[str, str]:
    """Before ``qgcal combine``: ArtifactError when a systematic's results are stale, unless ``allow_stale``.

    Returns ``{syst: state}`` of the stale ones (empty when all are up to date); missing results are
    left to the combination, which names them.
    """
    from qgcal.errors import ArtifactError
    from qgcal.progress import log

    stale = {k: v for k, v in stale_results(cfg).items() if v == "stale"}
    if stale and not allow_stale:
        raise ArtifactError(
            f"results of {', '.join(stale)} are stale (their inputs or the config changed since they were made); "
            "rerun them ('qgcal sweep --config C'), or combine anyway with --allow-stale (recorded in "
            f"results/combined/{STALE_RECORD})"
        )
    if stale:
        log.warning(
            "combining stale results of %s (--allow-stale); recorded in results/combined/%s",
            ", ".join(stale),
            STALE_RECORD,
        )
    return stale


def record_stale_inputs(cfg: Config, stale: dict[str, str]) -> None:
    """``results/combined/stale_inputs.json`` names what a combination with --allow-stale used; removed otherwise."""
    from qgcal.artifacts import write_json_atomic

    path = cfg.output_path / "results" / "combined" / STALE_RECORD
    if stale:
        write_json_atomic(path, {"stale_inputs": sorted(stale), "note": "combined with --allow-stale"})
    else:
        path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- orphans

_TOP_LEVEL_KEPT = {"results", "models", "slurm"}  # never orphans as a whole (results are checked per systematic)


@dataclass(frozen=True)
class Orphan:
    path: Path
    size: int
    why: str


def _expected_files(cfg: Config) -> set[Path]:
    from qgcal.workflows.runner import skip_record_path

    out: set[Path] = set()
    for syst in cfg.variation_names():
        for t in needed_tasks(cfg, syst):
            out.update(artifact_of(cfg, t, p) for p in FILE_PASSES)
            out.add(skip_record_path(cfg, t))
    return out


def _size(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def find_orphans(cfg: Config) -> list[Orphan]:
    """Files and folders under the output that nothing current reads or writes (sorted by path).

    Per-file artifacts (``<namespace>/<pass>/...``) that no planned file task has;
    namespaces of variations that are no longer configured; ``results/<name>`` of such
    variations; ``.*.tmp-*`` files left by a killed writer. Models, Slurm logs and the
    combination are never orphans.
    """
    from qgcal.stages.final_reweighting import NAME as FINAL

    out = cfg.output_path
    if not out.is_dir():
        return []
    namespaces = set(cfg.variation_names())
    expected = _expected_files(cfg)
    found: list[Orphan] = []
    for entry in sorted(out.iterdir()):
        if entry.name in _TOP_LEVEL_KEPT or not entry.is_dir():
            continue
        passes = [entry / name for name in [*PASS_NAMES, FINAL] if (entry / name).is_dir()]
        if not passes:
            continue  # not a namespace qgcal wrote: left alone
        if entry.name not in namespaces:
            found.append(Orphan(entry, _size(entry), f"no variation named {entry.name!r} is configured"))
            continue
        for stage_dir in passes:
            if stage_dir.name == FINAL:
                continue  # merged histograms: rewritten by every final pass
            for f in sorted(p for p in stage_dir.rglob("*") if p.is_file()):
                if f not in expected:
                    why = "temporary file of an interrupted write" if ".tmp-" in f.name else "no current file task"
                    found.append(Orphan(f, _size(f), why))
    results = out / "results"
    if results.is_dir():
        for entry in sorted(results.iterdir()):
            if entry.is_dir() and entry.name != "combined" and entry.name not in namespaces:
                found.append(Orphan(entry, _size(entry), f"no variation named {entry.name!r} is configured"))
    for tmp in sorted(out.rglob(".*.tmp-*")):
        if tmp.is_file() and not any(tmp == o.path or o.path in tmp.parents for o in found):
            found.append(Orphan(tmp, _size(tmp), "temporary file of an interrupted write"))
    return sorted(found, key=lambda o: str(o.path))


def remove_orphans(orphans: Sequence[Orphan]) -> int:
    """Delete them (folders with their content); return the bytes freed."""
    import shutil

    freed = 0
    for o in orphans:
        if o.path.is_dir():
            shutil.rmtree(o.path)
        else:
            o.path.unlink(missing_ok=True)
        freed += o.size
    return freed


def print_orphans(
    cfg: Config, orphans: Sequence[Orphan], *, removed: bool | None = None, file: TextIO | None = None
) -> None:
    """One line per orphan (relative to the output) and a total."""
    import sys

    stream = file or sys.stdout
    out = cfg.output_path
    for o in orphans:
        print(f"{o.path.relative_to(out)}\t{o.size} bytes\t{o.why}", file=stream)
    total = sum(o.size for o in orphans)
    if removed is None:
        print(
            f"{len(orphans)} orphans ({total} bytes) under {out}; 'qgcal clean --config C --delete' removes them",
            file=stream,
        )
    elif removed:
        print(f"removed {len(orphans)} orphans ({total} bytes) under {out}", file=stream)
    else:
        print(
            f"would remove {len(orphans)} orphans ({total} bytes) under {out} (dry run; --delete removes them)",
            file=stream,
        )
