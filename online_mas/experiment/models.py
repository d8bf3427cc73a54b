"""The two model families of the runner: an MLP and a small CNN, built from ``[model]``."""

from __future__ import annotations

from torch import Tensor, nn

from online_mas.experiment.config import ModelConfig

__all__ = ["build_model", "model_signature"]


def build_model(config: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """Build the network ``config`` describes for inputs of ``input_shape`` (without batch).

    The MLP flattens its input: ``Linear -> ReLU`` per entry of ``hidden``, then a linear head.
    The CNN expects ``(C, H, W)`` inputs: per entry of ``channels`` a block ``Conv2d(3x3, padding
    1) -> ReLU -> MaxPool2d(2)`` (the pooling is skipped once the map is 1 pixel wide), then the
    MLP part on the flattened features. Initialisation is PyTorch's default, so seed the global
    generator first (the runner calls ``torch.manual_seed(seed)``).

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> mlp = build_model(ModelConfig(), (1, 8, 8), 10)
    >>> mlp(torch.zeros(2, 1, 8, 8)).shape, sum(p.numel() for p in mlp.parameters())
    (torch.Size([2, 10]), 17610)
    >>> cnn = build_model(ModelConfig(kind="cnn", hidden=(32,)), (1, 8, 8), 10)
    >>> cnn(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a ModelConfig, got {type(config)!r}")
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"n_classes must be an int >= 1, got {n_classes!r}")
    layers: list[nn.Module] = []
    if config.kind == "cnn":
        if len(input_shape) != 3:
            raise ValueError(f"model kind 'cnn' needs image inputs of shape (C, H, W), got "
                             f"{input_shape}; use kind = 'mlp'")
        c, h, w = input_shape
        for out in config.channels:
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU()]
            if min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = out
        d = c * h * w
    else:
        d = 1
        for s in input_shape:
            d *= s
    layers.append(nn.Flatten())
    for width in config.hidden:
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    layers.append(nn.Linear(d, n_classes))
    return nn.Sequential(*layers)


def model_signature(model: nn.Module) -> dict[str, list[int]]:
    """Name and shape of every parameter and buffer, to check a checkpoint against a model.

    Examples
    --------
    >>> from torch import nn
    >>> model_signature(nn.Linear(3, 2))
    {'weight': [2, 3], 'bias': [2]}
    """
    return {name: list(t.shape) for name, t in model.state_dict().items() if isinstance(t, Tensor)}

