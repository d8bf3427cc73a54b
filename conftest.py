"""Collection settings: a module of an optional extra that is not installed is not collected."""

from __future__ import annotations

import importlib.util

collect_ignore = [] if importlib.util.find_spec("avalanche") else ["online_mas/avalanche.py"]
