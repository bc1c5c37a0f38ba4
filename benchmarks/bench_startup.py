"""Start-up of the CLI and the cost of ``qgcal validate``, against the bare interpreter.

Run:  python benchmarks/bench_startup.py [--repeat 5] [--files 200] [--workdir DIR]

Whole processes, as a user starts them, interleaved, median and best of ``--repeat``:
- ``python -c pass`` (the interpreter: the baseline of this run);
- ``python -c 'import uproot'`` (the reader every validation of files needs; it imports awkward);
- ``qgcal --help``;
- ``qgcal validate`` on the demo's layout (``--demo-events`` events, 2 files per sample slice,
  18 files, 74 file tasks with its variations), with nothing run yet, so every file's headers
  are read;
- ``qgcal validate`` on many tiny files (``--files`` per data sample and MC slice, 5 x that
  many files, no variations) with ``executor.workers: 1`` and ``2``: the header reads of a
  campaign, serial and over two forked processes.
Prints a table and a JSON line; the load average before and after (the machine may be shared).
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

import yaml


def _config(base: Path, name: str, *, events: int, files: int, workers: int, variations: bool) -> Path:
    from qgcal.configs import demo_config_text
    from qgcal.generate import generate_or_reuse

    sample = base / f"sample-{events}-{files}"
    generate_or_reuse(sample, events=events, files=files, seed=12)
    # the demo's globs are relative to the config's folder: point them at this sample
    doc = yaml.safe_load(demo_config_text().replace("[sample/", f"[{sample.name}/"))
    doc["lumi_pb"] = json.loads((sample / "truth.json").read_text())["luminosity_pb"]
    doc["taggers"] = {k: v for k, v in doc["taggers"].items() if v["kind"] != "model"}  # no training here
    if not variations:
        doc["variations"] = {}
    doc["output"] = str(base / f"out-{name}")  # never run: validate reads every file's headers
    doc["executor"] = {"kind": "process", "workers": workers}
    path = base / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _time(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--files", type=int, default=200, help="files per data sample and MC slice (many-files case)")
    ap.add_argument("--demo-events", type=int, default=100_000)
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()

    base = args.workdir or Path(tempfile.mkdtemp(prefix="qgstart-"))
    base.mkdir(parents=True, exist_ok=True)
    demo = _config(base, "demo", events=args.demo_events, files=2, workers=2, variations=True)
    many = {
        w: _config(base, f"many-w{w}", events=20_000, files=args.files, workers=w, variations=False) for w in (1, 2)
    }
    qgcal = [sys.executable, "-m", "qgcal"]
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import uproot'": [sys.executable, "-c", "import uproot"],
        "qgcal --help": [*qgcal, "--help"],
        "qgcal validate (demo layout, 18 files)": [*qgcal, "validate", str(demo)],
        f"qgcal validate ({5 * args.files} files, 1 worker)": [*qgcal, "validate", str(many[1])],
        f"qgcal validate ({5 * args.files} files, 2 workers)": [*qgcal, "validate", str(many[2])],
    }
    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {k: [] for k in cases}
    for name, cmd in cases.items():  # once, untimed: page cache and .pyc files warm
        _time(cmd)
    for _ in range(args.repeat):
        for name, cmd in cases.items():
            times[name].append(_time(cmd))
    base_t = statistics.median(times["python -c pass"])
    print("| command | median | best | median - interpreter |")
    print("|---|---:|---:|---:|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| `{name}` | {med:.3f} s | {min(ts):.3f} s | {med - base_t:.3f} s |")
    one = statistics.median(times[f"qgcal validate ({5 * args.files} files, 1 worker)"])
    two = statistics.median(times[f"qgcal validate ({5 * args.files} files, 2 workers)"])
    print(f"validate of {5 * args.files} files, 1 -> 2 workers: {one / two:.2f}x")
    print(
        json.dumps(
            {
                "median_s": {k: statistics.median(v) for k, v in times.items()},
                "best_s": {k: min(v) for k, v in times.items()},
                "validate_many_speedup": one / two,
                "load_average": [load_before, os.getloadavg()[0]],
            }
        )
    )


if __name__ == "__main__":
    main()
