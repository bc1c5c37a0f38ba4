"""Shared fixtures: generated samples (session-scoped: generation is the slow part) and configs."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from qgcal.config import Config, load_config
from qgcal.generate import generate_sample

pytest_plugins = ["triton_fixture"]  # a trained toy tagger and real Triton servers (tests/triton_fixture.py)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ helpers (closure_truth)

DEMO = REPO / "configs" / "demo.yaml"


def _make_sample(base: Path, **kwargs: Any) -> Path:
    generate_sample(base / "sample", **kwargs)
    return base


@pytest.fixture(scope="session")
def shifted_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pseudo-data whose quark/gluon shapes differ from MC (known truth)."""
    return _make_sample(tmp_path_factory.mktemp("shifted"), events=200_000, files=2, seed=5)


@pytest.fixture(scope="session")
def unshifted_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pseudo-data drawn from exactly the MC shapes: true scale factors are 1."""
    return _make_sample(tmp_path_factory.mktemp("unshifted"), events=120_000, files=2, seed=8, data_shift=False)


@pytest.fixture(scope="session")
def small_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small sample for plumbing tests (determinism, bad inputs, reruns)."""
    return _make_sample(tmp_path_factory.mktemp("small"), events=20_000, files=2, seed=9)


ConfigFactory = Callable[..., tuple[Path, Config]]


def write_config(
    base: Path,
    output: Path,
    *,
    name: str = "config",
    mutate: Callable[[dict[str, Any]], None] | None = None,
    model_taggers: bool = False,
) -> tuple[Path, Config]:
    """The shipped demo config, pointed at ``base/sample``, with ``output`` and optional edits.

    Model taggers need ``qgcal train`` first, so they are dropped unless asked for.
    """
    doc = yaml.safe_load(DEMO.read_text())
    if not model_taggers:
        doc["taggers"] = {k: v for k, v in doc["taggers"].items() if v["kind"] != "model"}
    truth = json.loads((base / "sample" / "truth.json").read_text())
    doc["lumi_pb"] = truth["luminosity_pb"]
    doc["output"] = str(output)
    # the shipped configs bootstrap; plumbing tests use the analytic error (and its speed) unless they ask
    doc["bootstrap"] = 0
    if mutate is not None:
        mutate(doc)
    path = base / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path, load_config(path)


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., tuple[Path, Config]]:
    counter = {"n": 0}

    def factory(
        base: Path,
        *,
        mutate: Callable[[dict[str, Any]], None] | None = None,
        output: Path | None = None,
        model_taggers: bool = False,
    ) -> tuple[Path, Config]:
        counter["n"] += 1
        out = output or tmp_path / f"out{counter['n']}"
        return write_config(
            base, out, name=f"{tmp_path.name}-{counter['n']}", mutate=mutate, model_taggers=model_taggers
        )

    return factory
