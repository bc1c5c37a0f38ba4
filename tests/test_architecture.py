"""The import rules of docs/design.md, checked on the source, and the pass registry's contract.

Layers point one way: ``qgcal/`` (the engine) never imports ``workflows/`` (the
schedulers) except through the library facade (``qgcal/api.py``) and the CLI;
no stage imports another stage (they meet through ``qgcal.contract`` and their
artifacts); nothing below the CLI sees argparse; the config schema imports no
heavy library.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from qgcal.passes import FilePass
from qgcal.stages import FILE_PASSES, PASS_NAMES, file_pass

PACKAGES = {"qgcal": REPO / "qgcal", "qgcal.stages": REPO / "stages", "qgcal.workflows": REPO / "workflows"}


def _imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names), at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def _modules(package: str) -> dict[str, set[str]]:
    root = PACKAGES[package]
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        name = ".".join([package, *rel.parts]).removesuffix(".__init__")
        out[name] = _imports(path)
    return out


def test_engine_modules_do_not_import_the_schedulers():
    bad = {
        m: sorted(i for i in imps if i.startswith("qgcal.workflows"))
        for m, imps in _modules("qgcal").items()
        if not m.startswith(("qgcal.cli", "qgcal.api"))
    }
    assert not {m: v for m, v in bad.items() if v}


def test_no_stage_imports_another_stage():
    stages = _modules("qgcal.stages")
    for name, imps in stages.items():
        if name == "qgcal.stages":
            continue  # the registry: it lists them
        others = sorted(i for i in imps if i.startswith("qgcal.stages"))
        assert not others, (name, others)


def test_nothing_below_the_cli_sees_argparse():
    for package in ("qgcal.workflows", "qgcal.stages"):
        for name, imps in _modules(package).items():
            assert "argparse" not in imps, name
    # qgcal.inference.serve is a command of its own: `python -m qgcal.inference.serve MODEL` is the
    # server process that `qgcal serve` and the Triton test fixture start
    for name, imps in _modules("qgcal").items():
        if not name.startswith("qgcal.cli") and name != "qgcal.inference.serve":
            assert "argparse" not in imps, name


def test_the_config_schema_imports_no_heavy_library():
    code = (
        "import sys, qgcal.config; heavy = ('pyarrow', 'torch', 'sklearn', 'pytriton', 'tritonclient', "
        "'uproot', 'awkward', 'hist', 'matplotlib', 'qgcal.workflows', 'qgcal.stages'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith(heavy)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_registry_owns_a_linear_chain_of_file_passes():
    assert PASS_NAMES == ("root2pkl", "pkl2predpkl", "predpkl2hist")  # the contract of DESIGN.md
    for p in FILE_PASSES:
        assert isinstance(p, FilePass)
        assert p.ext.startswith(".") and file_pass(p.name) is p
    with pytest.raises(ValueError, match="no per-file pass 'nope'; passes: root2pkl"):
        file_pass("nope")


def test_schedulers_enumerate_no_pass_by_name():
    """Only the registry and the passes themselves name a pass; schedulers walk FILE_PASSES."""
    for path in sorted((REPO / "workflows").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        for name in PASS_NAMES:
            assert f'"{name}"' not in text, (path.name, name)
