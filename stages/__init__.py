"""The four passes. This file owns the chain: the ordered registry of the per-file passes.

``FILE_PASSES[i]`` reads the artifact of ``FILE_PASSES[i - 1]`` (the first reads the
ROOT file); the final pass (:mod:`qgcal.stages.final_reweighting`) reads the
histogram artifacts of the last one. Schedulers walk this tuple and know nothing
else about the passes (:class:`qgcal.passes.FilePass`).
"""

from __future__ import annotations

from pathlib import Path

from qgcal.config import Config
from qgcal.passes import FilePass, artifact_of
from qgcal.plan import FileTask
from qgcal.stages import pkl2predpkl, predpkl2hist, root2pkl

__all__ = ["FILE_PASSES", "PASS_NAMES", "artifact", "file_pass", "pass_index"]

FILE_PASSES: tuple[FilePass, ...] = (root2pkl.PASS, pkl2predpkl.PASS, predpkl2hist.PASS)
PASS_NAMES: tuple[str, ...] = tuple(p.name for p in FILE_PASSES)


def pass_index(name: str) -> int:
    try:
        return PASS_NAMES.index(name)
    except ValueError:
        raise ValueError(f"no per-file pass {name!r}; passes: {', '.join(PASS_NAMES)}") from None


def file_pass(name: str) -> FilePass:
    return FILE_PASSES[pass_index(name)]


def artifact(cfg: Config, task: FileTask, name: str) -> Path:
    """Where pass ``name`` writes its artifact for ``task``."""
    return artifact_of(cfg, task, file_pass(name))
