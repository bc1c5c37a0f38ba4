"""Peak memory of one worker against input file size: flat when reading is chunked.

Run:  python benchmarks/bench_memory.py [--small-events 150000] [--big-events 1500000] [--workdir DIR]

Two generated samples, the big one with ``--big-events / --small-events`` times the events per
file. For the largest nominal MC file of each (a JZ4 slice file: the nominal tree plus the
systematic trees qgcal does not read for nominal), a FRESH process runs the three per-file
passes (root2pkl, pkl2predpkl, predpkl2hist) of that one file, as a pool worker does, and
reports its peak resident memory (``VmHWM`` of /proc/self/status: this process's own
address space; ``ru_maxrss`` would survive exec and report the parent's). The reading chunk
is ``reading.step_size`` (``--step-size``, default 100 MB as shipped): memory is bounded by the
chunk, so both files must be several chunks long for the comparison to mean anything (the
defaults, 25 MB and 250 MB files, are compared with ``--step-size '10 MB'``). Goal: the big
file's peak within 20 % of the small file's, and under 1 GB. The issue asks for a ~3 GB against a ~300 MB file:
``--small-events 1800000 --big-events 18000000`` writes such files (~20 GB of samples, ~15 min).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

SNIPPET = r"""
import sys
from qgcal.config import load_config
from qgcal.plan import plan_tasks
from qgcal.workflows.tasks import run_job
from qgcal.stages import FILE_PASSES

def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1])

cfg = load_config(sys.argv[1])
from pathlib import Path
task = [t for t in plan_tasks(cfg, 'nominal') if Path(t.path).resolve() == Path(sys.argv[2]).resolve()][0]
before = hwm()
for p in FILE_PASSES:
    run_job(cfg, p.name, [task], True)
print(hwm(), before)
"""


def _sample(base: Path, events: int, step: str) -> tuple[Path, Path]:
    """(config, the largest nominal MC file)."""
    from qgcal.configs import demo_config_text
    from qgcal.generate import generate_or_reuse

    if not (base / "sample" / "truth.json").exists():
        print(f"generating {events:,} events per sample into {base} ...", file=sys.stderr)
    generate_or_reuse(base / "sample", events=events, files=1, seed=3)
    doc = yaml.safe_load(demo_config_text())
    doc["lumi_pb"] = json.loads((base / "sample" / "truth.json").read_text())["luminosity_pb"]
    doc["taggers"] = {k: v for k, v in doc["taggers"].items() if v["kind"] != "model"}
    doc["variations"] = {}
    doc["output"] = str(base / "out-memory")
    doc["reading"] = {"step_size": step}
    path = base / "memory.yaml"
    path.write_text(yaml.safe_dump(doc))
    biggest = max((base / "sample" / "mc" / "pythia").rglob("*.root"), key=lambda p: p.stat().st_size)
    return path, biggest


def peak(config: Path, file: Path) -> tuple[int, int]:
    cmd = [sys.executable, "-c", SNIPPET, str(config), str(file)]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    after, before = (int(x) for x in out.stdout.split())
    return after, before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small-events", type=int, default=150_000)
    ap.add_argument("--big-events", type=int, default=1_500_000)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--step-size", default="100 MB", help="reading.step_size (scale it with the files)")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="qgmemory-"))
    res = {}
    for name, events in (("small", args.small_events), ("big", args.big_events)):
        config, file = _sample(work / name, events, args.step_size)
        after, before = peak(config, file)
        res[name] = {
            "file": str(file),
            "file_MB": file.stat().st_size / 1e6,
            "entries_per_file": None,
            "peak_rss_MB": after / 1024,
            "rss_after_imports_MB": before / 1024,
        }
        import uproot

        with uproot.open(file) as f:
            res[name]["entries_per_file"] = int(f["nominal"].num_entries)
    res["ratio_big_over_small"] = res["big"]["peak_rss_MB"] / res["small"]["peak_rss_MB"]
    print(json.dumps(res, indent=2))
    print("\n| file | size | entries | peak RSS of the worker |\n|---|---:|---:|---:|")
    for name in ("small", "big"):
        r = res[name]
        print(f"| {name} | {r['file_MB']:.0f} MB | {r['entries_per_file']:,} | {r['peak_rss_MB']:.0f} MB |")
    print(f"| ratio big / small | | | {res['ratio_big_over_small']:.2f} |")


if __name__ == "__main__":
    main()
