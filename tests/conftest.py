"""Shared test settings: hypothesis draws the same examples on every run (a reproducible CI)."""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("online-mas", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("online-mas")
