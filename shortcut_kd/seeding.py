"""Per-sample seeds: every decision about a sample comes from the run seed and the sample id."""

from __future__ import annotations

import hashlib

import numpy as np


def sample_seed(seed: int, sample_id: str, salt: str = "") -> int:
    """A 32-bit seed derived from ``seed``, ``sample_id`` and an optional ``salt``.

    Uses a cryptographic hash (not Python's ``hash``, which is salted per process), so every
    worker, epoch, rerun and machine derives the same value.
    """
    digest = hashlib.sha256(f"{int(seed)}|{salt}|{sample_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def sample_rng(seed: int, sample_id: str, salt: str = "") -> np.random.RandomState:
    """A ``numpy.random.RandomState`` seeded by :func:`sample_seed`."""
    return np.random.RandomState(sample_seed(seed, sample_id, salt))


def sample_uniform(seed: int, sample_id: str, salt: str = "") -> float:
    """A uniform number in [0, 1) fixed by the seed and the sample id."""
    return sample_seed(seed, sample_id, salt) / 2**32
