"""Per-file artifacts: atomic writes, embedded provenance, and validity checks.

An artifact is ONE file holding its data and its provenance (Parquet key-value
metadata, or a JSON member of an ``.npz``), written under a temporary name and
renamed into place. So a kill can leave only a ``*.tmp-*`` file, which nothing
reads, and a rerun trusts an artifact only when its provenance still matches
the inputs and config fields its pass depends on. Nothing here unpickles.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from qgcal import __version__
from qgcal.errors import ArtifactError

if TYPE_CHECKING:  # pyarrow is imported where a Parquet file is read or written: 'qgcal validate' needs none
    import pyarrow as pa

__all__ = [
    "ParquetArtifactWriter",
    "atomic_path",
    "config_hash",
    "file_fingerprint",
    "library_versions",
    "provenance_matches",
    "read_parquet_provenance",
    "sha256_file",
    "write_json_atomic",
]

PROVENANCE_KEY = b"qgcal.provenance"
_EDGE_BYTES = 1 << 20


def config_hash(fields: Any) -> str:
    """A stable hash of the config fields a pass depends on (JSON, sorted keys)."""
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Size, mtime and a hash of the first and last MiB: cheap even for 3 GB inputs.

    Every byte of a file up to 2 MiB is hashed (an earlier version skipped the bytes
    after the first MiB of files between 1 and 2 MiB); larger files hash their first
    and last MiB, which hold the ROOT header, the keys list and the streamers.
    The hash is remembered within a process per (path, size, mtime, ctime, inode): validity
    checks run for every pass and variation of a file and must not re-read it each time.
    ctime changes on every write and on every mtime reset, so an edit that restores the
    size and mtime is still seen.
    """
    st = path.stat()
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "edges_sha256": _edges_sha256(str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino),
    }


@functools.lru_cache(maxsize=65536)
def _edges_sha256(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(_EDGE_BYTES))
        if size > _EDGE_BYTES:
            fh.seek(max(_EDGE_BYTES, size - _EDGE_BYTES))
            h.update(fh.read(_EDGE_BYTES))
    return h.hexdigest()[:32]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _versions() -> tuple[tuple[str, str], ...]:
    out = {"qgcal": __version__}
    for name in ("numpy", "awkward", "uproot", "hist", "boost-histogram", "pyarrow", "scikit-learn", "skops"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # pragma: no cover - all are dependencies
            out[name] = "missing"
    return tuple(sorted(out.items()))


def library_versions() -> dict[str, str]:
    """Versions recorded in provenance (looked up once per process: metadata reads are slow)."""
    return dict(_versions())


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but only read once per write)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the umask (group-readable with umask 002/022)."""
    return 0o666 & ~current_umask()


@contextmanager
def atomic_path(final: Path, suffix: str = "", *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it over ``final`` only on success.

    ``mkstemp`` creates the file with mode 0600 whatever the umask; the artifact gets the mode an
    ordinary ``open()`` would give it, so colleagues in a shared group area can read it.
    ``durable``: fsync the file before the rename, so that it survives a crash of the machine
    (not only of the process: the rename alone guarantees that no reader ever sees a partial
    file). An fsync costs ~3 ms on the shared disks here, a third of a small file's pass; the
    per-file artifacts skip it (a torn one after a machine crash fails its provenance read
    and is redone), results and records keep it.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-", suffix=suffix, dir=final.parent)
    try:
        os.fchmod(fd, file_mode())
    finally:
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            if durable:
                with tmp_path.open("rb+") as fh:
                    os.fsync(fh.fileno())
            os.replace(tmp_path, final)
        except OSError as err:
            raise _naming(err, final) from err
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _naming(err: OSError, final: Path) -> OSError:
    """``err`` with the artifact's path as its filename: a full disk says which file it was writing.

    A write error (ENOSPC from ``write``, pyarrow's ``OSError`` without errno) names no file, or
    the temporary one; the user needs the artifact and its folder.
    """
    if err.filename is not None and Path(str(err.filename)).parent == final.parent and ".tmp-" not in str(err.filename):
        return err
    text = err.strerror or (str(err).splitlines() or [type(err).__name__])[0]
    return OSError(err.errno, text, str(final))


def write_json_atomic(final: Path, payload: Any) -> None:
    """Deterministic JSON (sorted keys, fixed float repr) written atomically."""
    text = json.dumps(payload, sort_keys=True, indent=2, allow_nan=False) + "\n"
    with atomic_path(final, ".json") as tmp:
        tmp.write_text(text, encoding="utf-8")


class ParquetArtifactWriter:
    """Stream row groups into a temporary Parquet file; commit with provenance at the end.

    One row group per input chunk keeps a worker's memory bounded by the chunk,
    not by the file. Per-file artifacts are not fsynced (``durable``: see :func:`atomic_path`).
    """

    def __init__(self, final: Path, schema: pa.Schema, *, durable: bool = False) -> None:
        self.final = final
        self.schema = schema
        import pyarrow.parquet as pq

        self._ctx = atomic_path(final, ".parquet", durable=durable)
        self._tmp = self._ctx.__enter__()
        # no dictionary encoding or statistics: float columns do not compress by dictionary
        # and building it cost 25x the write itself
        self._writer = pq.ParquetWriter(
            self._tmp, schema, compression="lz4", use_dictionary=False, write_statistics=False
        )
        self.rows = 0

    def write(self, columns: Mapping[str, Any]) -> None:
        import pyarrow as pa

        table = pa.table({name: columns[name] for name in self.schema.names}, schema=self.schema)
        if table.num_rows:
            try:
                self._writer.write_table(table)
            except OSError as err:  # a full disk: name the artifact (pyarrow names no file)
                raise _naming(err, self.final) from err
            self.rows += table.num_rows

    def commit(self, provenance: Mapping[str, Any]) -> None:
        blob = json.dumps(provenance, sort_keys=True, allow_nan=False).encode()
        self._writer.add_key_value_metadata({PROVENANCE_KEY: blob})
        try:
            self._writer.close()
        except OSError as err:
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)  # removes the temporary file
            raise _naming(err, self.final) from err
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()


def read_parquet_provenance(path: Path) -> dict[str, Any] | None:
    """The embedded provenance, or None when the file is missing or unreadable."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path).metadata or {}
        return json.loads(meta[PROVENANCE_KEY])
    except Exception:
        return None


def read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns)
    except Exception as err:
        raise ArtifactError(f"{path}: unreadable artifact ({type(err).__name__}); rerun with --force") from None


def iter_parquet_batches(path: Path, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """One table per row group: the downstream passes stream too."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        for i in range(pf.num_row_groups):
            yield pf.read_row_group(i, columns=columns)
    except ArtifactError:
        raise
    except Exception as err:
        raise ArtifactError(f"{path}: unreadable artifact ({type(err).__name__}); rerun with --force") from None


def provenance_matches(
    found: Mapping[str, Any] | None,
    expected: Mapping[str, Any],
    keys: tuple[str, ...] = ("pass", "config_hash", "inputs"),
) -> bool:
    """An artifact is reusable when the fields that determine its content agree."""
    if not found:
        return False
    return all(found.get(k) == expected.get(k) for k in keys)


def is_valid(
    path: Path, expected: Mapping[str, Any], reader: Callable[[Path], dict[str, Any] | None] = read_parquet_provenance
) -> bool:
    return path.is_file() and provenance_matches(reader(path), expected)
