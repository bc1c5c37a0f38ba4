"""root2pkl throughput against a plain uproot read, and one worker's peak memory vs file size.

Run:  python benchmarks/bench_root2pkl.py [--events 500000] [--repeat 3] [--workdir DIR]

1. Throughput: the same files, the same branches, one process. Baseline = a plain
   ``tree.arrays(branches)`` of every file (the floor: just reading); pass =
   ``root2pkl.run_file`` (read in cluster-aligned chunks, select, write Parquet).
   Reported as events/s and the ratio pass/baseline (target >= 0.7). Best of
   ``--repeat``, interleaved, since these machines are shared and noisy.
2. Memory: peak RSS of a fresh process running root2pkl on a file ten times larger
   than the chunk size, against the same on a file of one chunk (target: within 20%).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def _config(sample_base: Path, out: Path, step: str | int) -> Path:
    from qgcal.configs import demo_config_text

    doc = yaml.safe_load(demo_config_text())
    doc["lumi_pb"] = json.loads((sample_base / "sample" / "truth.json").read_text())["luminosity_pb"]
    doc["output"] = str(out)
    doc["reading"] = {"step_size": step}
    path = sample_base / f"bench-{out.name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _generate(base: Path, events: int, files: int) -> Path:
    from qgcal.generate import generate_or_reuse

    generate_or_reuse(base / "sample", events=events, files=files, seed=2)
    return base


def throughput(base: Path, repeat: int) -> dict[str, float]:
    import uproot

    from qgcal.config import load_config
    from qgcal.plan import plan_tasks
    from qgcal.stages import artifact, root2pkl

    cfg = load_config(_config(base, base / "out-throughput", "100 MB"))
    tasks = plan_tasks(cfg, "nominal")
    branches = {t.path: sorted({expr for _, expr, _ in t.branches}) for t in tasks}
    events = sum(uproot.open(t.path)[t.tree].num_entries for t in tasks)
    best_read = best_pass = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for t in tasks:
            with uproot.open(t.path) as f:
                f[t.tree].arrays(branches[t.path], library="ak")
        best_read = min(best_read, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for t in tasks:
            root2pkl.run_file(cfg, t, artifact(cfg, t, "root2pkl"))
        best_pass = min(best_pass, time.perf_counter() - t0)
    return {
        "files": len(tasks),
        "events": events,
        "read_events_per_s": events / best_read,
        "root2pkl_events_per_s": events / best_pass,
        "ratio": best_read / best_pass,
    }


_RSS_SNIPPET = """
import sys
from pathlib import Path
from qgcal.config import load_config
from qgcal.plan import plan_tasks
from qgcal.stages import artifact
from qgcal.stages import root2pkl

def hwm():  # VmHWM belongs to this process's address space (ru_maxrss survives exec)
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1])

cfg = load_config(sys.argv[1])
task = [t for t in plan_tasks(cfg, 'nominal') if t.kind == 'data'][0]
before = hwm()
root2pkl.run_file(cfg, task, artifact(cfg, task, 'root2pkl'))
print(hwm(), before)
"""


def peak_rss(config: Path) -> tuple[int, int]:
    """Peak resident memory (kB) of a fresh process running root2pkl on one data file."""
    out = subprocess.run([sys.executable, "-c", _RSS_SNIPPET, str(config)], capture_output=True, text=True, check=True)
    after, before = (int(x) for x in out.stdout.split())
    return after, before


def memory(work: Path, chunk: int) -> dict[str, float]:
    big = _generate(work / "big", chunk * 10, 1)
    small = _generate(work / "small", chunk, 1)
    rss_big, base_big = peak_rss(_config(big, big / "out-mem", chunk))
    rss_small, base_small = peak_rss(_config(small, small / "out-mem", chunk))
    return {
        "chunk_entries": chunk,
        "big_file_entries": chunk * 10,
        "peak_rss_big_MB": rss_big / 1024,
        "peak_rss_small_MB": rss_small / 1024,
        "rss_after_imports_MB": base_small / 1024,
        "ratio_big_over_small": rss_big / rss_small,
        "ratio_of_increments": (rss_big - base_big) / max(1, rss_small - base_small),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--files", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=100_000, help="chunk size (entries) for the memory test")
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="qgbench-"))
    base = _generate(work / "throughput", args.events, args.files)
    res = {"throughput": throughput(base, args.repeat), "memory": memory(work, args.chunk)}
    tp, mem = res["throughput"], res["memory"]
    print(json.dumps(res, indent=2))
    print("\n| measurement | value |\n|---|---|")
    print(f"| plain uproot read | {tp['read_events_per_s']:,.0f} events/s |")
    print(f"| root2pkl (read + select + write) | {tp['root2pkl_events_per_s']:,.0f} events/s |")
    print(f"| ratio root2pkl / read | {tp['ratio']:.2f} |")
    print(f"| peak RSS, file = 10 chunks | {mem['peak_rss_big_MB']:.0f} MB |")
    print(f"| peak RSS, file = 1 chunk | {mem['peak_rss_small_MB']:.0f} MB |")
    print(f"| ratio | {mem['ratio_big_over_small']:.2f} |")


if __name__ == "__main__":
    main()
