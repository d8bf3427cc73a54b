"""The models of the runner, built from ``[model]``: an MLP, a small CNN, or your own factory.

``kind = "factory"`` imports the module named by ``model.factory`` (running its code) and calls
the factory with ``model.kwargs``; :func:`check_model` then runs it once on the stream's input
shape (the runner's preflight does, before the run directory exists).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

from online_mas.experiment.config import ModelConfig

__all__ = ["build_model", "check_model", "load_factory", "model_signature"]


def build_model(config: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """Build the network ``config`` describes for inputs of ``input_shape`` (without batch).

    The MLP flattens its input: ``Linear -> ReLU`` per entry of ``hidden``, then a linear head.
    The CNN expects ``(C, H, W)`` inputs: per entry of ``channels`` a block ``Conv2d(3x3, padding
    1) -> ReLU -> MaxPool2d(2)`` (the pooling is skipped once the map is 1 pixel wide), then the
    MLP part on the flattened features. Initialisation is PyTorch's default, so seed the global
    generator first (the runner calls ``torch.manual_seed(seed)``). Kind ``"factory"`` returns
    ``load_factory(config.factory)(**config.kwargs)``, which must be an ``nn.Module``.

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
    if config.kind == "factory":
        return _from_factory(config)
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


def load_factory(spec: str) -> Callable[..., object]:
    """Import ``"package.module:name"`` (``name`` may be dotted) and return that callable.

    Examples
    --------
    >>> load_factory("torch.nn:Linear") is nn.Linear
    True
    >>> load_factory("torch.nn:Linearr")
    Traceback (most recent call last):
    ...
    ValueError: factory 'torch.nn:Linearr': module 'torch.nn' has no attribute 'Linearr'
    """
    module_name, _, attr = spec.partition(":")
    try:
        obj: object = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or the module's own code failing
        raise ValueError(f"factory {spec!r}: cannot import module {module_name!r} ({_line(err)}); it "
                         "must be installed or on PYTHONPATH") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"factory {spec!r}: module {module_name!r} has no attribute "
                             f"{attr!r}") from None
    if not callable(obj):
        raise TypeError(f"factory {spec!r} must be callable, got a {type(obj).__name__}")
    return obj


def check_model(model: nn.Module, input_shape: tuple[int, ...], n_classes: int) -> None:
    """Run ``model`` (in eval mode, no grad) on a batch of 2 zeros; it must give ``(2, n_classes)``.

    Examples
    --------
    >>> check_model(nn.Linear(4, 3), (4,), 3)
    >>> check_model(nn.Linear(4, 3), (4,), 10)
    Traceback (most recent call last):
    ...
    ValueError: the model must return one logit per class, shape (batch, 10), got (2, 3)
    """
    x = torch.zeros(2, *input_shape)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as err:  # a user's module may raise anything
        raise ValueError(f"the model does not take the stream's inputs of shape {tuple(input_shape)} "
                         f"(batch first): {_line(err)}") from None
    finally:
        model.train(was)
    got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
    if got != (2, n_classes):
        raise ValueError(f"the model must return one logit per class, shape (batch, {n_classes}), "
                         f"got {got}")


def _from_factory(config: ModelConfig) -> nn.Module:
    spec, kwargs = str(config.factory), dict(config.kwargs or {})
    fn = load_factory(spec)
    try:
        model = fn(**kwargs)
    except Exception as err:  # the user's code: one line, not a traceback
        raise ValueError(f"factory {spec!r} called with kwargs {kwargs!r} failed: {_line(err)}") from None
    if not isinstance(model, nn.Module):
        raise TypeError(f"factory {spec!r} must return a torch.nn.Module, got a {type(model).__name__}")
    return model


def _line(err: BaseException) -> str:
    """An exception as one line: its type and its message with the whitespace collapsed."""
    return " ".join(f"{type(err).__name__}: {err}".split())


def model_signature(model: nn.Module) -> dict[str, list[int]]:
    """Name and shape of every parameter and buffer, to check a checkpoint against a model.

    Examples
    --------
    >>> from torch import nn
    >>> model_signature(nn.Linear(3, 2))
    {'weight': [2, 3], 'bias': [2]}
    """
    return {name: list(t.shape) for name, t in model.state_dict().items() if isinstance(t, Tensor)}

