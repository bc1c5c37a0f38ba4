"""Drawing cost of the figures with the most panels, against their layout's floor.

Run:  python benchmarks/bench_figures.py [--demo DIR] [--repeat 5]

On the output of ``qgcal demo`` (``--demo``; made there first when it holds no ``config.yaml``),
in this process, interleaved, process CPU time per figure (median and best of ``--repeat``):

- ``extraction``: the nominal extraction figure of one tagger, as ``qgcal run`` draws it
  (``qgcal.plotting._extraction_figure``: one panel per pT bin, quark and gluon in each, two
  columns);
- ``closure``: the closure figure of the same tagger, as ``qgcal combine`` / ``report`` draw it
  (``qgcal.outputs.plots._closure_figure``: pT bins x quark, gluon, and one more row of panels);
- ``floor``: the pT bins x 2 grid of panels (the closure figure's shape panels; the extraction
  figure's layout before it put quark and gluon on one panel) with nothing in them, saved the
  same way. With the ATLAS style's ticks on four sides this is what any figure of that layout
  costs, the baseline of this run (the machine is shared: compare the ratios).

Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _demo(path: Path) -> Path:
    config = path / "config.yaml"
    if not config.is_file():
        subprocess.run([sys.executable, "-m", "qgcal", "-q", "demo", "--out", str(path)], check=True)
    return config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, default=None, help="a qgcal demo output (made there if absent)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tagger", default="ntrk")
    args = ap.parse_args()

    from qgcal.config import load_config
    from qgcal.outputs.closure import data_truth
    from qgcal.outputs.plots import _closure_figure, _read_extraction, plain_extraction_bins
    from qgcal.plotting import _extraction_figure, setup_matplotlib

    demo = args.demo or Path(tempfile.mkdtemp(prefix="qgcal-bench-figures-"))
    cfg = load_config(_demo(demo))
    extraction = _read_extraction(cfg)
    bins = extraction[args.tagger]
    combined = json.loads((cfg.output_path / "results" / "combined" / "scale_factors.json").read_text())
    records = combined["records"]
    truth = data_truth(cfg)
    plain = plain_extraction_bins(bins)
    out = Path(tempfile.mkdtemp(prefix="qgcal-figures-"))
    plt = setup_matplotlib()
    n = len(bins)

    def floor() -> None:
        fig, _ = plt.subplots(n, 2, figsize=(11, 3.2 * n + 0.6), squeeze=False, sharex="col")
        fig.savefig(out / "floor.png", format="png", dpi=70)
        plt.close(fig)

    runs: dict[str, Callable[[], Any]] = {
        "floor": floor,
        "extraction": lambda: _extraction_figure(cfg, "nominal", args.tagger, plain, out),
        "closure": lambda: _closure_figure(cfg, args.tagger, bins, records, out, truth),
    }
    for fn in runs.values():  # warm: fonts, caches
        fn()
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeat):
        for name, fn in runs.items():
            t0 = time.process_time()
            fn()
            cpu[name].append(time.process_time() - t0)

    median = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"\n{args.tagger}: {n} pT bins, median and best of {args.repeat} interleaved draws (process CPU)\n")
    print("| figure | panels | median | best | / floor |")
    print("|---|---:|---:|---:|---:|")
    panels = {"floor": 2 * n, "extraction": n, "closure": 2 * (n + 1)}
    for k in runs:
        print(f"| {k} | {panels[k]} | {median[k]:.3f} s | {min(cpu[k]):.3f} s | {median[k] / median['floor']:.2f} |")
    print(json.dumps({"tagger": args.tagger, "pt_bins": n, "median_s": median, "all_s": cpu}))


if __name__ == "__main__":
    main()
