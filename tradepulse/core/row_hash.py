"""pandas' `hash_array(strings, categorize=False)` without pandas: SipHash-2-4 of each string's UTF-8
under pandas' fixed key ("0123456789123456"), then pandas' bit mixing. The anomaly detector's row keys
(`tradepulse.core.anomaly.row_keys`) are these values, stored in checkpoints, so they must not change
with the library that computes them: pandas would stay resident in the runner for ~50 MiB
(docs/benchmarks.md). Vectorised over the strings of each byte length (our event ids: one length).
tests/core/test_row_hash.py checks it against pandas.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_U64 = np.uint64
_KEY = b"0123456789123456"
_K0, _K1 = int.from_bytes(_KEY[:8], "little"), int.from_bytes(_KEY[8:], "little")
_INIT = (
    _K0 ^ 0x736F6D6570736575,
    _K1 ^ 0x646F72616E646F6D,
    _K0 ^ 0x6C7967656E657261,
    _K1 ^ 0x7465646279746573,
)


def string_hashes(strings: Sequence[str]) -> np.ndarray:
    """One uint64 per string, equal to `pandas.util.hash_array(np.array(strings, dtype=object),
    categorize=False)`."""
    encoded = [s.encode() for s in strings]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    out = np.empty(len(encoded), dtype=_U64)
    for length in np.unique(lengths).tolist():
        idx = np.flatnonzero(lengths == length)
        out[idx] = _siphash24(b"".join([encoded[i] for i in idx.tolist()]), len(idx), length)
    out ^= out >> _U64(30)  # pandas' mixing of the 64-bit hashes (`_hash_ndarray`)
    out *= _U64(0xBF58476D1CE4E5B9)
    out ^= out >> _U64(27)
    out *= _U64(0x94D049BB133111EB)
    out ^= out >> _U64(31)
    return out


def _siphash24(data: bytes, count: int, length: int) -> np.ndarray:
    """SipHash-2-4 (Aumasson and Bernstein, 2012) of `count` messages of `length` bytes each,
    concatenated in `data`; uint64 arithmetic wraps, as the algorithm's does."""
    blocks = length // 8 + 1  # the last block: the tail bytes, and the length's low byte on top
    padded = np.zeros((count, blocks * 8), dtype=np.uint8)
    padded[:, :length] = np.frombuffer(data, dtype=np.uint8).reshape(count, length)
    words = padded.view("<u8").astype(_U64)
    words[:, -1] |= _U64((length & 0xFF) << 56)
    v = [np.full(count, _U64(init)) for init in _INIT]
    for j in range(blocks):
        m = words[:, j]
        v[3] ^= m
        _sip_rounds(v, 2)
        v[0] ^= m
    v[2] ^= _U64(0xFF)
    _sip_rounds(v, 4)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def _sip_rounds(v: list[np.ndarray], rounds: int) -> None:
    v0, v1, v2, v3 = v
    for _ in range(rounds):
        v0 += v1
        v1 = _rotl(v1, 13)
        v1 ^= v0
        v0 = _rotl(v0, 32)
        v2 += v3
        v3 = _rotl(v3, 16)
        v3 ^= v2
        v0 += v3
        v3 = _rotl(v3, 21)
        v3 ^= v0
        v2 += v1
        v1 = _rotl(v1, 17)
        v1 ^= v2
        v2 = _rotl(v2, 32)
    v[:] = v0, v1, v2, v3


def _rotl(x: np.ndarray, bits: int) -> np.ndarray:
    return (x << _U64(bits)) | (x >> _U64(64 - bits))
