"""Progress of a pass: a live bar on a terminal, plain log lines everywhere else.

Batch jobs (Slurm, CI) write to files, where a redrawn bar is noise; so the
bar is used only when stderr is a TTY, and otherwise each finished file logs
one line with files done/total and the event rate.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Self

__all__ = ["PassProgress", "log"]

log = logging.getLogger("qgcal")


class PassProgress:
    """Jobs done / total and events per second for one pass.

    A job is one file task, or for a pass that reads a (file, tree) once for several
    variations, one such read (``unit="reads"``, ``files`` the file tasks it covers).
    """

    def __init__(
        self,
        name: str,
        total: int,
        *,
        skipped: int = 0,
        live: bool | None = None,
        unit: str = "files",
        files: int | None = None,
    ) -> None:
        self.name = name
        self.total = total
        self.unit = unit
        self.done = 0
        self.skipped = skipped
        self.events = 0
        self.t0 = time.perf_counter()
        self.live = sys.stderr.isatty() if live is None else live
        self._bar: Any = None
        self._task: Any = None
        if total == 0:
            log.info("%s: nothing to do (%d valid artifacts reused)", name, skipped)
            return
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(name, total=total, rate="")
        else:
            reads = f" in {total} {unit}" if unit != "files" else ""
            log.info(
                "%s: %d files to process%s (%d valid artifacts reused)",
                name,
                total if files is None else files,
                reads,
                skipped,
            )

    def rate(self) -> float:
        dt = time.perf_counter() - self.t0
        return self.events / dt if dt > 0 else 0.0

    def advance(self, events: int, label: str = "") -> None:
        self.done += 1
        self.events += events
        if self._bar is not None:
            self._bar.update(self._task, advance=1, rate=f"{self.rate():,.0f} ev/s")
        elif self.total:
            log.info("%s: %d/%d %s, %.3g events/s %s", self.name, self.done, self.total, self.unit, self.rate(), label)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
