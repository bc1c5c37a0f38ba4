"""A sweep as a Slurm array job (one task per file shard) plus a dependent final job.

The array runs ``qgcal sweep --task-index $SLURM_ARRAY_TASK_ID`` over the same
sorted, deduplicated file tasks a local sweep uses, cut into shards of
``slurm.shard_size``; each task writes only its own artifacts (atomically) and
skips valid ones, so a resubmitted task is idempotent. The final job
(``--dependency=afterok:<array>``, ``--kill-on-invalid-dep=yes``, so a failed
task cancels it instead of leaving it pending forever) runs the final passes
(``qgcal sweep --finalise-only``) and ``qgcal combine``. Merging is in sorted
order, so the results are byte-identical to a local sweep.

``<output>/slurm/submission.json`` records the shard map, the systematics and the
job ids of every round (submit, then each resubmit) for ``status`` and ``resubmit``.
Job states come from squeue, then ``scontrol show job`` (kept ~MinJobAge after the
end), then sacct where accounting exists; artifacts are the ground truth for what
is done (:func:`qgcal.workflows.sweep.missing_artifacts`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qgcal import __version__
from qgcal.artifacts import write_json_atomic
from qgcal.config import Config, Slurm
from qgcal.errors import ConfigError, QgcalError
from qgcal.plan import FileTask
from qgcal.stages import pass_index
from qgcal.workflows.preflight import preflight
from qgcal.workflows.sweep import missing_artifacts, shards, sweep_tasks

__all__ = [
    "ACTIVE_STATES",
    "Plan",
    "Round",
    "SlurmError",
    "Submission",
    "array_spec",
    "default_command",
    "load_submission",
    "plan",
    "resubmit",
    "slurm_options",
    "status",
    "submit",
    "sweep_systs",
]

FORMAT = 1
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "CONFIGURING",
        "COMPLETING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
        "RESV_DEL_HOLD",
    }
)


class SlurmError(QgcalError):
    """A Slurm command is missing or refused a request."""


# ----------------------------------------------------------------------------- options


def slurm_options(cfg: Config, **overrides: Any) -> Slurm:
    """The config's ``slurm:`` section with CLI overrides (None = keep) applied and validated.

    ``extra_sbatch`` and ``setup`` given on the command line add to the config's lines.
    """
    for key in ("extra_sbatch", "setup"):
        if overrides.get(key):
            overrides[key] = [*getattr(cfg.slurm, key), *overrides[key]]
    opts = cfg.with_overrides({f"slurm.{k}": v for k, v in overrides.items()}).slurm
    for key in ("partition", "account", "qos", "time", "final_time", "mem", "constraint", "gres", "workdir"):
        _one_line(f"slurm.{key}", getattr(opts, key))
    for i, line in enumerate(opts.extra_sbatch):
        _one_line(f"slurm.extra_sbatch[{i}]", line)
    for i, line in enumerate(opts.setup):
        _one_line(f"slurm.setup[{i}]", line)
    return opts


def _one_line(key: str, value: str | None) -> None:
    if value is not None and ("\n" in value or "\r" in value or "\0" in value):
        raise ConfigError(f"{key}: must be a single line, found {value!r}")


def sweep_systs(cfg: Config, systs: Sequence[str] | None) -> list[str]:
    """What ``qgcal sweep --syst`` runs: the named systematics (default all), nominal always included."""
    names = list(systs) if systs else cfg.variation_names()
    if "nominal" not in names:
        names = ["nominal", *names]
    for s in names:
        cfg.variation(s)
    return list(dict.fromkeys(names))


def default_command() -> list[str]:
    """This environment's qgcal: the jobs run exactly the install that submitted them."""
    return [sys.executable, "-m", "qgcal"]


def array_spec(indices: Sequence[int], throttle: int | None) -> str:
    """``0-4,7,9-10%2``: sorted indices compressed to ranges, with the ``%N`` throttle."""
    idx = sorted(set(indices))
    parts: list[str] = []
    start = prev = idx[0]
    for i in [*idx[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(f"{start}-{prev}" if prev > start else str(start))
        if i is not None:
            start = prev = i
    return ",".join(parts) + (f"%{throttle}" if throttle else "")


# ----------------------------------------------------------------------------- the record


@dataclass
class Round:
    """One sbatch of the array (possibly a subset of shards) and its final job."""

    kind: str  # "submit" | "resubmit"
    submitted: str
    shards: list[int]
    array_script: str | None
    final_script: str
    logs: str
    job_name: str
    array_job: str | None = None
    final_job: str | None = None


@dataclass
class Submission:
    config: str
    output: str
    systs: list[str]
    shard_size: int
    shards: list[list[str]]
    command: list[str]
    task_args: list[str]
    combine: bool
    rounds: list[Round] = field(default_factory=list)
    qgcal_version: str = __version__
    format: int = FORMAT

    @property
    def path(self) -> Path:
        return Path(self.output) / "slurm" / "submission.json"

    def save(self) -> None:
        write_json_atomic(self.path, asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Submission:
        rounds = [Round(**r) for r in data.pop("rounds", [])]
        return cls(**data, rounds=rounds)


def load_submission(path: Path) -> Submission:
    if path.is_dir():
        path = path / "submission.json"
    if not path.is_file():
        raise QgcalError(f"{path}: no Slurm submission recorded here; run qgcal slurm submit --config C first")
    try:
        return Submission.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as err:
        raise QgcalError(f"{path}: not a qgcal submission record ({err}); submit again") from None


def _key(t: FileTask) -> str:
    return f"{t.variation}@{t.key}"


def shard_map(tasks: Sequence[FileTask], shard_size: int) -> list[list[str]]:
    """The ``variation@sample/slice/path`` keys of each shard (recorded, then checked on reuse)."""
    return [[_key(t) for t in part] for part in shards(tasks, shard_size)]


# ----------------------------------------------------------------------------- scripts


@dataclass
class Plan:
    """Scripts and sbatch command lines of one round (what --dry-run prints)."""

    array_script: Path | None
    array_text: str | None
    final_script: Path
    final_text: str
    array_cmd: list[str] | None
    final_cmd: list[str]  # contains ARRAY_JOB_ID as a placeholder until the array is submitted
    shards: list[int]
    logs: Path
    job_name: str


def _job_name(cfg: Config) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", cfg.name).strip("_") or "sweep"
    return name if name.startswith("qgcal") else f"qgcal-{name}"


def _workdir(cfg: Config, opts: Slurm) -> Path:
    if not opts.workdir:
        return cfg.output_path / "slurm"
    p = Path(os.path.expanduser(os.path.expandvars(opts.workdir)))
    return (p if p.is_absolute() else cfg.base_path / p).resolve()


def _header(name: str, opts: Slurm, logs: Path, workdir: Path, *, final: bool, array: str | None) -> list[str]:
    sb = [f"--job-name={name}"]
    if array is not None:
        sb.append(f"--array={array}")
        pattern = "%x-%A_%a"
    else:
        pattern = "%x-%j"
    # absolute: relative -o/-e paths resolve inside --chdir and every task would die
    sb += [
        f"--output={logs / pattern}.out",
        f"--error={logs / pattern}.err",
        f"--chdir={workdir}",
        f"--time={opts.final_time if final else opts.time}",
        f"--cpus-per-task={opts.cpus_per_task}",
    ]
    for key in ("mem", "partition", "account", "qos", "constraint"):
        value = getattr(opts, key)
        if value:
            sb.append(f"--{key}={value}")
    if opts.gres and not final:  # the final job reads histograms only: no GPU
        sb.append(f"--gres={opts.gres}")
    lines = [f"#SBATCH {s}" for s in sb]
    for extra in opts.extra_sbatch:
        extra = extra.strip()
        lines.append(extra if extra.startswith("#SBATCH") else f"#SBATCH {extra}")
    return lines


def _script(header: list[str], opts: Slurm, comment: str, body: list[str]) -> str:
    lines = [
        "#!/bin/bash",
        *header,
        f"# {comment}",
        f"# written by qgcal {__version__} (qgcal slurm)",
        "set -eo pipefail",
        "export PYTHONUNBUFFERED=1",
    ]
    if opts.setup:
        lines += ["# set-up (slurm.setup)", *opts.setup]
    return "\n".join([*lines, *body]) + "\n"


def plan(
    cfg: Config, sub: Submission, opts: Slurm, indices: Sequence[int], *, tag: str, with_array: bool = True
) -> Plan:
    """The array script for ``indices`` and the final job script; nothing is written."""
    slurm_dir = Path(sub.output) / "slurm"
    workdir = _workdir(cfg, opts)
    logs = workdir / "logs"
    name = _job_name(cfg)
    cmd = " ".join(shlex.quote(c) for c in sub.command)
    base = f"--config {shlex.quote(sub.config)} --syst {' '.join(shlex.quote(s) for s in sub.systs)}"
    array_path = array_text = array_cmd = None
    if with_array:
        array_path = slurm_dir / f"array{tag}.sh"
        extra = " ".join(shlex.quote(a) for a in sub.task_args)
        # a task is a batch job of its own: a local pool of --cpus-per-task workers, never Dask
        kind = "serial" if cfg.executor.kind == "serial" else "process"
        run = (
            f'{cmd} sweep {base} --task-index "$SLURM_ARRAY_TASK_ID" --shard-size {sub.shard_size} '
            f'--executor {kind} --workers "${{SLURM_CPUS_PER_TASK:-{opts.cpus_per_task}}}"'
            + (f" {extra}" if extra else "")
        )
        array_text = _script(
            _header(name, opts, logs, workdir, final=False, array=array_spec(indices, opts.array_throttle)),
            opts,
            f"{len(sub.shards)} shards of <= {sub.shard_size} file tasks; this array: {len(indices)}",
            ['echo "qgcal: shard $SLURM_ARRAY_TASK_ID of array job $SLURM_ARRAY_JOB_ID on $(hostname)"', run],
        )
        array_cmd = ["sbatch", "--parsable", str(array_path)]
    final_path = slurm_dir / f"final{tag}.sh"
    body = [
        'echo "qgcal: final job $SLURM_JOB_ID on $(hostname)"',
        f"{cmd} sweep {base} --finalise-only --executor serial",
    ]
    if sub.combine:
        body.append(f"{cmd} combine --config {shlex.quote(sub.config)}")
    final_text = _script(
        _header(f"{name}-final", opts, logs, workdir, final=True, array=None),
        opts,
        "merge + final passes of every systematic" + (", then combine" if sub.combine else ""),
        body,
    )
    final_cmd = ["sbatch", "--parsable"]
    if with_array:
        final_cmd += ["--dependency=afterok:ARRAY_JOB_ID", "--kill-on-invalid-dep=yes"]
    final_cmd.append(str(final_path))
    return Plan(array_path, array_text, final_path, final_text, array_cmd, final_cmd, list(indices), logs, name)


def render(p: Plan) -> str:
    """What --dry-run prints: each script, then the sbatch command lines."""
    out = []
    if p.array_script is not None:
        out += [f"# ---- {p.array_script}", p.array_text or ""]
    out += [f"# ---- {p.final_script}", p.final_text, "# ---- sbatch (not submitted: --dry-run)"]
    if p.array_cmd is not None:
        out.append("ARRAY_JOB_ID=$(" + shlex.join(p.array_cmd) + ")")
    out.append(shlex.join(p.final_cmd).replace("ARRAY_JOB_ID", "$ARRAY_JOB_ID"))
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- running Slurm


def _slurm(cmd: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    if shutil.which(cmd[0]) is None:
        raise SlurmError(
            f"{cmd[0]} not found on PATH; run this on a Slurm login node "
            "(qgcal slurm submit --dry-run only prints the scripts)"
        )
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        reason = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise SlurmError(f"{shlex.join(cmd)} failed (exit {proc.returncode}): {reason}")
    return proc


def _sbatch(cmd: list[str]) -> str:
    return _slurm(cmd).stdout.strip().split(";")[0]


def _slurm_config() -> dict[str, str]:
    proc = _slurm(["scontrol", "show", "config"], check=False)
    out = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _check_array_size(n_shards: int, n_tasks: int, shard_size: int) -> None:
    try:
        max_size = int(_slurm_config().get("MaxArraySize", "1001"))
    except ValueError:
        return
    if n_shards - 1 >= max_size:  # array indices must be < MaxArraySize
        need = -(-n_tasks // max_size)
        raise ConfigError(
            f"slurm.shard_size: {n_shards} shards of {shard_size} exceed this cluster's "
            f"MaxArraySize {max_size}; set slurm.shard_size (or --shard-size) to at least {need}"
        )


def _submit_round(p: Plan, sub: Submission, kind: str) -> Round:
    for path, text in ((p.array_script, p.array_text), (p.final_script, p.final_text)):
        if path is not None and text is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(0o755)
    p.logs.mkdir(parents=True, exist_ok=True)
    rnd = Round(
        kind,
        dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        p.shards,
        str(p.array_script) if p.array_script else None,
        str(p.final_script),
        str(p.logs),
        p.job_name,
    )
    if p.array_cmd is not None:
        rnd.array_job = _sbatch(p.array_cmd)
    final_cmd = [a.replace("ARRAY_JOB_ID", rnd.array_job or "") for a in p.final_cmd]
    try:
        rnd.final_job = _sbatch(final_cmd)
    finally:
        sub.rounds.append(rnd)
        sub.save()  # the array is recorded even if the final sbatch failed
    return rnd


def submit(
    cfg: Config,
    config_path: Path,
    opts: Slurm,
    *,
    systs: Sequence[str] | None = None,
    dry_run: bool = False,
    combine: bool = True,
    command: Sequence[str] | None = None,
    task_args: Sequence[str] = (),
) -> tuple[Submission, Plan, Round | None]:
    """Write the scripts, sbatch the array and the dependent final job, record both."""
    names = sweep_systs(cfg, systs)
    preflight(cfg, names)  # what 'qgcal validate' checks, before any job is queued
    tasks = sweep_tasks(cfg, names)
    if not tasks:
        raise ConfigError("samples: this sweep has no input files; nothing to submit")
    sub = Submission(
        config=str(config_path.resolve()),
        output=str(cfg.output_path),
        systs=names,
        shard_size=opts.shard_size,
        shards=shard_map(tasks, opts.shard_size),
        command=list(command or default_command()),
        task_args=list(task_args),
        combine=combine,
    )
    p = plan(cfg, sub, opts, range(len(sub.shards)), tag="")
    if dry_run:
        return sub, p, None
    try:
        previous = load_submission(sub.path) if sub.path.is_file() else None
    except QgcalError:
        previous = None  # an unreadable record tracks nothing; it is replaced
    if previous is not None:
        _refuse_if_active(previous, "submit again")
    _check_array_size(len(sub.shards), len(tasks), opts.shard_size)
    return sub, p, _submit_round(p, sub, "submit")


# ----------------------------------------------------------------------------- job states


@dataclass
class JobState:
    state: str
    reason: str = ""
    exit_code: str = ""
    source: str = ""


def _expand_ids(spec: str) -> list[str]:
    spec = spec.split("%")[0].strip("[]")
    out: list[str] = []
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            out += [str(i) for i in range(int(a), int(b) + 1)]
        elif part:
            out.append(part)
    return out


def _squeue(ids: list[str]) -> dict[str, JobState]:
    def query(arg: str) -> subprocess.CompletedProcess[str]:
        return _slurm(["squeue", "-h", "-r", "-j", arg, "-o", "%i|%T|%r"], check=False)

    procs = [query(",".join(ids))]
    if procs[0].returncode != 0 and len(ids) > 1:  # an id Slurm has forgotten fails the whole call
        procs = [query(i) for i in ids]
    out: dict[str, JobState] = {}
    for proc in procs:
        for line in proc.stdout.splitlines():
            jid, _, rest = line.strip().partition("|")
            state, _, reason = rest.partition("|")
            if jid:
                out[jid] = JobState(state, reason, source="squeue")
    return out


def _scontrol(job: str) -> dict[str, JobState]:
    proc = _slurm(["scontrol", "-o", "show", "job", job], check=False)
    out: dict[str, JobState] = {}
    for line in proc.stdout.splitlines():
        f = dict(re.findall(r"(?:^|\s)(JobId|ArrayJobId|ArrayTaskId|JobState|Reason|ExitCode)=(\S*)", line))
        if "JobState" not in f:
            continue
        js = JobState(f["JobState"], f.get("Reason", ""), f.get("ExitCode", ""), "scontrol")
        if f.get("ArrayJobId") and f.get("ArrayTaskId"):
            for tid in _expand_ids(f["ArrayTaskId"]):
                out[f"{f['ArrayJobId']}_{tid}"] = js
        else:
            out[f["JobId"]] = js
    return out


def _sacct(ids: list[str]) -> dict[str, JobState]:
    if _slurm_config().get("AccountingStorageType", "accounting_storage/none") == "accounting_storage/none":
        return {}
    proc = _slurm(["sacct", "-n", "-P", "-X", "-j", ",".join(ids), "-o", "JobID,State,ExitCode"], check=False)
    out = {}
    for line in proc.stdout.splitlines():
        parts = line.split("|")
        if len(parts) >= 3:
            out[parts[0]] = JobState(parts[1].split()[0] if parts[1] else "", "", parts[2], "sacct")
    return out


def job_states(sub: Submission) -> dict[str, JobState]:
    """State of every array task (``ARRAY_TASK``) and final job (``ID``) of every round."""
    wanted: list[str] = []
    jobs: list[str] = []
    for r in sub.rounds:
        if r.array_job:
            jobs.append(r.array_job)
            wanted += [f"{r.array_job}_{i}" for i in r.shards]
        if r.final_job:
            jobs.append(r.final_job)
            wanted.append(r.final_job)
    if not jobs:
        return {}
    states = _squeue(jobs)
    for job in jobs:
        if any(w not in states for w in wanted if w == job or w.startswith(job + "_")):
            for k, v in _scontrol(job).items():
                states.setdefault(k, v)
    missing = [w for w in wanted if w not in states]
    if missing:
        for k, v in _sacct(sorted({m.split("_")[0] for m in missing})).items():
            states.setdefault(k, v)
    return {w: states.get(w, JobState("UNKNOWN", "finished over MinJobAge ago and no accounting")) for w in wanted}


def _active(sub: Submission, states: dict[str, JobState]) -> list[str]:
    return [f"{k} {v.state}" for k, v in states.items() if v.state in ACTIVE_STATES]


def _refuse_if_active(sub: Submission, what: str) -> None:
    if shutil.which("squeue") is None or not sub.rounds:
        return
    active = _active(sub, job_states(sub))
    if active:
        jobs = " ".join(sorted({j for r in sub.rounds for j in (r.array_job, r.final_job) if j}))
        raise SlurmError(
            f"jobs of the submission in {sub.path} are still queued ({', '.join(active[:5])}"
            f"{', ...' if len(active) > 5 else ''}); wait for them (qgcal slurm status) "
            f"or scancel {jobs}, then {what}"
        )


# ----------------------------------------------------------------------------- status / resubmit


def _check_shard_map(sub: Submission, tasks: Sequence[FileTask]) -> None:
    current = shard_map(tasks, sub.shard_size)
    if current != sub.shards:
        first = next(
            (i for i, (a, b) in enumerate(zip(current, sub.shards)) if a != b), min(len(current), len(sub.shards))
        )
        raise ConfigError(
            f"{sub.config}: the file tasks changed since the submission in {sub.path} "
            f"(shard {first} differs); submit afresh with qgcal slurm submit"
        )


def status(cfg: Config, sub: Submission, *, query: bool = True) -> dict[str, Any]:
    """Job states of every round, the artifacts each shard still lacks, and whether results exist."""
    all_tasks = sweep_tasks(cfg, sub.systs)
    _check_shard_map(sub, all_tasks)
    states = job_states(sub) if query and shutil.which("squeue") else {}
    tasks = {_key(t): t for t in all_tasks}
    rounds = []
    latest: dict[int, tuple[str, JobState]] = {}
    logs: dict[str, str] = {}
    for n, r in enumerate(sub.rounds):
        for i in r.shards:
            logs[f"{r.array_job}_{i}"] = f"{r.logs}/{r.job_name}-{r.array_job}_{i}.err"
        tstates = {i: states.get(f"{r.array_job}_{i}") for i in r.shards} if r.array_job else {}
        for i, s in tstates.items():
            if s is not None:
                latest[i] = (f"{r.array_job}_{i}", s)
        counts: dict[str, int] = {}
        for s in tstates.values():
            if s is not None:
                counts[s.state] = counts.get(s.state, 0) + 1
        final = states.get(r.final_job or "")
        rounds.append(
            {
                "round": n,
                "kind": r.kind,
                "submitted": r.submitted,
                "array_job": r.array_job,
                "final_job": r.final_job,
                "shards": r.shards,
                "array_states": counts,
                "final_log": f"{r.logs}/{r.job_name}-final-{r.final_job}.err" if r.final_job else None,
                "final_state": final.state if final else None,
                "final_reason": final.reason if final else None,
            }
        )
    shard_rows = []
    for i, keys in enumerate(sub.shards):
        miss = missing_artifacts(cfg, [tasks[k] for k in keys])
        job, js = latest.get(i, (None, None))
        row: dict[str, Any] = {
            "index": i,
            "job": job,
            "state": js.state if js else None,
            "missing": len(miss),
            "tasks": len(keys),
        }
        if miss:  # the earliest pass that is missing points at the cause
            t, stage = min(miss, key=lambda m: pass_index(m[1]))
            row["first_missing"] = f"{stage} of {t.path} for {t.variation}"
        if job and js and js.state not in ACTIVE_STATES | {"COMPLETED"}:
            row["log"] = logs.get(job)
        shard_rows.append(row)
    results = {s: (cfg.output_path / "results" / s / "scale_factors.json").is_file() for s in sub.systs}
    if sub.combine:
        results["combined"] = (cfg.output_path / "results" / "combined" / "scale_factors.json").is_file()
    missing = [r["index"] for r in shard_rows if r["missing"]]
    last_final = rounds[-1]["final_state"] if rounds else None
    active = _active(sub, states)
    return {
        "submission": str(sub.path),
        "config": sub.config,
        "systs": sub.systs,
        "shard_size": sub.shard_size,
        "n_shards": len(sub.shards),
        "rounds": rounds,
        "shards": shard_rows,
        "missing_shards": missing,
        "results": results,
        "active": active,
        "done": not missing and not active and all(results.values()) and last_final in {"COMPLETED", "UNKNOWN"},
    }


def resubmit(
    cfg: Config,
    sub: Submission,
    opts: Slurm,
    *,
    only_failed: bool = True,
    dry_run: bool = False,
    task_args: Sequence[str] | None = None,
) -> tuple[Plan | None, Round | None]:
    """Resubmit the shards whose artifacts are missing or stale (or all) and a new final job.

    With nothing missing, only a final job is submitted, unless the last one completed.
    Refuses while jobs of the submission are still queued (they would race the new ones).
    """
    all_tasks = sweep_tasks(cfg, sub.systs)
    _check_shard_map(sub, all_tasks)
    if not dry_run:
        _refuse_if_active(sub, "resubmit")
    if task_args is not None:
        sub.task_args = list(task_args)
    if only_failed:
        tasks = {_key(t): t for t in all_tasks}
        indices = [i for i, keys in enumerate(sub.shards) if missing_artifacts(cfg, [tasks[k] for k in keys])]
    else:
        indices = list(range(len(sub.shards)))
    if not indices and sub.rounds and sub.rounds[-1].final_job and not dry_run:
        last = job_states(sub).get(sub.rounds[-1].final_job)
        if last is not None and last.state == "COMPLETED":
            return None, None
    tag = f".r{len(sub.rounds)}"
    p = plan(cfg, sub, opts, indices, tag=tag, with_array=bool(indices))
    if dry_run:
        return p, None
    return p, _submit_round(p, sub, "resubmit")
