"""``qgcal slurm submit | status | resubmit``: a sweep as a Slurm array plus a dependent final job."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

from qgcal.cli.options import add_inference_options

_OVERRIDES = (  # key of slurm:, type, metavar, help (None: keep the config's value)
    ("partition", str, "NAME", "--partition of both jobs"),
    ("account", str, "NAME", "--account (allocation charged)"),
    ("qos", str, "NAME", "--qos"),
    ("time", str, "TIME", "--time of each array task, e.g. 02:00:00"),
    ("final_time", str, "TIME", "--time of the final job"),
    ("cpus_per_task", int, "N", "--cpus-per-task, also each task's --workers"),
    ("mem", str, "SIZE", "--mem per job, e.g. 8G"),
    ("constraint", str, "FEATURES", "--constraint, e.g. cpu"),
    ("gres", str, "GRES", "--gres of the array tasks only, e.g. gpu:1"),
    ("array_throttle", int, "N", "at most N array tasks at once (--array=...%%N)"),
    ("workdir", str, "DIR", "--chdir of the jobs; logs go to DIR/logs (default <output>/slurm)"),
)


def _site_options(p: argparse.ArgumentParser, *, shard_size: bool) -> None:
    g = p.add_argument_group("site (override the config's slurm: section)")
    for key, typ, metavar, help_ in _OVERRIDES:
        g.add_argument("--" + key.replace("_", "-"), dest=key, type=typ, metavar=metavar, help=f"{help_} (slurm.{key})")
    if shard_size:
        g.add_argument(
            "--shard-size",
            dest="shard_size",
            type=int,
            metavar="N",
            help="file tasks per array task (slurm.shard_size)",
        )
    g.add_argument(
        "--sbatch",
        dest="extra_sbatch",
        action="append",
        metavar="OPTION",
        help="an extra #SBATCH option, written with '=': --sbatch=--mail-type=END "
        "(repeatable; added to slurm.extra_sbatch)",
    )
    g.add_argument(
        "--setup",
        dest="setup",
        action="append",
        metavar="LINE",
        help="a shell line run first in each job, e.g. 'module load python' (repeatable)",
    )


def register(sub: Any) -> None:
    p = sub.add_parser(
        "slurm",
        help="run a sweep as a Slurm array job plus a dependent final job",
        description="One array task per shard of the sweep's sorted file tasks (qgcal sweep --task-index), "
        "then a final job (--dependency=afterok, --kill-on-invalid-dep=yes) running the final passes and "
        "combine. Scripts, logs and <output>/slurm/submission.json are written under <output>/slurm/.",
    )
    ssub = p.add_subparsers(dest="slurm_command", metavar="SUBCOMMAND", required=True)

    s = ssub.add_parser("submit", help="write the scripts and sbatch the array and the final job")
    s.add_argument("--config", "-c", required=True, type=Path, help="YAML config")
    s.add_argument("--syst", nargs="+", metavar="NAME", help="systematics (default: nominal and all variations)")
    s.add_argument("--dry-run", action="store_true", help="print the scripts and sbatch commands; submit nothing")
    s.add_argument(
        "--no-combine",
        dest="combine",
        action="store_false",
        help="the final job runs the final passes only, not qgcal combine",
    )
    s.add_argument(
        "--qgcal-command",
        metavar="CMD",
        help="how jobs call qgcal (default: this Python's '-m qgcal', i.e. this install)",
    )
    _site_options(s, shard_size=True)
    add_inference_options(s)
    s.set_defaults(func=_submit)

    st = ssub.add_parser("status", help="array tasks, final job, and which shards' artifacts are missing")
    where = st.add_mutually_exclusive_group()
    where.add_argument("--config", "-c", type=Path, help="YAML config (default: the one recorded)")
    where.add_argument(
        "--submission",
        type=Path,
        help="submission.json or its directory (default: ./slurm/submission.json or ./submission.json)",
    )
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=_status)

    r = ssub.add_parser("resubmit", help="resubmit shards whose artifacts are missing or stale, and a final job")
    r.add_argument("--config", "-c", required=True, type=Path, help="YAML config")
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("--failed", action="store_true", help="only shards whose artifacts are missing or stale")
    which.add_argument("--all", action="store_true", help="every shard (valid artifacts are skipped anyway)")
    r.add_argument("--dry-run", action="store_true", help="print the scripts and sbatch commands; submit nothing")
    _site_options(r, shard_size=False)
    add_inference_options(r)
    r.set_defaults(func=_resubmit)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = [k for k, _, _, _ in _OVERRIDES] + ["shard_size", "extra_sbatch", "setup"]
    return {k: getattr(args, k, None) for k in keys}


def _task_args(args: argparse.Namespace) -> list[str] | None:
    """Inference overrides passed on to every array task (checked here, not in 1000 tasks)."""
    from qgcal.errors import ConfigError
    from qgcal.inference.config import validate_url

    if getattr(args, "triton_url", None):
        try:
            validate_url(args.triton_url)
        except ValueError as err:
            raise ConfigError(f"--triton-url: {err}") from None
    out: list[str] = []
    for opt in ("backend", "device", "triton_url"):
        value = getattr(args, opt, None)
        if value:
            out += ["--" + opt.replace("_", "-"), value]
    return out or None


def _submit(args: argparse.Namespace) -> int:
    from qgcal.config import load_config
    from qgcal.workflows import slurm

    cfg = load_config(args.config)
    opts = slurm.slurm_options(cfg, **_overrides(args))
    command = shlex.split(args.qgcal_command) if args.qgcal_command else None
    sub, plan, rnd = slurm.submit(
        cfg,
        args.config,
        opts,
        systs=args.syst,
        dry_run=args.dry_run,
        combine=args.combine,
        command=command,
        task_args=_task_args(args) or (),
    )
    if rnd is None:
        print(slurm.render(plan), end="")
        print(
            f"# {len(sub.shards)} array tasks ({len(sub.systs)} systematics, shards of "
            f"{sub.shard_size} file tasks); would record {sub.path}"
        )
        return 0
    print(
        f"submitted array job {rnd.array_job} ({len(sub.shards)} tasks: {len(sub.systs)} systematics, "
        f"shards of {sub.shard_size} file tasks) and final job {rnd.final_job} (afterok:{rnd.array_job})"
    )
    print(f"scripts and record: {sub.path.parent}; logs: {rnd.logs}")
    print(f"follow with: qgcal slurm status --config {args.config}")
    return 0


def _find_submission(args: argparse.Namespace) -> Any:
    from qgcal.config import load_config
    from qgcal.errors import QgcalError
    from qgcal.workflows import slurm

    if args.config is not None:
        cfg = load_config(args.config)
        return cfg, slurm.load_submission(cfg.output_path / "slurm" / "submission.json")
    if args.submission is not None:
        sub = slurm.load_submission(args.submission)
    else:
        for cand in (Path("slurm/submission.json"), Path("submission.json")):
            if cand.is_file():
                sub = slurm.load_submission(cand)
                break
        else:
            raise QgcalError("no submission.json in ./slurm or here; pass --config C or --submission FILE")
    return load_config(sub.config), sub


def _status(args: argparse.Namespace) -> int:
    from qgcal.workflows import slurm

    cfg, sub = _find_submission(args)
    report = slurm.status(cfg, sub)
    if args.json:
        print(json.dumps(report, indent=1, sort_keys=True))
        return 0
    print(f"submission {report['submission']}")
    print(
        f"config {report['config']}; {len(report['systs'])} systematics; "
        f"{report['n_shards']} shards of <= {report['shard_size']} file tasks"
    )
    for r in report["rounds"]:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(r["array_states"].items())) or "-"
        n = len(r["shards"])
        array = f"array job {r['array_job']} ({n} task{'s' * (n != 1)}: {counts})" if r["array_job"] else "no array"
        final = r["final_state"] or "UNKNOWN"
        if r["final_reason"] and r["final_reason"] != "None":
            final += f" ({r['final_reason']})"
        print(f"round {r['round']} ({r['kind']} {r['submitted']}): {array}; final job {r['final_job']}: {final}")
        if r["final_state"] not in (None, "COMPLETED", "PENDING", "RUNNING") and r["final_log"]:
            print(f"  final job log: {r['final_log']}")
    rows = report["shards"]
    shown = rows if len(rows) <= 50 else [x for x in rows if x["missing"] or x["state"] != "COMPLETED"]
    print(f"{'shard':>5}  {'job':<14} {'state':<12} artifacts")
    for x in shown:
        arts = "done" if not x["missing"] else f"missing {x['missing']}/{x['tasks']} (first: {x['first_missing']})"
        print(f"{x['index']:>5}  {x['job'] or '-':<14} {x['state'] or '-':<12} {arts}")
        if x.get("log"):
            print(f"{'':>7}log: {x['log']}")
    missing = report["missing_shards"]
    print(
        f"{report['n_shards'] - len(missing)} of {report['n_shards']} shards done"
        + (f"; missing or stale: {_ranges(missing)}" if missing else "")
    )
    res = report["results"]
    print("results: " + ", ".join(f"{k} {'ok' if v else 'missing'}" for k, v in res.items()))
    if report["done"]:
        print("done")
    elif report["active"]:
        print(f"{len(report['active'])} jobs still queued or running")
    elif missing or not all(res.values()):
        print(f"next: qgcal slurm resubmit --config {report['config']} --failed")
    return 0


def _ranges(idx: list[int]) -> str:
    from qgcal.workflows.slurm import array_spec

    return array_spec(idx, None)


def _resubmit(args: argparse.Namespace) -> int:
    from qgcal.config import load_config
    from qgcal.workflows import slurm

    cfg = load_config(args.config)
    sub = slurm.load_submission(cfg.output_path / "slurm" / "submission.json")
    opts = slurm.slurm_options(cfg, **_overrides(args))  # the shard size stays the recorded one
    plan, rnd = slurm.resubmit(
        cfg, sub, opts, only_failed=args.failed, dry_run=args.dry_run, task_args=_task_args(args)
    )
    if plan is None:
        print("nothing to resubmit: every shard's artifacts are valid and the last final job completed")
        return 0
    if rnd is None:
        print(slurm.render(plan), end="")
        return 0
    what = f"array job {rnd.array_job} (shards {_ranges(rnd.shards)})" if rnd.array_job else "no array tasks"
    dep = f" (afterok:{rnd.array_job})" if rnd.array_job else ""
    print(f"resubmitted {what} and final job {rnd.final_job}{dep}")
    return 0
