"""Where and in which precision a run trains: ``run.device`` and ``run.precision``.

``run.device`` is ``"auto"`` (the current CUDA device when there is one, else the CPU), ``"cpu"``,
``"cuda"`` (the current CUDA device; under ``torchrun`` each rank's ``cuda:LOCAL_RANK``),
``"cuda:N"`` or ``"mps"``. ``run.precision`` is ``"32"`` (float32 throughout), ``"bf16-mixed"``
or ``"16-mixed"``: the forward and the task loss run under :func:`torch.autocast` in bfloat16
or float16, the parameters, the optimizer and the OnlineMAS state stay float32; ``"16-mixed"``
also scales the loss (:class:`torch.amp.GradScaler`) and needs CUDA.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch

__all__ = ["DEVICES", "PRECISIONS", "autocast", "available_devices", "check_device_spec",
           "check_precision", "grad_scaler", "resolve_device"]

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")  # run.device ("cuda:N": N an int >= 0)
PRECISIONS = ("32", "bf16-mixed", "16-mixed")  # run.precision
_AUTOCAST_DTYPE = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
_CUDA_N = re.compile(r"cuda:(0|[1-9][0-9]*)")


def check_device_spec(spec: object) -> None:
    """Check the spelling of a ``run.device`` value (not whether the device is there).

    Examples
    --------
    >>> check_device_spec("cuda:1")
    >>> check_device_spec("gpu")
    Traceback (most recent call last):
    ...
    ValueError: device must be one of ('auto', 'cpu', 'cuda', 'cuda:N', 'mps'), got 'gpu'
    """
    if not isinstance(spec, str) or not (spec in DEVICES[:3] or spec == "mps"
                                         or _CUDA_N.fullmatch(spec)):
        raise ValueError(f"device must be one of {DEVICES}, got {spec!r}")


def available_devices() -> tuple[str, ...]:
    """The devices of this machine as ``run.device`` names them: ``"cpu"``, ``"cuda:N"``, ``"mps"``.

    Examples
    --------
    >>> available_devices()[0]
    'cpu'
    """
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return tuple(names)


def resolve_device(spec: str) -> torch.device:
    """The :class:`torch.device` of a ``run.device`` value, if this machine has it.

    Raises
    ------
    ValueError
        The value is misspelt, or the device is not there; the message lists what is.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("cuda:99")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: device 'cuda:99' is not available on this machine; available: cpu...
    """
    check_device_spec(spec)
    cuda = torch.cuda.is_available()
    if spec == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    there = {"cuda": cuda, "mps": torch.backends.mps.is_available()}
    if spec.startswith("cuda:"):
        there[spec] = cuda and int(spec[5:]) < torch.cuda.device_count()
    if not there[spec]:
        raise ValueError(f"device {spec!r} is not available on this machine; available: "
                         f"{', '.join(available_devices())} (or 'auto')")
    if spec == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(spec)


def check_precision(precision: object, device: torch.device) -> None:
    """Check that ``precision`` is one of :data:`PRECISIONS` and runs on ``device``.

    Examples
    --------
    >>> check_precision("bf16-mixed", torch.device("cpu"))
    >>> check_precision("16-mixed", torch.device("cpu"))
    Traceback (most recent call last):
    ...
    ValueError: precision '16-mixed' needs a CUDA device, got device cpu; use 'bf16-mixed' or '32'
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "16-mixed" and device.type != "cuda":
        raise ValueError(f"precision '16-mixed' needs a CUDA device, got device {device}; use "
                         "'bf16-mixed' or '32'")
    if precision == "bf16-mixed" and device.type == "cuda" \
            and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ValueError(f"precision 'bf16-mixed' needs a GPU with bfloat16 support, and {device} "
                         f"({torch.cuda.get_device_name(device)}) has none; use '16-mixed' or '32'")


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """:func:`torch.autocast` for ``precision`` on ``device``; nothing for ``"32"``.

    Examples
    --------
    >>> with autocast(torch.device("cpu"), "bf16-mixed"):
    ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
    torch.bfloat16
    """
    dtype = _AUTOCAST_DTYPE.get(precision)
    if dtype is None:
        yield
        return
    with torch.autocast(device.type, dtype=dtype):
        yield


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """The loss scaler of ``"16-mixed"`` on CUDA, else ``None`` (bfloat16 needs none).

    Examples
    --------
    >>> grad_scaler(torch.device("cpu"), "bf16-mixed") is None
    True
    """
    if precision == "16-mixed" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None
