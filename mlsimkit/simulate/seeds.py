"""Random streams of a simulation study, independent of scheduling.

Every random number a study draws comes from ``numpy.random.SeedSequence(seed, spawn_key=...)`` with a
spawn key that names *what* the stream is for, never *when* or *where* it runs:

* data of replication ``rep`` of condition ``key``, attempt ``a`` (redraws):
  ``spawn_key = (int(key, 16), rep, 0, a)``
* method ``name`` on that dataset: ``spawn_key = (int(key, 16), rep, 1, word(name), a)``, where
  ``word(name)`` is the first 32 bits of SHA-256 of the name, so the order methods are listed in, and
  adding or removing a method, change no other stream.

This is the construction numpy recommends for reproducible parallel streams (numpy docs, "Parallel
random number generation"; O'Neill's SeedSequence design).  No global RNG state is read or written.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

DATA_STREAM = 0
METHOD_STREAM = 1


@functools.lru_cache(maxsize=4096)
def name_word(name: str) -> int:
    """A stable 32-bit integer for a method name."""
    return int.from_bytes(hashlib.sha256(str(name).encode("utf-8")).digest()[:4], "little")


def _check_seed(seed) -> int:
    if isinstance(seed, np.integer):
        seed = int(seed)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        from .design import DesignError

        raise DesignError(f"seed must be a non-negative integer, got {seed!r}")
    return seed


def data_seedseq(seed: int, key: str, rep: int, attempt: int = 0) -> np.random.SeedSequence:
    """The SeedSequence of the dataset of (condition ``key``, replication ``rep``, redraw ``attempt``)."""
    return np.random.SeedSequence(_check_seed(seed), spawn_key=(int(key, 16), int(rep), DATA_STREAM, int(attempt)))


def method_seedseq(seed: int, key: str, rep: int, method: str, attempt: int = 0) -> np.random.SeedSequence:
    """The SeedSequence of method ``method`` on the dataset of (``key``, ``rep``, ``attempt``)."""
    return np.random.SeedSequence(
        _check_seed(seed), spawn_key=(int(key, 16), int(rep), METHOD_STREAM, name_word(method), int(attempt))
    )


def data_rng(seed: int, key: str, rep: int, attempt: int = 0) -> np.random.Generator:
    return np.random.default_rng(data_seedseq(seed, key, rep, attempt))


def method_rng(seed: int, key: str, rep: int, method: str, attempt: int = 0) -> np.random.Generator:
    return np.random.default_rng(method_seedseq(seed, key, rep, method, attempt))
