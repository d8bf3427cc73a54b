"""Model factories for ``model.kind = "factory"`` configs (``factory = "factories:<name>"``).

The tests folder is on ``sys.path`` under pytest, so this module is importable as ``factories``.
"""

from __future__ import annotations

from torch import nn


def tiny_mlp(*, width: int = 16, n_classes: int = 10, in_features: int = 64) -> nn.Module:
    """Flatten, one hidden layer of ``width``, a linear head."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.ReLU(),
                         nn.Linear(width, n_classes))


def not_a_module() -> object:
    """Returns something that is not an ``nn.Module``."""
    return [1, 2, 3]


def broken(**kwargs: object) -> nn.Module:
    """Fails inside the user's code."""
    raise KeyError("no such layer")


NOT_CALLABLE = 3
