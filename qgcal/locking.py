"""The output lock: one qgcal run writes into an output directory at a time."""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from qgcal.errors import RunLockedError

__all__ = ["LOCK_NAME", "output_lock"]


LOCK_NAME = ".qgcal.lock"


@contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """An exclusive flock on ``<output>/.qgcal.lock``; the kernel drops it if we are killed.

    Why flock and not a PID file: a lock file left by a killed run would have to be
    judged stale (was the PID reused? is it another host's?); the kernel releases a
    flock when the process dies, however it dies. The file only records who holds
    the lock, for the message the second run prints. Not re-entrant: take it once.
    Worker processes start from a forkserver, so they never inherit the descriptor.
    """
    output.mkdir(parents=True, exist_ok=True)
    fd = os.open(output / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides (group-readable areas)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(
                f"{output}: another qgcal run is writing here{_lock_holder(fd)}; wait for it to finish "
                "or use another output directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _lock_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return f" ({text[0]})" if text and text[0].isprintable() else ""
