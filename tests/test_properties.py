"""Property tests (hypothesis).

* Merging: per-file histogram sets split into any partition (as Slurm shards or
  workers would produce them), the parts concatenated in any order, merge to the
  same bytes as the sequential merge in sorted-key order, which equals an
  independent plain-numpy sum in that order; the .npz round trip is lossless.
* The config loader, given arbitrary text, arbitrary YAML documents, or the demo
  config with any part replaced, deleted or added to, returns a Config or raises
  ConfigError, never anything else (no KeyError, TypeError, RecursionError...).
"""

from __future__ import annotations

import copy
import io
import itertools
from pathlib import Path
from typing import Any

import hist
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DEMO
from qgcal.config import Config, load_config
from qgcal.errors import ConfigError
from qgcal.histset import HistSet, _to_arrays, load_histset, merge, save_histset

# ----------------------------------------------------------------------------- merging

_AXES = (hist.axis.Regular(3, 0.0, 3.0, name="x"), hist.axis.IntCategory([0, 21], name="flavour"))
_SHAPE = hist.Hist(*_AXES, storage=hist.storage.Weight()).view(flow=True).shape  # flow bins included
_SIZE = int(np.prod(_SHAPE))
_finite = st.floats(min_value=-1e300, max_value=1e300, allow_nan=False, allow_infinity=False)
_variance = st.floats(min_value=0.0, max_value=1e300, allow_nan=False, allow_infinity=False)


def _histset(values: list[float], variances: list[float], second: list[float]) -> HistSet:
    out: HistSet = {}
    for name, vals, vars_ in (("tagger.a", values, variances), ("tagger.b", second, variances)):
        h = hist.Hist(*_AXES, storage=hist.storage.Weight())
        view = h.view(flow=True)
        view["value"] = np.asarray(vals, dtype=np.float64).reshape(_SHAPE)
        view["variance"] = np.asarray(vars_, dtype=np.float64).reshape(_SHAPE)
        out[name] = h
    return out


_file_set = st.builds(
    _histset,
    st.lists(_finite, min_size=_SIZE, max_size=_SIZE),
    st.lists(_variance, min_size=_SIZE, max_size=_SIZE),
    st.lists(_finite, min_size=_SIZE, max_size=_SIZE),
)


def _bytes(hs: HistSet) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **_to_arrays(hs, {"merged": True}))
    return buf.getvalue()


@st.composite
def _files_and_partition(draw: Any) -> tuple[list[tuple[str, HistSet]], list[list[tuple[str, HistSet]]]]:
    n = draw(st.integers(1, 7))
    sets = draw(st.lists(_file_set, min_size=n, max_size=n))
    # keys as the engine makes them: sample/slice/absolute path, unique per file
    names = draw(st.lists(st.text("abcJZ0123_-.", min_size=1, max_size=6), min_size=n, max_size=n, unique=True))
    files = [(f"pythia/JZ{i % 3}/data/{name}.root", hs) for i, (name, hs) in enumerate(zip(names, sets))]
    order = draw(st.permutations(range(n)))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=4)))
    bounds = [0, *cuts, n]
    parts = [[files[order[i]] for i in range(a, b)] for a, b in itertools.pairwise(bounds)]
    return files, draw(st.permutations(parts))


@settings(max_examples=60, deadline=None)
@given(_files_and_partition())
def test_merge_of_any_partition_in_any_order_is_the_sequential_merge(case):
    files, parts = case
    reference = merge(sorted(files, key=lambda kv: kv[0]))
    shuffled = merge([item for part in parts for item in part])
    assert _bytes(shuffled) == _bytes(reference)
    # and that is exactly the plain sum in sorted-key order (not merely some fixed order)
    for name in reference:
        value = np.zeros(_SHAPE)
        variance = np.zeros(_SHAPE)
        for _, hs in sorted(files, key=lambda kv: kv[0]):
            value = value + hs[name].view(flow=True)["value"]
            variance = variance + hs[name].view(flow=True)["variance"]
        got = reference[name].view(flow=True)
        assert got["value"].tobytes() == value.tobytes()
        assert got["variance"].tobytes() == variance.tobytes()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("properties")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_file_set)
def test_histogram_files_round_trip_bit_for_bit(scratch, hs):
    path = scratch / "h.npz"
    save_histset(path, hs, {"pass": "predpkl2hist"})
    back, meta = load_histset(path)
    assert meta == {"pass": "predpkl2hist"}
    assert _bytes(back) == _bytes(hs)
    save_histset(path, back, {"pass": "predpkl2hist"})
    again = path.read_bytes()
    save_histset(path, hs, {"pass": "predpkl2hist"})
    assert path.read_bytes() == again  # reproducible bytes


# ----------------------------------------------------------------------------- the config loader

_DEMO = yaml.safe_load(DEMO.read_text())
_DEMO["taggers"] = {k: v for k, v in _DEMO["taggers"].items() if v["kind"] != "model"}

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "kind",
            "tree",
            "weight",
            "branch",
            "sample",
            "reweighting",
            "model",
            "data",
            "mc",
            "nominal",
            "pythia",
            "nTracks",
            "pdf_weight[1..3]",
            "x[2]",
            "100 MB",
            "../x",
            "up",
            "down",
        ]
    ),
)
_keys = st.one_of(
    st.text(max_size=10),
    st.sampled_from(
        [
            "kind",
            "files",
            "slices",
            "tree",
            "pair",
            "direction",
            "multiply",
            "divide",
            "replace",
            "bins",
            "n",
            "low",
            "high",
            "edges",
            "variable",
            "sample",
            "use",
            "group",
            "set",
            "source",
            "histogram",
            "bin",
            "value",
            "xsec_pb",
            "step_size",
            "workers",
            "retries",
            "enabled",
        ]
    ),
    st.integers(-3, 3),
    st.booleans(),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=4)),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


_DEMO_PATHS = _paths(_DEMO)[1:]


@st.composite
def _mutated_demo(draw: Any) -> Any:
    doc = copy.deepcopy(_DEMO)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_DEMO_PATHS))
        node = doc
        try:
            for key in path[:-1]:
                node = node[key]
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                node[path[-1]] = draw(_values)
            elif action == "delete":
                del node[path[-1]]
            elif isinstance(node[path[-1]], dict):
                node[path[-1]][draw(_keys)] = draw(_values)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    return doc


def _load(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    try:
        cfg = load_config(path)
    except ConfigError as err:
        assert str(err) and "\n" not in str(err)
        return
    assert isinstance(cfg, Config)


_SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_SETTINGS
@given(st.text(max_size=200))
def test_config_loader_on_arbitrary_text_raises_only_config_errors(scratch, text):
    _load(scratch / "text.yaml", text)


@_SETTINGS
@given(_values)
def test_config_loader_on_arbitrary_yaml_raises_only_config_errors(scratch, doc):
    _load(scratch / "doc.yaml", yaml.safe_dump(doc))


@_SETTINGS
@given(_mutated_demo())
def test_config_loader_on_a_damaged_demo_config_raises_only_config_errors(scratch, doc):
    _load(scratch / "demo.yaml", yaml.safe_dump(doc, allow_unicode=True))
