"""Exact replica sums: carrying after every addition against carrying only when a limb could overflow.

Run:  python benchmarks/bench_exact_sums.py [--jets 60000] [--row-groups 8] [--files 8] [--repeat 5]

What a predpkl2hist task and a final-pass merge do with :class:`qgcal.bootstrap.ExactSum`, on
synthetic jets (ATLAS-like MC weights of 1e5-1e8, both signs, the demo's replica shape):

1. ``fill``: a file of ``--row-groups`` row groups, each ``replica_sums`` of its jets added
   into the file's sums (``take``), then ``trimmed`` for the artifact;
2. ``merge``: ``--files`` such per-file sums (as ``from_arrays`` gives them) added into one.

Each is timed twice in the same process, interleaved, best of ``--repeat``: ``eager`` normalises
after every addition (what ExactSum did before it tracked ``cap``), ``lazy`` is the shipped
code. Both give the same bits (checked here); the ratio is eager / lazy.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from qgcal.bootstrap import ExactSum, from_arrays, poisson_replicas, replica_sums, to_arrays


def _file_sums(jets: int, groups: int, n_bins: int, reps: int, eager: bool) -> ExactSum:
    total = ExactSum.zeros((n_bins, reps))
    for g in range(groups):
        r = np.random.default_rng(1000 + g)
        bins = r.integers(0, n_bins, jets)
        weight = r.choice([-1.0, 1.0], jets, p=[0.1, 0.9]) * 10.0 ** r.uniform(5, 8, jets)
        counts = poisson_replicas("bench/JZ4", np.zeros(jets, np.int64), np.arange(g * jets, (g + 1) * jets), reps)
        total.take(replica_sums(bins, weight, counts.astype(np.float64), n_bins))
        if eager:
            total.normalise()
    return total


def _merge(parts: list[dict[str, np.ndarray]], eager: bool) -> ExactSum:
    total: ExactSum | None = None
    for arrays in parts:
        part = from_arrays(arrays)["t"]
        if total is None:
            total = part
        else:
            total += part
        if eager:
            total.normalise()
    assert total is not None
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jets", type=int, default=60_000, help="jets per row group")
    ap.add_argument("--row-groups", type=int, default=8)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--bins", type=int, default=2 * 3 * 6 * 20, help="region x class x pT x score cells")
    ap.add_argument("--replicas", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    best = {k: float("inf") for k in ("fill eager", "fill lazy", "merge eager", "merge lazy")}
    out: dict[str, bytes] = {}
    parts = [
        to_arrays({"t": _file_sums(args.jets // 4, 2, args.bins, args.replicas, False)}) for _ in range(args.files)
    ]
    for _ in range(args.repeat):
        for eager in (True, False):
            mode = "eager" if eager else "lazy"
            t0 = time.perf_counter()
            s = _file_sums(args.jets, args.row_groups, args.bins, args.replicas, eager).trimmed()
            best[f"fill {mode}"] = min(best[f"fill {mode}"], time.perf_counter() - t0)
            out[f"fill {mode}"] = s.limbs.tobytes() + bytes(str(s.base), "ascii")
            t0 = time.perf_counter()
            m = _merge(parts, eager).to_float()
            best[f"merge {mode}"] = min(best[f"merge {mode}"], time.perf_counter() - t0)
            out[f"merge {mode}"] = m.tobytes()
    if out["fill eager"] != out["fill lazy"] or out["merge eager"] != out["merge lazy"]:
        raise SystemExit("eager and lazy carrying gave different sums")
    ratios = {k: best[f"{k} eager"] / best[f"{k} lazy"] for k in ("fill", "merge")}
    print(json.dumps({"best_s": best, "eager_over_lazy": ratios, "args": vars(args)}, indent=2))
    print("\n| step | eager (carry every addition) | lazy (carry when needed) | eager / lazy |\n|---|---:|---:|---:|")
    for k in ("fill", "merge"):
        print(f"| {k} | {best[k + ' eager'] * 1e3:.0f} ms | {best[k + ' lazy'] * 1e3:.0f} ms | {ratios[k]:.2f} |")


if __name__ == "__main__":
    main()
