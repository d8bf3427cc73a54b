"""Label-free signals a detector can watch, computed from the forward pass importance already makes.

Each signal maps the model output of a batch (the tensor whose squared norm MAS uses, in eval mode,
detached) to one float per batch, and to one value per sample where that makes sense (for the
hard-sample buffer). None of them reads a label.

- ``"output_norm"``: mean squared L2 norm of the output, ``mean_n ||f(x_n)||^2`` (the quantity MAS
  differentiates).
- ``"entropy"``: mean predictive entropy of ``softmax(f(x))`` in nats; rises when the inputs stop
  looking like what the model has learned.
- ``"max_prob"``: mean maximum softmax probability; falls when the model grows unsure.
- ``"feature_shift"``: how far the batch mean output moved from a running (EMA) mean of the stream,
  in units of its expected sampling variance (about 1 on a stationary stream). Stateful (see
  :class:`FeatureShift`).
- ``"loss"``: the training loss the user passes to ``observe(x, loss=...)`` (not label-free; the
  task-free paper watches it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "SIGNALS",
    "Entropy",
    "FeatureShift",
    "Loss",
    "MaxProb",
    "OutputNorm",
    "per_sample",
    "signal_from",
    "signal_value",
]

SIGNALS = ("output_norm", "entropy", "max_prob", "feature_shift", "loss")


def per_sample(name: str, out: Tensor) -> Tensor:
    """One surprise value per sample for the stateless signals (shape ``(N,)``, float32).

    Examples
    --------
    >>> import torch
    >>> out = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    >>> [round(v, 4) for v in per_sample("entropy", out).tolist()]
    [0.6931, 0.0]
    >>> per_sample("output_norm", out)
    tensor([  0., 200.])
    """
    out = out.detach().float().flatten(1)
    if name == "output_norm":
        return out.pow(2).sum(1)
    logp = torch.log_softmax(out, dim=1)
    if name == "entropy":
        return -(logp.exp() * logp).sum(1)
    if name == "max_prob":
        return logp.max(1).values.exp()
    raise ValueError(f"per-sample values exist for output_norm, entropy and max_prob, got {name!r}")


def signal_value(name: str, out: Tensor) -> float:
    """The batch mean of a stateless signal (``output_norm``, ``entropy``, ``max_prob``).

    Examples
    --------
    >>> import torch
    >>> round(signal_value("entropy", torch.tensor([[0.0, 0.0], [10.0, -10.0]])), 4)
    0.3466
    """
    if name == "entropy":  # the batch total in one reduction (runs on every observe step)
        logp = torch.log_softmax(out.detach().float().flatten(1), dim=1)
        return -float((logp.exp() * logp).sum()) / out.shape[0]
    return float(per_sample(name, out).mean())


class _Stateless:
    """A signal that is a function of the batch output alone."""

    name = ""

    def __call__(self, out: Tensor) -> float:
        return signal_value(self.name, out)

    def surprise(self, out: Tensor) -> Tensor:
        """Per-sample surprise for the hard-sample buffer (higher: more surprising)."""
        return per_sample(self.name if self.name != "max_prob" else "entropy", out)

    def per_sample(self, out: Tensor) -> Tensor:
        """The signal of each sample (its batch mean is ``self(out)``), shape ``(N,)``."""
        return per_sample(self.name, out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class OutputNorm(_Stateless):
    """``mean_n ||f(x_n)||^2``, the quantity MAS differentiates."""

    name = "output_norm"


class Entropy(_Stateless):
    """Mean predictive entropy of ``softmax(f(x))`` in nats (the default)."""

    name = "entropy"


class MaxProb(_Stateless):
    """Mean maximum softmax probability; the buffer ranks samples by entropy instead."""

    name = "max_prob"


class Loss:
    """The training loss passed as ``observe(x, loss=...)`` (reads labels, unlike the others)."""

    name = "loss"

    def __repr__(self) -> str:
        return "Loss()"


def signal_from(spec: object) -> object:
    """The signal object for a name of :data:`SIGNALS`, or ``spec`` itself if it is callable
    (``signal(out) -> float``) or a :class:`Loss`.

    Examples
    --------
    >>> signal_from("entropy")
    Entropy()
    """
    if isinstance(spec, str):
        by_name = {"output_norm": OutputNorm, "entropy": Entropy, "max_prob": MaxProb,
                   "feature_shift": FeatureShift, "loss": Loss}
        if spec not in by_name:
            raise ValueError(f"signal must be one of {SIGNALS} or a signal object, got {spec!r}")
        return by_name[spec]()
    if isinstance(spec, Loss) or callable(spec):
        return spec
    raise TypeError(f"signal must be a name from {SIGNALS} or callable as signal(out) -> float, "
                    f"got {spec!r}")


class FeatureShift:
    """Standardised distance of each batch's mean output from a running mean of the stream.

    ``value = mean_d (m_d - mu_d)^2 / (v_d / N + eps)`` where ``m`` is the mean of the (flattened)
    output over the ``N`` samples of the batch, ``mu`` an exponential moving average of past batch
    means and ``v`` one of past within-batch variances, both with the given half-life in batches.
    On a stationary stream ``m - mu`` has variance about ``v / N``, so the value hovers around 1;
    a new distribution shows up as a jump that fades as the averages catch up. The statistics are
    updated after the value is computed; the first batch gives 0.

    Parameters
    ----------
    half_life
        Half-life of the running mean and variance, in batches (> 0).
    eps
        Added to the variance of the mean.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> fs = FeatureShift(half_life=20)
    >>> before = [fs(torch.randn(32, 4, generator=g)) for _ in range(50)]
    >>> after = fs(torch.randn(32, 4, generator=g) + 3.0)
    >>> round(sum(before[1:]) / 49, 1), round(after)
    (1.3, 305)
    """

    def __init__(self, *, half_life: float = 50.0, eps: float = 1e-8) -> None:
        if not (isinstance(half_life, int | float) and math.isfinite(half_life) and half_life > 0):
            raise ValueError(f"half_life must be a finite number > 0 (batches), got {half_life!r}")
        if not (isinstance(eps, int | float) and math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
        self.half_life = float(half_life)
        self.eps = float(eps)
        self._reset()

    name = "feature_shift"

    def surprise(self, out: Tensor) -> Tensor:
        """Per-sample surprise for the hard-sample buffer: the predictive entropy."""
        return per_sample("entropy", out)

    def _reset(self) -> None:
        self._mean: Tensor | None = None
        self._var: Tensor | None = None
        self._n = 0

    def __call__(self, out: Tensor) -> float:
        flat = out.detach().float().flatten(1)
        m = flat.mean(0)
        within = flat.var(0, unbiased=True) if flat.shape[0] > 1 else None
        if self._mean is not None and self._var is not None and self._mean.device != m.device:
            self._mean, self._var = self._mean.to(m.device), self._var.to(m.device)  # a loaded state
        if self._mean is None or self._var is None or self._mean.shape != m.shape:
            self._mean = m.clone()
            self._var = within.clone() if within is not None else torch.zeros_like(m)
            self._n = 1
            return 0.0
        value = float(((m - self._mean).pow(2) / (self._var / flat.shape[0] + self.eps)).mean())
        keep = 0.5 ** (1.0 / self.half_life)
        self._mean.lerp_(m, 1.0 - keep)
        if within is not None:
            self._var.lerp_(within, 1.0 - keep)
        self._n += 1
        return value

    def state_dict(self) -> dict[str, object]:
        return {"version": 1, "half_life": self.half_life, "eps": self.eps, "n": self._n,
                "mean": self._mean, "var": self._var}

    def load_state_dict(self, state: dict[str, object]) -> None:
        if state.get("version") != 1:
            raise ValueError(f"unsupported FeatureShift state version {state.get('version')!r}")
        self.half_life = float(state["half_life"])  # type: ignore[arg-type]
        self.eps = float(state["eps"])  # type: ignore[arg-type]
        self._n = int(state["n"])  # type: ignore[call-overload]
        mean, var = state["mean"], state["var"]
        self._mean = mean.clone() if isinstance(mean, Tensor) else None
        self._var = var.clone() if isinstance(var, Tensor) else None
