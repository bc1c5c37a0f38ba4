"""ZLIB compression that does not redo work the systematic trees repeat.

An MC file holds four trees with the same events: the JES trees repeat every
nominal basket except jet_pt, the JER tree every per-event one. zlib was
most of the generation time, so each distinct basket content is compressed
once per block and reused.

A jagged basket is ``content + offsets``, and uproot adds the key length
(which contains the tree name) to every offset, so whole baskets differ
between trees even when the content is identical. The compressor therefore
emits one zlib stream in two independent pieces, as parallel gzip does:
raw deflate of the content ending in a sync flush (byte aligned, no
back-references beyond it; this piece is cached), then raw deflate of the
offsets, then the Adler-32 of the whole. The result is one ordinary zlib
stream, readable by ROOT's and uproot's inflate like any other.
"""

from __future__ import annotations

import zlib
from typing import Any

import uproot

__all__ = ["BasketCompressor"]

_OFFSET_BYTES = 4  # uproot stores jagged offsets as big-endian int32


class BasketCompressor:
    """Owns a ``uproot.ZLIB`` whose ``compress`` reuses content compressed earlier in the block.

    ``compression`` is a genuine ``uproot.ZLIB`` instance (its class is what
    uproot uses for the file's compression code); only its ``compress``
    method is replaced, on this instance. Call ``begin_block(n)`` before
    writing a block of ``n`` entries: it bounds the cache to one block and
    tells where a jagged basket's offsets start (the last 4 (n + 2) bytes).
    """

    def __init__(self, level: int) -> None:
        self.level = level
        self.compression = uproot.ZLIB(level)
        self.compression.compress = self._compress
        self._cache: dict[bytes, tuple[bytes, int]] = {}
        self._suffix = 0
        # zlib header for deflate with a 32 KiB window at this level (RFC 1950)
        flevel = 0 if level < 2 else 1 if level < 6 else 2 if level == 6 else 3
        cmf = 0x78
        flg = flevel << 6
        flg += (31 - ((cmf << 8) + flg) % 31) % 31
        self._header = bytes([cmf, flg])

    def begin_block(self, entries: int) -> None:
        """Start a new block of ``entries`` events: forget the previous block."""
        self._cache.clear()
        self._suffix = _OFFSET_BYTES * (entries + 2)

    def _deflate(self, data: bytes, final: bool) -> bytes:
        c = zlib.compressobj(self.level, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)

    def _compress(self, data: Any) -> bytes:
        raw = bytes(data)
        cut = len(raw) - self._suffix if len(raw) > self._suffix else len(raw)
        head = raw[:cut]
        hit = self._cache.get(head)
        if hit is None:
            hit = self._cache[head] = (self._deflate(head, final=False), zlib.adler32(head))
        body, adler = hit
        tail = raw[cut:]
        return b"".join(
            (
                self._header,
                body,
                self._deflate(tail, final=True),
                zlib.adler32(tail, adler).to_bytes(4, "big"),
            )
        )
