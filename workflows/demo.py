"""``qgcal demo``: generate a sample, calibrate nominal and every variation, print the SFs.

The config used is left at ``DIR/config.yaml`` (a copy of the shipped
``configs/demo.yaml``, whose relative paths point at ``DIR/sample``), so any
step can be rerun by hand with ``qgcal run --config DIR/config.yaml``.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from qgcal.config import Config, ModelTagger, load_config
from qgcal.configs import demo_config_text
from qgcal.progress import log
from qgcal.workflows.single import RunResult

__all__ = ["DemoResult", "run_demo"]


@dataclass
class DemoResult:
    config_path: Path
    config: Config
    results: dict[str, RunResult]


def run_demo(
    out: Path,
    *,
    events: int = 200_000,
    files: int = 2,
    seed: int = 1,
    workers: int | None = None,
    data_shift: bool = True,
) -> DemoResult:
    """Generate, train, sweep every systematic and publish; ``workers`` (None: the config's) is
    applied to the demo config once, like the CLI's ``--workers``."""
    from qgcal.generate import generate_sample
    from qgcal.workflows.sweep import run_many

    out.mkdir(parents=True, exist_ok=True)
    sample_dir = out / "sample"
    if sample_dir.exists():
        shutil.rmtree(sample_dir)
    log.info("generating %d events per sample into %s", events, sample_dir)
    generated = generate_sample(sample_dir, events=events, files=files, seed=seed, data_shift=data_shift)
    lumi = json.loads(generated.truth.read_text())["luminosity_pb"]
    config_path = out / "config.yaml"
    text = re.sub(r"(?m)^lumi_pb: .*$", f"lumi_pb: {lumi!r}", demo_config_text(), count=1)
    config_path.write_text(text, encoding="utf-8")
    cfg = load_config(config_path).with_overrides({"executor.workers": workers})
    if any(isinstance(t, ModelTagger) for t in cfg.taggers.values()):
        from qgcal.workflows.train import train_from_config

        train_from_config(cfg)
    results = run_many(cfg, cfg.variation_names())
    from qgcal.outputs import publish

    publish(cfg, config_path=str(config_path))
    return DemoResult(config_path, cfg, results)
