"""What can be known before any event is read: ``qgcal validate`` runs it, and so do ``run`` and ``sweep``.

Why one function: a check that only the run makes (a missing model file found after
root2pkl has run for minutes, a sum-of-weights histogram name that exists in no file)
wastes the run, and a ``validate`` that calls such a config valid is wrong. So both
commands call :func:`preflight` and exit with the same codes (docs in the README).

Checked, from the config and the file system only (ROOT files are opened for their
key lists and tree metadata; no basket is read):

* every input file exists, and no file is listed twice: not in two samples or slices
  (its events would be counted twice), not twice in one slice;
* every model tagger has its model file and sidecar, and the sidecar's features are
  the tagger's ``features`` in order;
* the trees, branches and sum-of-weights histogram (and bin) the config asks for
  exist: a name that no file has is a config error.

A file that is not a readable ROOT file (empty, truncated, corrupt), or that lacks
what the other files of its sample have, is a bad file: left to the run's bad-file
policy (stop, or ``--skip-bad-files``), or an InputError with ``unreadable="raise"``
(``qgcal validate``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from qgcal.config import Config, ConstituentTagger, ModelTagger, parse_branch_expr
from qgcal.errors import ConfigError, InputError
from qgcal.plan import FileTask, model_path
from qgcal.workflows.tasks import pass_is_valid

__all__ = ["PreflightReport", "check_duplicate_files", "check_models", "preflight"]


@dataclass
class PreflightReport:
    tasks: int = 0
    files: int = 0
    unreadable: list[str] = field(default_factory=list)  # one line per file left to the bad-file policy


def _needed(cfg: Config, systs: Iterable[str]) -> list[FileTask]:
    """Every file task the systematics need, each once (``needed_tasks`` of each, merged)."""
    from qgcal.workflows.status import needed_tasks

    tasks: dict[str, FileTask] = {}
    for syst in systs:
        for t in needed_tasks(cfg, syst):
            tasks.setdefault(f"{t.variation}@{t.key}", t)
    return [tasks[k] for k in sorted(tasks)]


def check_duplicate_files(cfg: Config) -> None:
    """ConfigError when one input file is listed by two samples, two slices, or twice in one slice."""
    owner: dict[Path, str] = {}
    for sname, sample in sorted(cfg.samples.items()):
        for slice_name, sl in sorted(sample.slice_map().items()):
            where = f"samples.{sname}" if not sample.slices else f"samples.{sname}.slices.{slice_name}"
            for path in cfg.resolve_files(sl.files):
                first = owner.get(path)
                if first is not None:
                    both = f"twice by {where}" if first == where else f"by {first} and by {where}"
                    raise ConfigError(
                        f"{path}: listed {both}; its events would be counted twice. List each input file "
                        "in exactly one sample slice (check overlapping globs; for a closure with data = MC, "
                        "use a copy of the file)"
                    )
                owner[path] = where


def check_models(cfg: Config) -> None:
    """ConfigError when a trained tagger's model file or sidecar is missing or disagrees with the config.

    Model taggers (skops BDT) and constituent taggers (safetensors + JSON sidecar) alike: the
    file exists, its metadata reads, its features are the tagger's in order; a constituent
    model's architecture is the tagger's too.
    """
    from qgcal.inference.constituent_model import ConstituentMeta, read_constituent_meta
    from qgcal.inference.errors import InferenceError
    from qgcal.inference.model_io import read_meta

    for name, tagger in sorted(cfg.taggers.items()):
        if not isinstance(tagger, (ModelTagger, ConstituentTagger)):
            continue
        constituents = isinstance(tagger, ConstituentTagger)
        path = model_path(cfg, tagger)
        if not path.is_file():
            raise ConfigError(
                f"taggers.{name}.model: no model file {path}; run 'qgcal train --config <config>' first "
                f"(or point 'model' at an existing {'.safetensors' if constituents else '.skops'} file)"
            )
        try:
            meta = read_constituent_meta(path) if constituents else read_meta(path)
        except InferenceError as err:
            raise ConfigError(f"taggers.{name}.model: {err}") from None
        if list(meta.features) != list(tagger.features):
            raise ConfigError(
                f"taggers.{name}.features: {list(tagger.features)} but the model {path} was trained on "
                f"{list(meta.features)}; use the model's features in its order, or retrain with 'qgcal train'"
            )
        arch = meta.architecture if isinstance(meta, ConstituentMeta) else None
        if isinstance(tagger, ConstituentTagger) and arch != tagger.architecture:
            raise ConfigError(
                f"taggers.{name}.architecture: {tagger.architecture} but the model {path} is a "
                f"{arch} network; set architecture to match, or retrain with 'qgcal train'"
            )


Problem = tuple[tuple[str, ...], str]  # (what was asked of the file, the one-line message)


def _check_file(cfg: Config, path: Path, tasks: Sequence[FileTask]) -> tuple[list[tuple[str, ...]], list[Problem]]:
    """What the config asks of one file (trees, branches, bookkeeping histogram or tree; metadata only).

    Returns what was asked and what the file lacks; an unreadable file raises InputError.
    """
    from qgcal.rootio import open_other_tree, open_tree, read_th1_bin, resolve_branches

    asked: list[tuple[str, ...]] = []
    problems: list[Problem] = []
    first = tasks[0]
    sample = cfg.samples[first.sample]
    for tree in sorted({t.tree for t in tasks}):
        of_tree = [t for t in tasks if t.tree == tree]
        if tree == cfg.tree:
            key = "tree"
        elif tree == sample.tree:
            key = f"samples.{first.sample}.tree"
        else:
            key = " and ".join(f"variations.{v}.tree" for v in sorted({t.variation for t in of_tree}))
        what: tuple[str, ...] = ("tree", first.sample, tree)
        asked.append(what)
        try:
            ot = open_tree(path, tree, config_key=key)
        except InputError as err:
            if "no tree" in str(err) or "not a TTree" in str(err):
                problems.append((what, str(err)))
                continue
            raise
        with ot:
            wanted = {}
            for t in of_tree:
                for _, expr, ckey in t.branches:
                    wanted[expr] = (parse_branch_expr(expr), ckey)
                for expr in t.weight_multiply:
                    wanted[expr] = (parse_branch_expr(expr), f"variations.{t.variation}.multiply")
                for expr in t.weight_divide:
                    wanted[expr] = (parse_branch_expr(expr), f"variations.{t.variation}.divide")
                if t.sumw_branch:
                    wanted[t.sumw_branch] = (parse_branch_expr(t.sumw_branch), f"samples.{t.sample}.sum_of_weights")
            for expr, spec in sorted(wanted.items()):
                what = ("branch", first.sample, tree, spec[0].name)
                asked.append(what)
                try:
                    resolve_branches(ot, {expr: spec})
                except InputError as err:
                    problems.append((what, str(err)))
            sow = sample.sum_of_weights
            if sample.kind == "mc" and sow is not None and sow.source == "branch" and sow.tree is not None:
                # the bookkeeping tree (CMS Runs/genEventSumw): there, with its branch
                assert sow.branch is not None
                what = ("bookkeeping", first.sample, sow.tree, sow.branch)
                if what not in asked:
                    asked.append(what)
                    bkey = f"samples.{first.sample}.sum_of_weights.branch"
                    try:
                        other = open_other_tree(ot, sow.tree, config_key=bkey)
                        resolve_branches(other, {sow.branch: (parse_branch_expr(sow.branch), bkey)})
                    except InputError as err:
                        problems.append((what, str(err)))
            if sample.kind == "mc" and sow is not None and sow.source == "histogram":
                assert sow.histogram is not None and sow.bin is not None
                what = ("histogram", first.sample, sow.histogram)
                if what in asked:
                    continue
                asked.append(what)
                try:
                    read_th1_bin(ot, sow.histogram, sow.bin, config_key=f"samples.{first.sample}.sum_of_weights")
                except InputError as err:
                    problems.append((what, str(err)))
    return asked, problems


Checked = tuple[list[tuple[str, ...]], list[Problem], str | None]  # asked, lacking, or why unreadable

#: files per worker below which the headers are read in this process (a fork and a pickled
#: config cost about what reading a few files' headers does)
FILES_PER_WORKER = 8


def _check_files(cfg: Config, files: Sequence[tuple[str, list[FileTask]]]) -> list[Checked]:
    """:func:`_check_file` of every file, in order, over up to ``executor.workers`` forked processes.

    Reading a file's headers (~10-25 ms: uproot parses the TFile and TTree metadata in Python)
    is what ``qgcal validate`` spends its time on beyond imports; a campaign's O(1000) files
    take their share of a core each. Serial where there are few files or forking is unsafe.
    """
    from qgcal.executors import fork_map

    workers = min(cfg.executor.workers, len(files) // FILES_PER_WORKER)
    if workers <= 1:
        return _check_chunk((cfg, list(files)))
    n_chunks = 4 * workers  # interleaved: files of one sample (similar cost) spread over the chunks
    chunks = [(cfg, list(files[i::n_chunks])) for i in range(n_chunks)]
    done = fork_map(_check_chunk, chunks, workers)
    out: list[Checked] = [([], [], None)] * len(files)
    for i, results in enumerate(done):
        out[i::n_chunks] = results
    return out


def _check_chunk(item: tuple[Config, list[tuple[str, list[FileTask]]]]) -> list[Checked]:
    cfg, files = item
    out: list[Checked] = []
    for path, tasks in files:
        try:
            wanted, problems = _check_file(cfg, Path(path), tasks)
        except InputError as err:
            out.append(([], [], str(err)))
            continue
        out.append((wanted, problems, None))
    return out


def _proven(what: tuple[str, ...], proven: set[tuple[str, str]]) -> bool:
    """Whether a file not opened here (its jet tables are valid) has ``what``: a tree or branch
    of its (sample, tree), or its sample's bookkeeping histogram."""
    if what[0] in ("histogram", "bookkeeping"):
        return any(sample == what[1] for sample, _ in proven)
    return (what[1], what[2]) in proven


def preflight(
    cfg: Config,
    systs: Iterable[str] | None = None,
    *,
    unreadable: Literal["raise", "report"] = "report",
    open_files: bool = True,
) -> PreflightReport:
    """Every check that needs no event: raises ConfigError (exit 2) naming the key and the file.

    ``systs``: the systematics about to run (default: every one). Bad files (unreadable,
    or lacking what the others have) raise InputError (exit 1) with ``unreadable="raise"``;
    otherwise they are listed in the report and left to the run's bad-file policy.
    """
    names = list(systs) if systs is not None else cfg.variation_names()
    for s in names:
        cfg.variation(s)
    check_duplicate_files(cfg)
    tasks = _needed(cfg, names)
    by_file: dict[str, list[FileTask]] = {}
    for t in tasks:
        by_file.setdefault(t.path, []).append(t)
    for path, of_file in by_file.items():
        if not Path(path).is_file():
            t = of_file[0]
            raise ConfigError(
                f"{path}: input file not found (listed by samples.{t.sample}); fix the path or glob in the config"
            )
    check_models(cfg)
    report = PreflightReport(tasks=len(tasks), files=len(by_file))
    if not open_files:
        return report
    asked: dict[tuple[str, ...], int] = {}
    lacking: dict[tuple[str, ...], list[str]] = {}
    proven: set[tuple[str, str]] = set()  # (sample, tree) a file was already read for with this config
    to_open: list[tuple[str, list[FileTask]]] = []
    for path, of_file in sorted(by_file.items()):
        # a file whose jet tables are valid was read with these trees, branches and bookkeeping
        # (the first pass's provenance hashes them with the file's fingerprint, which the run
        # reuses): opening it again would only repeat that, at every run, for every file
        if all(pass_is_valid(cfg, t, 0) for t in of_file):
            proven.update((t.sample, t.tree) for t in of_file)
            continue
        to_open.append((path, of_file))
    for wanted, problems, unreadable_file in _check_files(cfg, to_open):
        if unreadable_file is not None:  # not a readable ROOT file: the bad-file policy decides
            report.unreadable.append(unreadable_file)
            continue
        for what in wanted:
            asked[what] = asked.get(what, 0) + 1
        for what, message in problems:
            lacking.setdefault(what, []).append(message)
    for what, messages in sorted(lacking.items()):
        # no file has it: the config names something that does not exist
        if len(messages) == asked[what] and not _proven(what, proven):
            every = f" (the same in all {len(messages)} files asked)" if len(messages) > 1 else ""
            raise ConfigError(messages[0] + every)
        report.unreadable.extend(messages)  # some files lack it: those files are bad
    if report.unreadable and unreadable == "raise":
        more = f" (and {len(report.unreadable) - 1} more bad file(s))" if len(report.unreadable) > 1 else ""
        raise InputError(report.unreadable[0] + more)
    return report
