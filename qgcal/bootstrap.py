"""Poisson bootstrap replicas that do not depend on how events are split, processed or weighted.

Each event's N replica weights are Poisson(1) draws from a counter-based
generator keyed by (dataset, run, event, replica), the dataset being the sample
AND its slice (``dataset_key``): no random state is carried from event to
event, so the same event gets the same weights in any file split, worker, chunk
and systematic, while two JZ slices of one production, which share run numbers
and overlap in event numbers, get independent draws.

Replica histograms are accumulated EXACTLY, with no quantum: every float64
weight is an integer mantissa times a power of two, so each term w x k (k the
Poisson count) is cut into 32-bit limbs at ABSOLUTE bit positions (multiples of
32) and the limbs are summed as integers (:class:`ExactSum`). Integer addition is
associative, so any split of the same events into files, chunks or workers
gives the same exact sum, and it is turned into a float64 only once, by a
deterministic function of that exact value (:meth:`ExactSum.to_float`). Nothing
depends on the weight scale: weights of 1e-12 or of 1e12 (ATLAS PHYSLITE
``mcEventWeights`` are 1e5-1e8) are summed exactly like weights of 1, and no sum
can overflow (the limb list grows with the magnitude).
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Self

import numpy as np

__all__ = [
    "LIMB_BITS",
    "ExactSum",
    "dataset_key",
    "exact_sum",
    "from_arrays",
    "poisson_replicas",
    "replica_sums",
    "sample_key",
    "to_arrays",
]

LIMB_BITS = 32
_LIMB = 1 << LIMB_BITS
_LOW = np.int64(_LIMB - 1)
_INT64_CAP = 1 << 63  # |limb| < 2^63: an int64 holds it; an ExactSum.cap of this much is not known
_ADD_CAP = 1 << 62  # sums added uncarried stay below this: a carry pass (< 2^31 a limb) cannot overflow
_MAX_K = 12  # largest Poisson count drawn
# Poisson(1) cumulative distribution up to k = 12 (beyond: probability < 1e-10, mapped to 12)
_CDF = np.cumsum([np.exp(-1.0) / float(np.prod(np.arange(1, k + 1))) for k in range(_MAX_K + 1)])


def sample_key(sample: str) -> int:
    """A stable 64-bit key of a dataset name (the data and each MC sample/slice get their own draws)."""
    return int.from_bytes(hashlib.sha256(sample.encode()).digest()[:8], "little")


def dataset_key(sample: str, slice_name: str) -> str:
    """The dataset an event belongs to: sample and slice (DSID). Run and event numbers are unique
    only within one dataset (JZ slices of one production share runNumber, overlap in eventNumber)."""
    return f"{sample}/{slice_name}"


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _splitmix64_inplace(z: np.ndarray, tmp: np.ndarray) -> None:
    """:func:`_splitmix64` of ``z`` written into ``z`` (``tmp``: scratch of the same shape): no temporaries."""
    with np.errstate(over="ignore"):
        z += np.uint64(0x9E3779B97F4A7C15)
        np.right_shift(z, np.uint64(30), out=tmp)
        z ^= tmp
        z *= np.uint64(0xBF58476D1CE4E5B9)
        np.right_shift(z, np.uint64(27), out=tmp)
        z ^= tmp
        z *= np.uint64(0x94D049BB133111EB)
        np.right_shift(z, np.uint64(31), out=tmp)
        z ^= tmp


def _poisson_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer thresholds and a lookup table on the top 16 bits equivalent to ``searchsorted(_CDF, u)``.

    With v = h >> 11 (53 bits) and u = v / 2^53 (exact), CDF_i <= u exactly when
    ceil(CDF_i * 2^53) <= v, so k = #{i: T_i <= v} with integer thresholds T_i. A cell of the
    top 16 bits of h holds one value of k unless a threshold falls strictly inside it (at most
    13 of the 65536 cells): those cells are marked and their entries counted exactly.
    """
    thresholds = np.array([math.ceil(float(c) * 2.0**53) for c in _CDF], dtype=np.uint64)
    shift = 53 - _LUT_BITS
    cells = np.arange(1 << _LUT_BITS, dtype=np.uint64) << np.uint64(shift)  # first v of every cell
    lut = np.searchsorted(thresholds, cells, side="right").astype(np.uint8)
    last = cells + np.uint64((1 << shift) - 1)  # last v of every cell
    ambiguous = np.searchsorted(thresholds, last, side="right").astype(np.uint8) != lut
    return thresholds, lut, ambiguous


_LUT_BITS = 16
_ROWS_PER_BLOCK = 4096  # rows of (rows, replicas) uint64 work arrays: about a megabyte, cache-sized
_THRESHOLDS, _LUT, _AMBIGUOUS = _poisson_tables()


def poisson_replicas(dataset: str, run: np.ndarray, event: np.ndarray, n: int) -> np.ndarray:
    """(len(event), n) uint8 Poisson(1) weights keyed by (dataset, run, event, replica).

    ``dataset`` is :func:`dataset_key` (sample/slice) for MC and data alike. The draws of
    the same (dataset, events, n) earlier in this process are returned again (a copy): the
    weight variations of a sweep select the same events of a file, and a worker fills
    several of them (:data:`_DRAW_MEMO_BYTES` at most are kept).
    """
    run64 = np.ascontiguousarray(run, dtype=np.int64)
    event64 = np.ascontiguousarray(event, dtype=np.int64)
    digest = hashlib.blake2b(run64.tobytes(), digest_size=16)
    digest.update(event64.tobytes())
    key = (dataset, n, len(event64), digest.digest())
    hit = _DRAW_MEMO.get(key)
    if hit is not None:
        _DRAW_MEMO.move_to_end(key)
        return hit.copy()
    out = _draw_replicas(dataset, run64, event64, n)
    if out.nbytes <= _DRAW_MEMO_BYTES // 4:
        _DRAW_MEMO[key] = out.copy()
        while sum(v.nbytes for v in _DRAW_MEMO.values()) > _DRAW_MEMO_BYTES:
            _DRAW_MEMO.popitem(last=False)
    return out


_DRAW_MEMO: OrderedDict[tuple[str, int, int, bytes], np.ndarray] = OrderedDict()
_DRAW_MEMO_BYTES = 32 << 20  # per worker process: the draws of ten 50k-jet files at 50 replicas


def _draw_replicas(dataset: str, run: np.ndarray, event: np.ndarray, n: int) -> np.ndarray:
    """:func:`poisson_replicas` computed: ``searchsorted(_CDF, u, side="right")`` of the 53-bit
    uniform u of each hash, with integer thresholds and a table on the hash's top bits
    (:func:`_poisson_tables`), the same counts bit for bit; rows hashed in cache-sized blocks, in place.
    """
    key = np.uint64(sample_key(dataset))
    with np.errstate(over="ignore"):
        base = _splitmix64(
            _splitmix64(np.asarray(run, dtype=np.int64).view(np.uint64) ^ key)
            ^ np.asarray(event, dtype=np.int64).view(np.uint64)
        )
        salt = _splitmix64(np.arange(n, dtype=np.uint64) + key)
    out = np.empty((len(base), n), dtype=np.uint8)
    rows = min(len(base), _ROWS_PER_BLOCK)
    h = np.empty((rows, n), dtype=np.uint64)
    tmp = np.empty_like(h)
    top_shift = np.uint64(64 - _LUT_BITS)
    for a in range(0, len(base), _ROWS_PER_BLOCK):
        b = min(a + _ROWS_PER_BLOCK, len(base))
        z, t = h[: b - a], tmp[: b - a]
        np.bitwise_xor(base[a:b, None], salt[None, :], out=z)
        _splitmix64_inplace(z, t)
        np.right_shift(z, top_shift, out=t)
        cell = t.view(np.int64)  # < 2^16: the same value as a signed index
        k = out[a:b]
        np.take(_LUT, cell, out=k, mode="clip")  # every index is in range
        fix = np.flatnonzero(_AMBIGUOUS[cell])
        if len(fix):
            v = z.reshape(-1)[fix] >> np.uint64(11)
            k.reshape(-1)[fix] = np.searchsorted(_THRESHOLDS, v, side="right").astype(np.uint8)
    return out


@dataclass
class ExactSum:
    """An array of exact sums: ``value = sum_l limbs[l] * 2**(LIMB_BITS * (base + l))``.

    ``limbs`` is int64 of shape (n_limbs, *cells). After :meth:`normalise` every limb but
    the top one lies in [0, 2^32) and the top one in (-2^31, 2^31): the representation of
    a value is then unique up to all-zero limbs at either end, which change nothing that
    :meth:`to_float` and :meth:`trimmed` compute. That is what makes the float result of two
    different splits of the same events byte-identical.

    Sums are added limb by limb without carrying while no limb can overflow: every
    |limb| < ``cap`` (2^63: not known), the caps add up with the sums, and a carry pass runs
    only when the next sum could reach 2^62 (a file's row groups and a merge's artifacts add
    dozens of sums of limbs below 2^52, which carrying after each one spent most of an
    addition on). Normalising is deferred, never skipped: :meth:`to_float` and
    :meth:`trimmed` normalise first.
    """

    base: int
    limbs: np.ndarray
    cap: int = field(default=_INT64_CAP, compare=False)

    @classmethod
    def zeros(cls, shape: tuple[int, ...]) -> ExactSum:
        return cls(0, np.zeros((0, *shape), dtype=np.int64), 0)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.limbs.shape[1:])

    def normalise(self) -> Self:
        """Carry every limb into [0, 2^32), growing the top while it holds |x| >= 2^31 (in place)."""
        limbs = self.limbs
        if len(limbs) == 0:
            return self
        while True:
            for i in range(len(limbs) - 1):
                carry = limbs[i] >> LIMB_BITS  # arithmetic shift: floor division by 2^32
                limbs[i] &= _LOW
                limbs[i + 1] += carry
            top = limbs[-1]
            if not np.any((top >= _LIMB // 2) | (top < -(_LIMB // 2))):
                break
            limbs = np.concatenate([limbs, np.zeros((1, *limbs.shape[1:]), dtype=np.int64)])
        self.limbs = limbs
        self.cap = _LIMB
        return self

    def __iadd__(self, other: ExactSum) -> Self:
        if other.shape != self.shape:
            raise ValueError(f"exact sums of shapes {self.shape} and {other.shape} cannot be added")
        if len(other.limbs) == 0:
            return self
        if len(self.limbs) == 0:
            self.base, self.limbs, self.cap = other.base, other.limbs.copy(), other.cap
            return self
        if self.cap + other.cap > _ADD_CAP:
            self.normalise()
            if self.cap + other.cap > _ADD_CAP:  # carried on a copy: other is the caller's
                other = ExactSum(other.base, other.limbs.copy()).normalise()
        lo = min(self.base, other.base)
        hi = max(self.base + len(self.limbs), other.base + len(other.limbs))
        if (lo, hi) == (self.base, self.base + len(self.limbs)):
            out = self.limbs  # other's limbs lie within self's: added in place (self owns them)
        else:
            out = np.zeros((hi - lo, *self.shape), dtype=np.int64)
            out[self.base - lo : self.base - lo + len(self.limbs)] += self.limbs
        out[other.base - lo : other.base - lo + len(other.limbs)] += other.limbs
        self.base, self.limbs, self.cap = lo, out, self.cap + other.cap
        return self

    def take(self, other: ExactSum) -> Self:
        """``self += other`` for an ``other`` the caller gives up (freshly computed sums): while
        this sum is still empty it takes other's limbs as they are, without the copy ``+=`` makes
        to stay independent of its argument (the first block or row group of every file)."""
        if len(self.limbs) or other.shape != self.shape:
            return self.__iadd__(other)
        self.base, self.limbs, self.cap = other.base, other.limbs, other.cap
        return self

    def to_float(self) -> np.ndarray:
        """float64 values: a deterministic function of the exact sums (relative error < 1e-15).

        Negative cells are negated first (sign and magnitude), so every limb added is
        non-negative and exactly representable, and limbs are added from the top down:
        all-zero limbs at either end add exact zeros, so any two representations of the
        same exact values give the same bits.
        """
        if len(self.limbs) == 0:
            return np.zeros(self.shape, dtype=np.float64)
        mag = ExactSum(self.base, self.limbs.copy()).normalise()
        neg = mag.limbs[-1] < 0
        mag.limbs = np.where(neg, -mag.limbs, mag.limbs)
        mag.normalise()
        acc = np.zeros(self.shape, dtype=np.float64)
        for i in range(len(mag.limbs) - 1, -1, -1):
            acc += np.ldexp(mag.limbs[i].astype(np.float64), LIMB_BITS * (mag.base + i))
        return np.where(neg, -acc, acc)

    def reshaped(self, shape: tuple[int, ...]) -> ExactSum:
        """The same sums with the cells in another shape (limbs first, as always)."""
        return ExactSum(self.base, self.limbs.reshape(len(self.limbs), *shape), self.cap)

    def trimmed(self) -> ExactSum:
        """The same values without all-zero limbs at either end (smaller artifacts).

        Still normalised: a zero top limb stays when the limb below it holds a value >= 2^31
        somewhere (as the top limb it would read as negative).
        """
        self.normalise()
        nz = [i for i in range(len(self.limbs)) if np.any(self.limbs[i])]
        if not nz:
            return ExactSum.zeros(self.shape)
        lo, hi = nz[0], nz[-1] + 1
        if hi < len(self.limbs) and np.any(self.limbs[hi - 1] >= _LIMB // 2):
            hi += 1
        return ExactSum(self.base + lo, self.limbs[lo:hi].copy(), _LIMB)


def _limbs_of(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each weight as three signed 32-bit limbs at absolute limb positions j, j+1, j+2.

    w = M * 2^p with M a 53-bit integer (frexp is exact); p = 32 j + s with 0 <= s < 32,
    and |M| << s (at most 85 bits) is cut into three 32-bit pieces.
    """
    mant, exp = np.frexp(weight)
    m = np.ldexp(mant, 53).astype(np.int64)  # exact: |m| < 2^53
    p = exp.astype(np.int64) - 53
    j = p >> 5  # floor(p / 32): the limb holding the lowest bit
    s = p - (j << 5)
    a = np.abs(m)
    lo = (a & ((np.int64(1) << (32 - s)) - 1)) << s
    mid = (a >> (32 - s)) & _LOW
    hi = np.where(s > 0, a >> np.minimum(64 - s, 63), 0)
    sign = np.sign(m)
    return j, np.stack([sign * lo, sign * mid, sign * hi]), m != 0


def replica_sums(flat_bin: np.ndarray, weight: np.ndarray, replicas: np.ndarray, n_bins: int) -> ExactSum:
    """Exact sums of weight x replica weight per (bin, replica): an :class:`ExactSum` of shape
    (n_bins, n_replicas). Raises ValueError on a non-finite weight.

    All replicas at once, as one sparse-times-dense product per block of
    :data:`_JETS_PER_BLOCK` jets: a (bin x limb position, jet) matrix holding each jet's three
    limbs (|limb| < 2^32) times the (jet, replica) Poisson counts (<= 12). Every term and
    partial sum is an integer below 2^53 (a block sums to < 2^52), so float64 adds them
    exactly in whatever order the product takes; the block sums are added as int64.
    """
    from scipy.sparse import csc_matrix  # scikit-learn's dependency; imported here, not by every command

    n_rep = replicas.shape[1]
    weight = np.asarray(weight, dtype=np.float64)
    if len(flat_bin) == 0:
        return ExactSum.zeros((n_bins, n_rep))
    if not np.all(np.isfinite(weight)):
        raise ValueError("non-finite event weight")
    j, parts, nz = _limbs_of(weight)
    if not nz.any():
        return ExactSum.zeros((n_bins, n_rep))
    if not nz.all():  # (a zero weight adds nothing; all nonzero is the usual case: no copies)
        flat_bin, j, parts, replicas = flat_bin[nz], j[nz], parts[:, nz], replicas[nz]
    base = int(j.min())
    n_limbs = int(j.max()) - base + 3
    # row of each jet's three limbs: bin x n_limbs + (limb position - base), one column per jet;
    # bin-major, so that the product writes each bin's limbs next to each other
    rows = np.asarray(flat_bin, dtype=np.int64)[:, None] * n_limbs + ((j - base)[:, None] + np.arange(3)[None, :])
    values = parts.T.astype(np.float64)  # (jets, 3), exact: |limb| < 2^32
    total = ExactSum.zeros((n_bins, n_rep))
    for a in range(0, len(rows), _JETS_PER_BLOCK):
        b = min(a + _JETS_PER_BLOCK, len(rows))
        m = csc_matrix(
            (values[a:b].ravel(), rows[a:b].ravel(), np.arange(0, 3 * (b - a) + 1, 3)),
            shape=(n_bins * n_limbs, b - a),
        )
        sums = m @ np.asarray(replicas[a:b], dtype=np.float64)  # (bin x limb position, replica)
        limbs = sums.astype(np.int64).reshape(n_bins, n_limbs, n_rep).transpose(1, 0, 2)
        total.take(ExactSum(base, np.ascontiguousarray(limbs), _BLOCK_CAP))  # a new array, given up
    return total


# jets per block: a cell sums at most 2^16 terms below 2^35.6, < 2^52 (exact in float64)
_JETS_PER_BLOCK = 1 << 16
_BLOCK_CAP = 1 << 52  # every limb of a block's sums is below 2^52


def to_arrays(sums: dict[str, ExactSum]) -> dict[str, np.ndarray]:
    """Plain arrays for an artifact: ``replicas.<tagger>`` (the limbs) and ``replicas_base.<tagger>``.

    Normalised limbs fit in 32 bits (the lower ones in [0, 2^32), the top one in
    (-2^31, 2^31), stored as its two's complement), so they are stored as uint32: half
    the bytes of int64.
    """
    out: dict[str, np.ndarray] = {}
    for name, s in sorted(sums.items()):
        t = s.trimmed()
        out[f"replicas.{name}"] = (t.limbs & _LOW).astype(np.uint32)
        out[f"replicas_base.{name}"] = np.array([t.base], dtype=np.int64)
    return out


def from_arrays(extra: dict[str, np.ndarray]) -> dict[str, ExactSum]:
    """The exact replica sums of a per-file artifact (inverse of :func:`to_arrays`)."""
    out: dict[str, ExactSum] = {}
    for key, arr in extra.items():
        if key.startswith("replicas."):
            name = key[len("replicas.") :]
            base = extra.get(f"replicas_base.{name}")
            if base is None or base.size != 1 or arr.dtype != np.uint32 or arr.ndim < 2:
                raise ValueError(f"replica array {name!r} is not in the exact-limb layout")
            limbs = arr.astype(np.int64)
            if len(limbs):
                top = limbs[-1]
                limbs[-1] = np.where(top >= _LIMB // 2, top - _LIMB, top)  # the top limb is signed
            out[name] = ExactSum(int(base.reshape(-1)[0]), limbs, _LIMB)  # stored normalised
    return out


def exact_sum(values: np.ndarray) -> ExactSum:
    """The exact sum of float64 ``values`` as an :class:`ExactSum` of shape (1,) (ValueError on NaN/inf).

    For sums that must not depend on how the values were chunked (bookkeeping sums of weights).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    return replica_sums(np.zeros(len(v), dtype=np.int64), v, np.ones((len(v), 1), dtype=np.uint8), 1).reshaped((1,))
