"""Closure study of the quoted statistical error: many small generated samples against known truth.

Run:  python benchmarks/closure_study.py [--seeds 50] [--events 200000] [--bootstrap 50] [--workers 1]
                                         [--out /tmp/closure-study] [--plot docs/closure_study.png]

For each seed a sample is generated (``qgcal generate``: pseudo-data whose quark and gluon
shapes differ from the MC by known factors), and calibrated twice with the demo config
(nominal only, branch taggers), in two statistics settings from the same files:

* ``mc4x``:  the MC has 4 times the data statistics (one of four data files);
* ``mc0.25x``: the MC has 1/4 of the data statistics (one of four files per MC slice).

The truth is independent of qgcal: one large sample (``--truth-events``, its own seed) is read
with the plain uproot/numpy selection of tests/closure_truth.py, and the true SF of a record is
true eps(data) / true eps(MC) of forward jets, from the truth labels, at the cut the calibration
chose for that seed. Per setting and pT bin, pooled over taggers, working points and partons
(unflagged records only, and cells defined in at least half of the seeds):

* ``spread / stat``: sqrt(mean over cells of var_seeds(SF - true SF) / mean_seeds(stat)^2);
* ``pull width``: the standard deviation of (SF - true SF) / stat over all seeds and cells.

Both should be 1 when the quoted ``stat`` (the bootstrap with the shipped configs) is right.
Writes ``<out>/closure_study.json`` and, with ``--plot``, a figure. Deterministic for given
arguments. docs/physics.md quotes a run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # closure_truth: the independent truth of the closure tests

SETTINGS = ("mc4x", "mc0.25x")


def _config(sample: Path, out: Path, setting: str, bootstrap: int, min_neff: float | None = None) -> Path:
    from qgcal.configs import demo_config_text

    doc = yaml.safe_load(demo_config_text())
    truth = json.loads((sample / "truth.json").read_text())
    doc["taggers"] = {k: v for k, v in doc["taggers"].items() if v["kind"] != "model"}
    doc["variations"] = {}
    doc["plots"] = {"enabled": False}
    doc["bootstrap"] = bootstrap
    doc["output"] = str(out)
    if min_neff is not None:
        doc["calibration"]["reweighting_min_mc_neff"] = min_neff
    data_files = sorted((sample / "data").glob("*.root"))
    if setting == "mc4x":
        doc["samples"]["data"]["files"] = [str(data_files[0])]
        doc["lumi_pb"] = truth["luminosity_pb"] / len(data_files)
    else:
        doc["samples"]["data"]["files"] = [str(p) for p in data_files]
        doc["lumi_pb"] = truth["luminosity_pb"]
        for name, sl in doc["samples"]["pythia"]["slices"].items():
            first = min((sample / "mc" / "pythia" / name).glob("*.root"))
            sl["files"] = [str(first)]
    # the demo's relative paths (sample/...) resolve against the seed's directory
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class Truth:
    """True SFs of forward jets from one large independent sample, per (tagger, pT bin, cut, parton)."""

    def __init__(self, sample: Path) -> None:
        import closure_truth as ct

        self.ct = ct
        self.data = ct.forward_jets(sample, "data")
        self.mc = ct.forward_jets(sample, "pythia")
        self.cache: dict[tuple[str, float, float, float, str, str], float] = {}

    def sf(self, rec: dict[str, Any]) -> float:
        key = (rec["tagger"], rec["pt_low"], rec["pt_high"], rec["cut"], rec["quark_side"], rec["parton"])
        if key not in self.cache:
            args = (rec["tagger"], rec["pt_low"], rec["pt_high"], rec["cut"], rec["quark_side"], rec["parton"])
            self.cache[key] = self.ct.true_efficiency(self.data, *args) / self.ct.true_efficiency(self.mc, *args)
        return self.cache[key]


def _summary(rows: list[dict[str, Any]], n_seeds: int) -> dict[str, Any]:
    """Per pT bin: spread / mean stat and pull width, pooled over the cells of the bin.

    The same for the analytic error (``stat_analytic``) beside the quoted one, for comparison.
    """
    cells: dict[tuple[str, float, str, float], list[tuple[float, float, float]]] = defaultdict(list)
    for r in rows:
        key = (r["tagger"], r["working_point"], r["parton"], r["pt_low"])
        cells[key].append((r["diff"], r["stat"], r.get("stat_analytic") or math.nan))
    per_bin: dict[float, dict[str, list[float]]] = defaultdict(
        lambda: {"ratio2": [], "pulls": [], "ratio2_analytic": [], "pulls_analytic": []}
    )
    for (_, _, _, pt_low), vals in cells.items():
        if len(vals) < max(3, n_seeds // 2):
            continue
        d, s, a = (np.array([v[i] for v in vals]) for i in range(3))
        b = per_bin[pt_low]
        b["ratio2"].append(float(np.var(d, ddof=1) / np.mean(s) ** 2))
        b["pulls"].extend((d / s).tolist())
        if np.isfinite(a).all():
            b["ratio2_analytic"].append(float(np.var(d, ddof=1) / np.mean(a) ** 2))
            b["pulls_analytic"].extend((d / a).tolist())
    out = {}
    for pt_low in sorted(per_bin):
        b = per_bin[pt_low]
        pulls = np.array(b["pulls"])
        pulls_a = np.array(b["pulls_analytic"])
        out[f"{pt_low:g}"] = {
            "spread_over_stat": math.sqrt(float(np.mean(b["ratio2"]))),
            "pull_width": float(np.std(pulls, ddof=1)),
            "pull_mean": float(np.mean(pulls)),
            "spread_over_stat_analytic": math.sqrt(float(np.mean(b["ratio2_analytic"])))
            if b["ratio2_analytic"]
            else None,
            "pull_width_analytic": float(np.std(pulls_a, ddof=1)) if len(pulls_a) > 1 else None,
            "cells": len(b["ratio2"]),
            "records": len(pulls),
            # a standard deviation from n values is known to about 1/sqrt(2(n-1))
            "pull_width_precision": 1.0 / math.sqrt(2 * (len(pulls) - 1)),
        }
    return out


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, metric, label in zip(axes, ("spread_over_stat", "pull_width"), ("spread / mean stat", "pull width")):
        for setting, marker in zip(SETTINGS, ("o", "s")):
            bins = summary["settings"][setting]["per_pt_bin"]
            x = [float(k) for k in bins]
            y = [bins[k][metric] for k in bins]
            ax.plot(x, y, marker=marker, linestyle="", label=setting.replace("mc", "MC = ").replace("x", " x data"))
        ax.axhspan(0.9, 1.1, color="0.9")
        ax.axhline(1.0, color="0.5", lw=0.8)
        ax.set_xlabel("jet pT bin low edge [GeV]")
        ax.set_ylabel(label)
        ax.legend(frameon=False)
    fig.suptitle(f"closure study: {summary['seeds']} seeds, stat = {summary['stat_method']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--first-seed", type=int, default=100)
    ap.add_argument("--events", type=int, default=200_000, help="data (and MC) events generated per seed")
    ap.add_argument("--truth-events", type=int, default=2_000_000)
    ap.add_argument("--bootstrap", type=int, default=50, help="replicas (0: the analytic error)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--min-neff", type=float, default=None, help="reweighting_min_mc_neff (default: the demo's)")
    ap.add_argument("--tag", default="", help="suffix of the per-seed output folders (several studies, one sample)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/closure-study"))
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args()

    import qgcal
    from qgcal.config import load_config
    from qgcal.generate import generate_sample

    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    truth_dir = args.out / "truth-sample"
    if not (truth_dir / "sample" / "truth.json").is_file():
        generate_sample(truth_dir / "sample", events=args.truth_events, files=8, seed=999_999)
    truth = Truth(truth_dir / "sample")
    print(f"truth sample ready ({time.perf_counter() - t0:.0f} s)", flush=True)
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in SETTINGS}
    flagged = dict.fromkeys(SETTINGS, 0)
    for i in range(args.seeds):
        seed = args.first_seed + i
        base = args.out / f"seed{seed}"
        sample = base / "sample"
        if not (sample / "truth.json").is_file():
            generate_sample(sample, events=args.events, files=4, seed=seed)
        for setting in SETTINGS:
            cfg = load_config(_config(sample, base / f"{setting}{args.tag}", setting, args.bootstrap, args.min_neff))
            records = qgcal.run(cfg, "nominal", workers=args.workers).records
            for r in records:
                if r["flags"] or r["sf"] is None or r["stat"] is None or r["cut"] is None:
                    flagged[setting] += 1
                    continue
                rows[setting].append({**r, "seed": seed, "diff": r["sf"] - truth.sf(r)})
        print(f"seed {seed} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    summary: dict[str, Any] = {
        "seeds": args.seeds,
        "events": args.events,
        "truth_events": args.truth_events,
        "stat_method": f"bootstrap ({args.bootstrap} replicas)" if args.bootstrap else "analytic",
        "settings": {
            s: {"per_pt_bin": _summary(rows[s], args.seeds), "flagged_records": flagged[s], "records": len(rows[s])}
            for s in SETTINGS
        },
        "seconds": round(time.perf_counter() - t0),
    }
    summary["reweighting_min_mc_neff"] = args.min_neff
    (args.out / f"closure_study{args.tag}.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    for s in SETTINGS:
        print(f"{s}: pT bin  spread/stat  pull width  (pull mean, records)  analytic: spread/stat  pull width")
        for k, v in summary["settings"][s]["per_pt_bin"].items():
            print(
                f"  {k:>6}  {v['spread_over_stat']:.3f}  {v['pull_width']:.3f}  ({v['pull_mean']:+.3f}, {v['records']})"
                f"  {v['spread_over_stat_analytic'] or math.nan:.3f}  {v['pull_width_analytic'] or math.nan:.3f}"
            )
    if args.plot is not None:
        _plot(summary, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
