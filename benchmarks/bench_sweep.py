"""Cost of a sweep of nominal + 11 weight and branch variations against nominal alone.

Run:  python benchmarks/bench_sweep.py [--events 300000] [--workers 2] [--repeat 2] [--bootstrap N]
                                       [--no-bias-correction] [--model]

Both runs start from an empty output directory, on the same generated sample, in
the same process, interleaved and best of ``--repeat``. The sweep adds one branch
variation (track efficiency) and ten PDF weights (``pdf_weight[1..10]``): all
read the same (file, tree) as nominal, so with shared reads each file is read
once for all twelve. Targets: sweep / nominal < 3 (issue 4), <= 1.5 (issue 11).
The JSON output records the load average before and after (the machine may be shared).
``--model`` keeps the demo's trained tagger (gbdt, trained once into ``<workdir>/models`` before
the timed runs), so pkl2predpkl runs inference on every file task.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from qgcal.configs import demo_config_text


def _config(
    base: Path, name: str, variations: dict, bootstrap: int | None = None, correct: bool = True, model: bool = False
) -> Path:
    doc = yaml.safe_load(demo_config_text())
    if bootstrap is not None:
        doc["bootstrap"] = bootstrap
    doc["calibration"]["bootstrap_bias_correction"] = correct
    doc["lumi_pb"] = json.loads((base / "sample" / "truth.json").read_text())["luminosity_pb"]
    doc["output"] = str(base / f"out-{name}")
    doc["variations"] = variations
    if model:  # trained once, outside the output folders the runs start from empty
        for tagger in doc["taggers"].values():
            if tagger["kind"] == "model":
                tagger["model"] = str(base / "models" / tagger["model"])
    else:
        doc["taggers"] = {k: v for k, v in doc["taggers"].items() if v["kind"] != "model"}
    path = base / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--files", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--bootstrap", type=int, help="bootstrap replicas (default: the demo config's)")
    ap.add_argument("--no-bias-correction", action="store_true", help="calibration.bootstrap_bias_correction: false")
    ap.add_argument("--model", action="store_true", help="keep the trained tagger (trained once, not timed)")
    args = ap.parse_args()

    import qgcal
    from qgcal.config import load_config
    from qgcal.generate import generate_or_reuse

    base = args.workdir or Path(tempfile.mkdtemp(prefix="qgsweep-"))
    generate_or_reuse(base / "sample", events=args.events, files=args.files, seed=4)
    sweep_vars = {
        "trk_eff": {"kind": "branch", "replace": {"nTracks": "jet_nTracks_sys_eff"}, "group": "tracking"},
        "pdf": {"kind": "weight", "multiply": ["pdf_weight[1..10]"], "group": "PDF"},
    }
    correct = not args.no_bias_correction
    nominal_cfg = load_config(_config(base, "nominal", {}, args.bootstrap, correct, args.model))
    sweep_cfg = load_config(_config(base, "sweep", sweep_vars, args.bootstrap, correct, args.model))
    if args.model:
        from qgcal.plan import model_path

        models = [t for t in nominal_cfg.taggers.values() if t.kind == "model"]
        if not all(model_path(nominal_cfg, t).is_file() for t in models):
            qgcal.train(nominal_cfg, workers=args.workers)
    best = {"nominal": float("inf"), "sweep": float("inf")}
    load_before = os.getloadavg()
    for _ in range(args.repeat):
        for name, cfg in (("nominal", nominal_cfg), ("sweep", sweep_cfg)):
            shutil.rmtree(cfg.output_path, ignore_errors=True)
            t0 = time.perf_counter()
            qgcal.sweep(cfg, cfg.variation_names(), workers=args.workers)
            best[name] = min(best[name], time.perf_counter() - t0)
    n_var = len(sweep_cfg.variations)
    print(
        json.dumps(
            {
                "events": args.events,
                "workers": args.workers,
                "variations": n_var,
                "bootstrap": sweep_cfg.bootstrap,
                "bootstrap_bias_correction": correct,
                "model_tagger": args.model,
                "nominal_s": best["nominal"],
                "sweep_s": best["sweep"],
                "ratio": best["sweep"] / best["nominal"],
                # the machine is shared: the 1-minute load average before and after the runs
                "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
            },
            indent=2,
        )
    )
    print("\n| run | wall time | ratio |\n|---|---|---|")
    print(f"| nominal only | {best['nominal']:.1f} s | 1.00 |")
    print(
        f"| nominal + {n_var} weight/branch variations | {best['sweep']:.1f} s | "
        f"{best['sweep'] / best['nominal']:.2f} |"
    )


if __name__ == "__main__":
    main()
