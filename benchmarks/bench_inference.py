"""Throughput of the inference backends, as ratios to local CPU measured in the same run.

    python benchmarks/bench_inference.py [--jets 1000000] [--repeats 3] [--torch]

Trains a tagger on synthetic jets (5 features: pt, eta, nTracks, trackWidth, trackC1),
starts a real Triton server (`python -m qgcal.inference.serve`) on free loopback ports,
then scores the same jets with each backend, best of ``--repeats``, and prints a markdown
table.  Needs the `triton` extra (and `gpu` for --torch).  Client and server share this
machine's cores, as a job and a node-local server would.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from triton_fixture import MODEL_NAME, feature_matrix, serve_process

from qgcal.inference import load_model, make_scorer
from qgcal.inference.synthetic import synthetic_jets
from qgcal.training import train_tagger

FEATURES = ("pt", "eta", "nTracks", "trackWidth", "trackC1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jets", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-jets", type=int, default=200_000)
    parser.add_argument("--max-iter", type=int, default=200)
    parser.add_argument("--max-in-flight", type=int, default=4)
    parser.add_argument("--torch", action="store_true", help="also time the torch tree backend on cpu")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="qgbench"))
    try:
        t0 = time.perf_counter()
        result = train_tagger(synthetic_jets(args.train_jets, seed=1), features=FEATURES, max_iter=args.max_iter)
        model_path = work / "tagger.skops"
        result.save(model_path)
        print(
            f"trained {args.max_iter} trees on {args.train_jets} jets in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
        x = feature_matrix(synthetic_jets(args.jets, seed=2), FEATURES)

        server = serve_process(model_path, work, Path(tempfile.mkdtemp(prefix="qgt", dir="/tmp")))
        server.start([MODEL_NAME])
        scorers = {("local CPU (scikit-learn)", "all"): make_scorer({}, model_path)}
        try:
            for protocol in ("grpc", "http"):
                url = server.grpc_url if protocol == "grpc" else server.http_url
                for batch in (10_000, 100_000):
                    cfg = {
                        "backend": "triton",
                        "triton": {
                            "url": url,
                            "protocol": protocol,
                            "batch_size": batch,
                            "max_in_flight": args.max_in_flight,
                        },
                    }
                    name = f"Triton {'gRPC' if protocol == 'grpc' else 'HTTP'}"
                    scorers[(name, f"{batch:,}")] = make_scorer(cfg, model_path)
            # Round-robin repeats: load from other processes on a shared machine then hits
            # every backend alike instead of whichever happened to run during it.
            best = dict.fromkeys(scorers, float("inf"))
            reference = scorers[("local CPU (scikit-learn)", "all")].predict(x)
            for _ in range(args.repeats):
                for key, scorer in scorers.items():
                    t0 = time.perf_counter()
                    out = scorer.predict(x)
                    t = time.perf_counter() - t0
                    assert np.abs(out - reference).max() <= 1e-5, f"{key} scores differ from local"
                    best[key] = min(best[key], t)
        finally:
            for scorer in scorers.values():
                scorer.close()
            server.stop(signal.SIGINT, check=False)
            shutil.rmtree(server.watch_dirs[0], ignore_errors=True)
        rows = [(name, batch, t) for (name, batch), t in best.items()]
        t_local = best[("local CPU (scikit-learn)", "all")]
        if args.torch:
            from qgcal.inference.torch_trees import TorchTreeScorer

            torch_scorer = TorchTreeScorer(load_model(model_path), device="cpu")
            t0 = time.perf_counter()
            out = torch_scorer.predict(x)
            t = time.perf_counter() - t0
            assert np.abs(out - reference).max() <= 1e-5
            rows.insert(1, ("local torch trees (cpu, 1 run)", "all", t))

        print(
            f"\n{args.jets:,} jets x {len(FEATURES)} features, {args.max_iter} trees, best of "
            f"{args.repeats}, max_in_flight {args.max_in_flight}, {platform.machine()} "
            f"{os.cpu_count()} cores, load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}\n"
        )
        print("| backend | jets per request | time (s) | jets/s | time / local |")
        print("|---|---:|---:|---:|---:|")
        for name, batch, t in rows:
            print(f"| {name} | {batch} | {t:.2f} | {args.jets / t:,.0f} | {t / t_local:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
