"""Collection settings: a module of an optional extra that is not installed is not collected;
under pytest-xdist (``-n auto``, the default) each worker gets its share of the cores, so the
workers' torch thread pools do not oversubscribe the machine."""

from __future__ import annotations

import importlib.util
import os

import torch

collect_ignore = [] if importlib.util.find_spec("avalanche") else ["online_mas/avalanche.py"]

_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))
