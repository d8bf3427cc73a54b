"""Derive independent, reproducible seeds from tuples of integers (private helpers).

Every random choice of a stream is keyed by a tuple such as ``(seed, tag, segment, pass)``, so any
batch can be rebuilt on its own without replaying the stream: that is what makes streams lazy and
resumable.
"""

from __future__ import annotations

import numpy as np
import torch

_MASK = (1 << 64) - 1

# Tags keep the random streams of different purposes apart.
TAG_ORDER = 1  # per-segment sample order (permutation of a pass)
TAG_SIDE = 2  # random picks for blurry draws outside a segment's own span
TAG_DRAW = 3  # per-batch draw of which segment each sample comes from
TAG_TRANSFORM = 4  # per-batch randomness of stochastic transforms (noise)
TAG_EVAL = 5  # randomness of evaluation sets
TAG_SCENARIO = 6  # scenario construction (permutations, label shift, ...)
TAG_SCHEDULE = 7  # schedule construction (random lengths, recurring order)


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def mix(*keys: int) -> int:
    """Hash integer keys into one 63-bit seed (splitmix64 chain).

    >>> mix(0, 1) == mix(0, 1), mix(0, 1) == mix(1, 0)
    (True, False)
    """
    h = 0
    for k in keys:
        h = _splitmix64(h ^ (int(k) & _MASK))
    return h >> 1


def torch_generator(*keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``mix(*keys)``."""
    return torch.Generator().manual_seed(mix(*keys))


def numpy_rng(*keys: int) -> np.random.Generator:
    """A numpy ``Generator`` seeded from ``mix(*keys)``."""
    return np.random.default_rng(mix(*keys))
