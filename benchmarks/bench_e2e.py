"""End to end: ``qgcal run`` against a plain uproot read of the same branches, and coffea.

Run:  python benchmarks/bench_e2e.py [--events 1500000] [--workers 1,2] [--repeat 3]
          [--coffea-python /work/bench-venv/bin/python] [--workdir DIR] [--json F] [--plot F.png]

On one generated sample (``qgcal generate``: ``--events`` pseudo-data events and as many
nominal MC events, so the nominal run reads 2 x ``--events``), each repetition runs, in this
order and each as a fresh process with ``--workers`` worker processes:

1. ``read``: a plain ``uproot`` ``tree.arrays(<the branches qgcal reads>)`` of every file of the
   nominal run, the files spread over a process pool: the physical limit (decompression);
   ``read (isal)``: the same read with uproot's ZLIB baskets inflated by isal, as qgcal reads
   them (qgcal.rootio.use_zlib_library): the limit for a reader with the faster inflater;
2. ``qgcal``: ``qgcal run --syst nominal --force`` as a user runs it, plots on: the four passes
   with their artifacts, the final pass, the JSON results and the extraction plots (drawn every
   time: the index that lets a rerun on unchanged results skip them is removed first);
3. ``qgcal, no plots``: the same with ``plots.enabled: false`` (for reference);
4. ``coffea`` (with ``--coffea-python``, an interpreter with coffea installed: the ``bench`` extra
   of pyproject.toml, in its own environment): a coffea processor (``FuturesExecutor``, default
   chunking) applying the same event selection and filling the same histograms (per tagger:
   region x flavour x pT x tagger value, weighted), without the scale-factor extraction.

The config is configs/demo.yaml with the branch taggers only (a model tagger needs training)
and ``bootstrap: 0``, so that qgcal and coffea fill the same histograms (the bootstrap replicas
are extra work coffea would not do). Medians over ``--repeat`` interleaved repetitions (these
machines are shared); the ratios are read time / run time, i.e. throughput relative to the
physical limit (1.0 = as fast as just reading; ``/ read (isal)`` against the faster read).
``results at`` is when ``scale_factors.json`` was
written, from the start of the process. ``CPU, all processes`` is the CPU time of each command
with every process under it (a pool's fork server and workers, the processes that draw figures),
sampled with psutil: on a shared machine it moves less than the wall time, and on a saturated one
the wall time follows it. ``--workers 1,2`` repeats everything per worker count;
``--json`` saves the numbers and ``--plot`` draws throughput vs workers (docs/e2e_throughput.png).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

READ_SNIPPET = r"""
import json, sys
from concurrent.futures import ProcessPoolExecutor
import uproot

if sys.argv[3] == "isal":  # what qgcal.rootio.use_zlib_library switches, without importing qgcal
    uproot.compression._decompress_ZLIB.library = "isal"

def read(job):
    path, tree, branches, _ = job
    with uproot.open(path) as f:
        a = f[tree].arrays(branches, library="ak")
    return len(a)

jobs = json.loads(sys.argv[1])
workers = int(sys.argv[2])
if workers > 1:
    with ProcessPoolExecutor(workers) as pool:
        n = sum(pool.map(read, sorted(jobs, key=lambda j: -j[3])))  # largest first, like qgcal's scheduler
else:
    n = sum(read(j) for j in jobs)
print(n)
"""

COFFEA_SNIPPET = r"""
import json, sys
import awkward as ak
import numpy as np
import hist
from coffea import processor
from coffea.nanoevents import BaseSchema

spec = json.loads(sys.argv[1])
workers = int(sys.argv[2])
sel = spec["selection"]
b = spec["branches"]
scale = spec["energy_scale"]
quark = set(spec["quark"])
gluon = set(spec["gluon"])


class QG(processor.ProcessorABC):
    def process(self, events):
        is_data = events.metadata["dataset"] == "data"
        pt = events[b["jet_pt"]] * scale
        eta = events[b["jet_eta"]]
        n = ak.num(pt)
        two = n >= 2
        ev = events[two]
        pt, eta = pt[two], eta[two]
        order = ak.argsort(pt, ascending=False)
        def lead(x, i):
            return ak.to_numpy(x[order][:, i])
        pt0, pt1 = lead(pt, 0), lead(pt, 1)
        eta0, eta1 = lead(eta, 0), lead(eta, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            m = (pt1 > sel["subleading_pt_min_gev"]) & (pt0 < sel["leading_pt_max_gev"])
            m &= pt0 / pt1 < sel["pt_balance_max"]
        m &= (np.abs(eta0) < sel["abs_eta_max"]) & (np.abs(eta1) < sel["abs_eta_max"])
        if sel["require_trigger"]:
            m &= ak.to_numpy(ev[b["trigger"]]).astype(bool)
        if sel["require_cleaning"]:
            c = ev[b["jet_cleaning"]]
            m &= lead(c, 0).astype(bool) & lead(c, 1).astype(bool)
        if sel["min_ntracks"] is not None:
            t = ev[b["nTracks"]]
            m &= (lead(t, 0) >= sel["min_ntracks"]) & (lead(t, 1) >= sel["min_ntracks"])
        if is_data:
            w = np.ones(len(pt0))
        else:
            w = np.ones(len(pt0))
            for name in spec["event_weight"]:
                w = w * ak.to_numpy(ev[b[name]])
            m &= np.abs(w) < sel["abs_weight_max"]
        fwd0 = np.abs(eta0) >= np.abs(eta1)
        out = {}
        for region, first in (("forward", fwd0), ("central", ~fwd0)):
            jpt = np.where(first, pt0, pt1)[m]
            if is_data:
                flav = np.zeros(len(jpt), dtype=int)
            else:
                lab = np.abs(np.where(first, lead(ev[b["parton_label"]], 0), lead(ev[b["parton_label"]], 1))[m])
                flav = np.where(np.isin(lab, list(quark)), 1, np.where(np.isin(lab, list(gluon)), 2, 3))
            for tagger, t in spec["taggers"].items():
                var = ev[b[t["variable"]]]
                val = np.where(first, lead(var, 0), lead(var, 1))[m].astype(float)
                h = hist.Hist(
                    hist.axis.IntCategory([0, 1, 2, 3], name="flavour"),
                    hist.axis.Variable(spec["pt_bins_gev"], name="pt"),
                    hist.axis.Variable(t["edges"], name="score"),
                    storage=hist.storage.Weight(),
                )
                h.fill(flavour=flav, pt=jpt, score=val, weight=w[m])
                out[(tagger, region)] = h
        return {events.metadata["dataset"]: {"n": len(events), "h": out}}

    def postprocess(self, acc):
        return acc


fileset = {name: {"files": {p: spec["tree"] for p in paths}} for name, paths in spec["files"].items()}
run = processor.Runner(executor=processor.FuturesExecutor(workers=workers), schema=BaseSchema, savemetrics=False)
out = run(fileset, processor_instance=QG(), treename=spec["tree"])
print(sum(v["n"] for v in out.values()))
"""


def _config(base: Path, events: int, files: int, plots: bool) -> Path:
    from qgcal.configs import demo_config_text
    from qgcal.generate import generate_or_reuse

    sample = base / "sample"
    if not (sample / "truth.json").exists():
        print(f"generating {events:,} data + {events:,} MC events ...", file=sys.stderr)
    generate_or_reuse(sample, events=events, files=files, seed=7)
    doc = yaml.safe_load(demo_config_text())
    doc["lumi_pb"] = json.loads((sample / "truth.json").read_text())["luminosity_pb"]
    doc["taggers"] = {k: v for k, v in doc["taggers"].items() if v["kind"] != "model"}
    doc["bootstrap"] = 0
    doc["variations"] = {}
    doc["output"] = str(base / ("out-plots" if plots else "out-noplots"))
    doc["plots"] = {"enabled": plots}
    path = base / ("e2e.yaml" if plots else "e2e-noplots.yaml")
    path.write_text(yaml.safe_dump(doc))
    return path


def _read_jobs(config: Path) -> tuple[list[Any], int, dict[str, Any]]:
    """(path, tree, branches, entries) per file task of the nominal run, total entries, coffea spec."""
    import uproot

    from qgcal.config import BranchTagger, load_config, parse_branch_expr
    from qgcal.plan import plan_tasks

    cfg = load_config(config)
    jobs, total = [], 0
    for t in plan_tasks(cfg, "nominal"):
        names = sorted({parse_branch_expr(expr).name for _, expr, _ in t.branches})
        with uproot.open(t.path) as f:
            n = int(f[t.tree].num_entries)
        jobs.append((t.path, t.tree, names, n))
        total += n
    sel = cfg.selection
    files: dict[str, list[str]] = {}
    for t in plan_tasks(cfg, "nominal"):
        files.setdefault("data" if t.sample == cfg.data else f"{t.sample}_{t.slice}", []).append(t.path)
    spec = {
        "files": files,
        "tree": cfg.tree,
        "branches": dict(cfg.branches),
        "energy_scale": cfg.energy_scale(),
        "event_weight": list(cfg.event_weight),
        "quark": [abs(x) for x in cfg.truth.quark],
        "gluon": [abs(x) for x in cfg.truth.gluon],
        "pt_bins_gev": list(cfg.pt_bins_gev),
        "selection": {
            "subleading_pt_min_gev": sel.subleading_pt_min_gev,
            "leading_pt_max_gev": sel.leading_pt_max_gev,
            "pt_balance_max": sel.pt_balance_max,
            "abs_eta_max": sel.abs_eta_max,
            "abs_weight_max": sel.abs_weight_max,
            "require_trigger": sel.require_trigger,
            "require_cleaning": sel.require_cleaning,
            "min_ntracks": sel.min_ntracks,
        },
        "taggers": {
            n: {"variable": t.variable, "edges": list(t.bins.bin_edges())}
            for n, t in cfg.taggers.items()
            if isinstance(t, BranchTagger)
        },
    }
    return jobs, total, spec


# how often _timed samples the CPU times of the command's processes
CPU_POLL_S = 0.02


def _timed(cmd: list[str]) -> tuple[float, float]:
    """(wall time, CPU time of the command and every process under it).

    The CPU is sampled every ``CPU_POLL_S`` from each process's own counters (psutil), the last
    sample of a process counting: a pool's workers and fork server, and the processes forked to
    draw figures, are grandchildren that ``getrusage(RUSAGE_CHILDREN)`` does not see. A process
    living less than one poll is missed; one ending between polls loses at most a poll's CPU.
    CPU seconds vary less than wall seconds on a shared machine, and say what the run costs.
    """
    import psutil

    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err) as proc:
        root = psutil.Process(proc.pid)
        cpu: dict[tuple[int, float], float] = {}
        while proc.poll() is None:
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                procs = []
            for q in procs:
                try:
                    times = q.cpu_times()
                    cpu[(q.pid, q.create_time())] = times.user + times.system
                except psutil.Error:
                    pass
            time.sleep(CPU_POLL_S)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-3000:]
            raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{tail}")
    return wall, sum(cpu.values())


def _qgcal(config: Path, workers: int) -> tuple[float, float, float]:
    """(wall time, CPU time, seconds from the start until results/nominal/scale_factors.json was written)."""
    cmd = [sys.executable, "-m", "qgcal", "-q", "run", "--config", str(config), "--syst", "nominal", "--force"]
    doc = yaml.safe_load(config.read_text())
    results = Path(doc["output"]) / "results" / "nominal"
    # the figures are drawn again only when their inputs change (a forced rerun on the same sample
    # gives the same bytes and draws none): forget them, so that every repetition draws both
    (results / "plots" / ".qgcal-figures.json").unlink(missing_ok=True)
    start = time.time()
    wall, cpu = _timed([*cmd, "--workers", str(workers)])
    sf = results / "scale_factors.json"
    return wall, cpu, sf.stat().st_mtime - start


def _measure(args: argparse.Namespace, workers: int, cfg_plots: Path, cfg_noplots: Path) -> dict[str, Any]:
    jobs, events, spec = _read_jobs(cfg_plots)
    read_cmd = [sys.executable, "-c", READ_SNIPPET, json.dumps(jobs), str(workers), "zlib"]
    read_isal_cmd = [*read_cmd[:-1], "isal"]
    coffea_cmd = None
    if args.coffea_python:
        coffea_cmd = [str(args.coffea_python), "-c", COFFEA_SNIPPET, json.dumps(spec), str(workers)]
    times: dict[str, list[float]] = {"read": [], "read (isal)": [], "qgcal": [], "qgcal, no plots": [], "coffea": []}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    results_at: list[float] = []
    loads: list[float] = []

    def record(name: str, wall: float, cpu_s: float) -> None:
        times[name].append(wall)
        cpu[name].append(cpu_s)

    for r in range(args.repeat):
        loads.append(os.getloadavg()[0])  # 1-minute load average: how busy the shared machine was
        record("read", *_timed(read_cmd))
        record("read (isal)", *_timed(read_isal_cmd))
        wall, cpu_s, at = _qgcal(cfg_plots, workers)
        record("qgcal", wall, cpu_s)
        results_at.append(at)
        record("qgcal, no plots", *_qgcal(cfg_noplots, workers)[:2])
        if coffea_cmd:
            record("coffea", *_timed(coffea_cmd))
        line = ", ".join(f"{k} {v[-1]:.2f} s ({cpu[k][-1]:.1f} CPU-s)" for k, v in times.items() if v)
        print(f"workers {workers}, repetition {r + 1}: {line}", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items() if v}
    return {
        "events": events,
        "files": len(jobs),
        "workers": workers,
        "repeat": args.repeat,
        "median_s": med,
        "all_s": {k: v for k, v in times.items() if v},
        "median_cpu_s": med_cpu,
        "all_cpu_s": {k: v for k, v in cpu.items() if v},
        "qgcal_results_at_s": statistics.median(results_at),
        "load_average": statistics.median(loads),
        "cpus": os.cpu_count(),
        "ratio_to_read": {k: med["read"] / v for k, v in med.items()},
        "ratio_to_read_isal": {k: med["read (isal)"] / v for k, v in med.items()},
    }


def _plot(runs: list[dict[str, Any]], path: Path) -> None:
    """Throughput (M events/s) vs workers per run kind, and each as a fraction of the read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(runs[0]["median_s"])
    ws = [r["workers"] for r in runs]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for k in kinds:
        a1.plot(ws, [r["events"] / r["median_s"][k] / 1e6 for r in runs], "o-", label=k)
        a2.plot(ws, [r["ratio_to_read"][k] for r in runs], "o-", label=k)
    a1.set_xlabel("workers")
    a1.set_ylabel("throughput [M events/s]")
    a1.set_xticks(ws)
    a1.set_ylim(bottom=0)
    a1.legend(fontsize=8)
    load = max(r["load_average"] for r in runs)
    a1.set_title(
        f"{runs[0]['events'] / 1e6:g}M events, whole process, median of {runs[0]['repeat']} "
        f"({runs[0]['cpus']} CPUs, load <= {load:.1f})",
        fontsize=10,
    )
    a2.axhline(0.75, color="grey", linestyle="--", linewidth=0.8, label="goal for qgcal (0.75)")
    a2.set_xlabel("workers")
    a2.set_ylabel("throughput / plain uproot read")
    a2.set_xticks(ws)
    a2.set_ylim(0, 1.1)
    a2.legend(fontsize=8)
    a2.set_title("relative to the physical limit (the read)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_500_000, help="pseudo-data events (nominal MC: as many)")
    ap.add_argument("--files", type=int, default=1, help="files per data sample and per MC slice")
    ap.add_argument("--workers", default="2", help="worker processes; a list (1,2) measures each")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--coffea-python", type=Path, help="a Python with coffea (pip install -e '.[bench]')")
    ap.add_argument("--workdir", type=Path, help="keeps the sample between runs (default: a new temporary folder)")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    ap.add_argument("--plot", type=Path, help="a PNG of throughput vs workers (with a list of workers)")
    args = ap.parse_args()

    base = args.workdir or Path(tempfile.mkdtemp(prefix="qge2e-"))
    base.mkdir(parents=True, exist_ok=True)
    cfg_plots = _config(base, args.events, args.files, plots=True)
    cfg_noplots = _config(base, args.events, args.files, plots=False)
    runs = [_measure(args, int(w), cfg_plots, cfg_noplots) for w in str(args.workers).split(",")]
    print(json.dumps(runs, indent=2))
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2) + "\n")
    if args.plot:
        _plot(runs, args.plot)
    for res in runs:
        med, events = res["median_s"], res["events"]
        print(
            f"\n{events:,} events, {res['files']} files, --workers {res['workers']}, "
            f"median of {res['repeat']} interleaved repetitions, {res['cpus']} CPUs, "
            f"load average {res['load_average']:.1f}"
        )
        print(
            "\n| run | wall time | events/s | throughput / read | / read (isal) | CPU, all processes | CPU / read's |"
            "\n|---|---:|---:|---:|---:|---:|---:|"
        )
        cpu_s = res["median_cpu_s"]
        for k, v in med.items():
            print(
                f"| {k} | {v:.2f} s | {events / v / 1e6:.2f} M | {med['read'] / v:.2f} | {med['read (isal)'] / v:.2f} "
                f"| {cpu_s[k]:.2f} s | {cpu_s[k] / cpu_s['read']:.2f} |"
            )
        print(f"\nqgcal wrote results/nominal/scale_factors.json {res['qgcal_results_at_s']:.2f} s after its start.")


if __name__ == "__main__":
    main()
