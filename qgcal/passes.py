"""What a per-file pass is: the :class:`FilePass` protocol the schedulers drive.

Why a protocol: the schedulers (one systematic, a sweep, a Slurm array task, a Dask
task, ``qgcal status``) must not know which passes exist or what they do. They walk
the ordered registry ``qgcal.stages.FILE_PASSES``; each pass reads the artifact of
the pass before it and writes its own, and says by its provenance whether an
artifact it wrote earlier is still valid. Adding or changing a pass touches that
pass's module (and its line in the registry), nothing that schedules passes.

The chain is linear: pass ``i`` reads the artifact of pass ``i - 1`` (the first
reads the input ROOT file). Artifacts live at
``<output>/<variation>/<pass>/<sample>/<slice>/<file stem><ext>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from qgcal.config import Config
from qgcal.plan import FileTask, artifact_path, fused_jobs

__all__ = ["FilePass", "PassInput", "PassRun", "UpstreamPass", "artifact_of"]


@dataclass(frozen=True)
class PassInput:
    """One file task as a pass sees it: where to write, and the upstream artifact (None for the first)."""

    task: FileTask
    out: Path
    upstream: Path | None


@dataclass(frozen=True)
class PassRun:
    """What running a pass on one file task did (for progress: events read or jets processed)."""

    events: int


@runtime_checkable
class FilePass(Protocol):
    """One per-file pass of the chain."""

    name: str  # also the artifact folder and the progress label
    ext: str  # artifact file suffix, e.g. ".parquet"
    unit: str  # what one job of this pass is, for progress ("files", or "reads")

    def jobs(self, tasks: Sequence[FileTask]) -> list[list[FileTask]]:
        """Split file tasks into jobs (one worker call each): one task each, or shared reads."""
        ...

    def expected_provenance(self, cfg: Config, item: PassInput) -> dict[str, Any]:
        """The provenance a valid artifact of ``item`` must carry (inputs and config hash)."""
        ...

    def read_provenance(self, path: Path) -> dict[str, Any] | None:
        """The provenance recorded in an artifact (None when unreadable)."""
        ...

    def run(self, cfg: Config, items: Sequence[PassInput]) -> list[PassRun]:
        """Process one job's items, writing each ``item.out`` atomically; one result per item."""
        ...


class UpstreamPass:
    """Base of a pass that turns its upstream artifact into its own (jet table in, one artifact
    per file task out), the tasks of one (file, tree) in one job (:func:`qgcal.plan.fused_jobs`):
    a sweep's variations of a file share what their jets share.

    Subclasses set ``name`` and ``ext`` and define ``provenance_for`` (what a valid
    artifact records, from the upstream artifact), ``read_provenance`` and ``run_many``
    (write each ``out`` from its ``upstream``; return the jets processed of each).
    """

    name: str
    ext: str
    unit = "reads"

    def jobs(self, tasks: Sequence[FileTask]) -> list[list[FileTask]]:
        return fused_jobs(tasks)

    def expected_provenance(self, cfg: Config, item: PassInput) -> dict[str, Any]:
        return self.provenance_for(cfg, _upstream(item))

    def run(self, cfg: Config, items: Sequence[PassInput]) -> list[PassRun]:
        jets = self.run_many(cfg, [i.task for i in items], [_upstream(i) for i in items], [i.out for i in items])
        return [PassRun(n // 2) for n in jets]  # events: a jet table has two rows per event

    def provenance_for(self, cfg: Config, upstream: Path) -> dict[str, Any]:
        raise NotImplementedError

    def read_provenance(self, path: Path) -> dict[str, Any] | None:
        raise NotImplementedError

    def run_many(
        self, cfg: Config, tasks: Sequence[FileTask], upstreams: Sequence[Path], outs: Sequence[Path]
    ) -> list[int]:
        raise NotImplementedError


def _upstream(item: PassInput) -> Path:
    if item.upstream is None:
        raise ValueError(f"{item.out}: a pass that reads an upstream artifact cannot be the first of the chain")
    return item.upstream


def artifact_of(cfg: Config, task: FileTask, p: FilePass) -> Path:
    """Where pass ``p`` writes its artifact for ``task``."""
    return artifact_path(cfg.output_path, task, p.name, p.ext)
