"""qgcal inflates ZLIB baskets with isal: the switch reaches uproot's reads, gives the same arrays, and
leaves what qgcal writes alone.

The switch is a module-level object of uproot (qgcal/rootio.py says why); these tests fail when
a new uproot stops reading through it, rather than letting qgcal silently lose the speed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import awkward as ak
import isal.isal_zlib
import pytest
import uproot

from qgcal.rootio import ZLIB_LIBRARY, open_tree, use_zlib_library

REAL = Path(__file__).parent / "data" / "real" / "nano_tt_v15.root"  # CMS NanoAOD, ZLIB level 1


@pytest.fixture
def inflate_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    calls: list[int] = []
    original = isal.isal_zlib.decompress

    def counting(data: bytes, *args: object, **kwargs: object) -> bytes:
        calls.append(len(data))
        return original(data, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(isal.isal_zlib, "decompress", counting)
    yield calls
    use_zlib_library("isal")


def _read(path: Path, tree: str) -> ak.Array:
    with open_tree(path, tree, config_key="test") as ot:
        return ot.tree.arrays(library="ak")


@pytest.mark.parametrize("which", ["generated", "real"])
def test_isal_inflates_the_baskets_and_gives_the_same_arrays(which, small_sample, inflate_calls):
    generated = small_sample / "sample" / "data" / "data_000.root"
    path, tree = (REAL, "Events") if which == "real" else (generated, "nominal")
    assert ZLIB_LIBRARY == "isal"  # isal is a core dependency: an installed qgcal uses it
    with uproot.open(path) as f:
        assert f.file.fCompress // 100 == 1, "expected a ZLIB-compressed file"
    fast = _read(path, tree)
    assert inflate_calls, "uproot read the ZLIB baskets without isal"
    assert use_zlib_library("zlib") == "zlib"
    n = len(inflate_calls)
    slow = _read(path, tree)
    assert len(inflate_calls) == n  # the standard library did this read
    assert fast.fields == slow.fields and len(fast) == len(slow) > 0
    for name in fast.fields:
        assert ak.array_equal(fast[name], slow[name], equal_nan=True), name


def test_the_writer_keeps_the_standard_library():
    # what qgcal writes (generated samples, ROOT outputs) must not change bytes with the reader's choice
    assert uproot.ZLIB.library == "zlib"


def _qgcal(env_value: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QGCAL_ZLIB": env_value}
    return subprocess.run(
        [sys.executable, "-m", "qgcal", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_environment_chooses_and_a_bad_value_is_one_line(small_sample, make_config):
    show = "import qgcal.rootio as r, uproot; print(r.ZLIB_LIBRARY, uproot.compression._decompress_ZLIB.library)"
    out = subprocess.run(
        [sys.executable, "-c", show],
        env={**os.environ, "QGCAL_ZLIB": "zlib"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["zlib", "zlib"]
    config, _ = make_config(small_sample)
    assert _qgcal("zlib", "validate", str(config)).returncode == 0
    bad = _qgcal("gzip", "validate", str(config))
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode != 0 and len(lines) == 1 and "QGCAL_ZLIB='gzip'" in lines[0], bad.stderr
