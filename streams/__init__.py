"""Task-free data streams with hidden ground truth, for online-mas experiments."""

from __future__ import annotations

__all__: list[str] = []
