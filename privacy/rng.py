"""Sources of random bits for the noise samplers.

Production noise comes from the operating system's cryptographic generator (``os.urandom``, the
source behind ``secrets`` and ``random.SystemRandom``). Bytes are fetched in blocks and served as
64-bit words to cut system calls; a forked child discards the parent's unused block, so parent
and child never share noise.

``SeededBits`` is a deterministic generator (SHAKE-256 in counter mode) for reproducible tests
and audits only. The gate refuses it unless told explicitly that the run is a test.
"""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
from typing import Protocol, runtime_checkable

import numpy as np

_WORDS_PER_BLOCK = 2048  # 16 KiB of randomness per refill


@runtime_checkable
class RandomBits(Protocol):
    """Uniform random integers: ``randbits(k)`` on [0, 2^k), ``randbelow(n)`` on [0, n)."""

    cryptographic: bool

    def _word(self) -> int:
        try:
            return self._words.pop()
        except IndexError:  # empty, possibly emptied by another thread since it was checked
            return self._refill().pop()

    def randbits(self, k: int) -> int:
        """k uniformly random bits as a non-negative integer (whole words, then shifted)."""
        if k <= 0:
            return 0
        if k <= 64:
            return self._word() >> (64 - k)
        out = 0
        got = 0
        while got < k:
            out |= self._word() << got
            got += 64
        return out >> (got - k)

    def randbelow(self, n: int) -> int: ...


class _WordSource:
    """Shared logic: an unbounded supply of 64-bit words, consumed from a list."""

    cryptographic = True

    def __init__(self) -> None:
        self._words: list[int] = []

    def _block(self) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def _refill(self) -> list[int]:
        self._words = np.frombuffer(self._block(), dtype="<u8").tolist()
        return self._words

    def fresh_block(self) -> bytes:
        """Random bytes never handed out before (for batched samplers; whole words)."""
        return self._block()

    def randbits(self, k: int) -> int:
        """k uniformly random bits as a non-negative integer (exact: whole words, then masked)."""
        words = self._words
        if k <= 64:
            if k <= 0:
                return 0
            if not words:
                words = self._refill()
            return words.pop() >> (64 - k)
        out = 0
        got = 0
        while got < k:
            if not words:
                words = self._refill()
            out |= words.pop() << got
            got += 64
        return out >> (got - k)

    def randbelow(self, n: int) -> int:
        """Uniform on {0, ..., n-1} by rejection from the next power of two (no modulo bias)."""
        if n <= 0:
            raise ValueError("randbelow needs n > 0")
        k = n.bit_length()
        randbits = self.randbits
        r = randbits(k)
        while r >= n:
            r = randbits(k)
        return r


_LIVE: weakref.WeakSet[SystemBits] = weakref.WeakSet()


def _forget_after_fork() -> None:
    for source in list(_LIVE):
        source._words = []


os.register_at_fork(after_in_child=_forget_after_fork)


class SystemBits(_WordSource):
    """Cryptographic randomness from ``os.urandom``; safe across ``fork``."""

    cryptographic = True

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        _LIVE.add(self)

    def _block(self) -> bytes:
        return os.urandom(8 * _WORDS_PER_BLOCK)

    def _refill(self) -> list[int]:
        with self._lock:
            return super()._refill()


class SeededBits(_WordSource):
    """Deterministic bits from SHAKE-256(seed || counter), for tests and reproducible audits."""

    cryptographic = False

    def __init__(self, seed: int | bytes | str) -> None:
        super().__init__()
        if isinstance(seed, int):
            seed = seed.to_bytes(32, "little", signed=True)
        elif isinstance(seed, str):
            seed = seed.encode()
        self._seed = bytes(seed)
        self._counter = 0

    def _block(self) -> bytes:
        self._counter += 1
        return hashlib.shake_256(self._seed + self._counter.to_bytes(8, "little")).digest(
            8 * _WORDS_PER_BLOCK
        )


_SYSTEM = SystemBits()


def system_bits() -> SystemBits:
    """The process-wide cryptographic source."""
    return _SYSTEM
