"""online-mas: online, label-free Memory Aware Synapses for task-free continual learning."""

from __future__ import annotations

__version__ = "0.1.0"

__all__: list[str] = ["__version__"]
