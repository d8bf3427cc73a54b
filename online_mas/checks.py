"""Small validation helpers shared by the library's constructors (private)."""

from __future__ import annotations

import math


def check_choice(name: str, value: object, allowed: tuple[object, ...]) -> None:
    """Raise ValueError naming ``value`` unless it is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def is_real(v: object) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def is_int(v: object) -> bool:
    """An int that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)
