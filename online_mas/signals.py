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
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from online_mas.shift_windows import Constants, Reference, piece_statistics

__all__ = [
    "SIGNALS",
    "Entropy",
    "FeatureShift",
    "InputShift",
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

    def per_sample_many(self, out: Tensor) -> Tensor:
        """:meth:`per_sample` of many stacked batches (the Trigger's deferred evaluation): the same
        values up to float32 rounding, with the softmax taken over the classes of all samples at
        once (a ``(classes, samples)`` layout, several times faster than row by row on a CPU)."""
        if self.name == "output_norm":
            return per_sample(self.name, out)
        logp = torch.log_softmax(out.detach().float().flatten(1).t().contiguous(), dim=0)
        if self.name == "entropy":
            return (logp.exp() * logp).sum(0).neg_()
        return logp.max(0).values.exp()

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


class InputShift:
    r"""Per-sample values whose sum over each window of ``window`` samples is the standardised
    squared shift of that window's mean input features from a running reference of the stream.

    The features of a sample are its flattened input :math:`x` (:math:`D` values) and, with
    ``projections`` :math:`= k > 0`, the squares :math:`(r_j^\top x)^2` of :math:`k` fixed random
    projections (:math:`r_j` Gaussian with variance :math:`1/D`, drawn from ``seed``): their means
    are the input's second moments along :math:`k` random directions, which move when the pixels
    or positions are permuted, or the inputs rotate, even where every per-dimension mean stays
    (MNIST-1D's shifted signals: ``results/detection.md``). With ``fourier`` :math:`= m > 0`,
    :math:`m` random Fourier features :math:`\cos(w_j^\top x / \sigma + b_j)` follow
    (:math:`w_j` standard Gaussian, :math:`b_j` uniform on :math:`[0, 2\pi)`, drawn from ``seed``
    apart from the projections; Rahimi and Recht, NIPS 2007): their means are a Gaussian-kernel
    embedding of the input distribution, bounded features that see a change of where the inputs
    lie which moves neither the means nor the second moments much (river's RandomRBF A B A).
    For inputs larger than the projections (:math:`D > k > 0`) the Fourier features are of the
    projections instead, :math:`\cos(w_j^\top R^\top x / \sigma + b_j)` with :math:`w_j` of size
    :math:`k` (a Gaussian kernel on a random :math:`k`-dimensional projection of the inputs, which
    scales their distances by about :math:`\sqrt{k / D}`, within some ten percent): their cost
    stops growing with :math:`D` (a ``(N, D) x (D, k)`` and a ``(N, k) x (k, m)`` product instead
    of ``(N, D) x (D, k)`` and ``(N, D) x (D, m)``), and :math:`\sigma` is measured between the
    projections, so the scale of the distances does not matter.
    :math:`\sigma` is ``bandwidth`` times the median Euclidean distance between the samples of
    the first window after construction (or after inputs of a new size): the median of the
    positive distances between its usable samples, at least :math:`10^{-6}` times their root mean
    square norm (that norm when the samples are all the same, 1 when they are all zero); it stays
    for the stream (:meth:`restart` keeps it). Until that window is complete its raw inputs are
    kept, so the features are the same whatever the batch size; :math:`\sigma` is at least where
    no usable input can overflow the features' arguments. A sample that holds a nan or an inf, or
    a value beyond :meth:`input_limit` (where the float32 features or their window sums of squares
    would overflow: about :math:`10^8` with projections), is left out with a warning: the
    reference's mean input at its window's start (before there is a reference, the first window's
    mean usable input) stands in for it, whatever the batch size. A stand-in does not move the
    reference's mean but shrinks its variance: where many samples are unusable for long (half of
    them, on a stationary stream), the shift channel can fire on that alone. With
    the reference mean :math:`\mu` and per-feature variance :math:`v` (frozen during a window),
    :math:`y_n = (f_n - \mu) / \sqrt{v + \epsilon \bar v}` (:math:`\bar v` the mean of :math:`v`
    over the input's features, and separately over the projections' and the Fourier features', so
    the floor is scale-free) and :math:`P_n` the sum of the :math:`y` of the window's earlier
    samples, sample :math:`n` gets :math:`s_n = (2\langle y_n, P_n\rangle + \|y_n\|^2)/F`
    (:math:`F = D + k + m` features), so that a
    window sums to :math:`\|\sum_n y_n\|^2 / F`, :math:`W` times the mean over features of
    :math:`W (m_f - \mu_f)^2 / v_f`: the values average about 1 on a stationary stream and much
    more when the input distribution moves. Values depend only on earlier samples and windows are
    aligned to the sample count, so a stream cut into batches of any size gives the same values (up
    to rounding). Inputs of another size than before restart the reference (and draw new
    projections). At the end of each window the reference moves toward it (exponential moving
    averages with ``half_life`` samples; plain means while they hold fewer samples). The first
    window after construction or :meth:`restart` sets the reference and gives zeros.

    The inputs, not the model's features, because they do not drift while the model learns: on
    recurring permuted digits the window statistic of the penultimate features or the logits
    varies within a segment as much as at a change (``results/detection.md``). It sees changes of
    the input means, of the second moments along the projections and of the Fourier features'
    means (where the inputs lie, at the scale of :math:`\sigma`), returns to a learned segment
    included, and nothing of P(y|x) (use the ``loss`` signal for that); a change that keeps all
    three (e.g. a new class whose inputs lie among the old ones) stays for the entropy.

    Parameters
    ----------
    window
        Samples per window, >= 2.
    half_life
        Half-life of the reference, in samples, > 0.
    eps
        Relative variance floor (features that are constant in the reference), > 0.
    projections
        Random projections whose squares join the features, >= 0 (0: the input means only, the
        statistic before version 2). They cost a ``(N, D) x (D, k)`` product per batch and ``D k``
        float32 values of memory on the inputs' device.
    fourier
        Random Fourier features that join the features, >= 0 (0: none, the statistic before
        version 3). They cost a ``(N, D) x (D, m)`` product (``(N, k) x (k, m)`` for
        :math:`D > k`: of the projections, since version 4) and a cosine per batch.
    bandwidth
        The Fourier features' length scale in units of the first window's median distance, > 0.
    seed
        Seed of the projections and the Fourier features (the same on every rank and run), >= 0.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> shift = InputShift(window=4)
    >>> before = torch.cat([shift.per_sample(torch.randn(8, 3, generator=g)) for _ in range(50)])
    >>> after = shift.per_sample(torch.randn(8, 3, generator=g) + 2.0)
    >>> round(float(before[8:].mean()), 1), float(after.mean()) > 10  # about 1, then much more
    (1.1, True)
    """

    name = "input_shift"

    def __init__(self, *, window: int = 32, half_life: float = 2048.0, eps: float = 1e-3,
                 projections: int = 64, fourier: int = 256, bandwidth: float = 0.5,
                 seed: int = 0) -> None:
        if not (isinstance(window, int) and not isinstance(window, bool) and window >= 2):
            raise ValueError(f"window must be an int >= 2 (samples), got {window!r}")
        for key, n in (("projections", projections), ("fourier", fourier), ("seed", seed)):
            if not (isinstance(n, int) and not isinstance(n, bool) and n >= 0):
                raise ValueError(f"{key} must be an int >= 0, got {n!r}")
        for key, v in (("half_life", half_life), ("eps", eps), ("bandwidth", bandwidth)):
            if isinstance(v, bool) or not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"{key} must be a finite number > 0, got {v!r}")
        self.window = window
        self.half_life = float(half_life)
        self.eps = float(eps)
        self.projections = projections
        self.fourier = fourier
        self.bandwidth = float(bandwidth)
        self.seed = seed
        self._proj: Tensor | None = None  # (D, projections) float32, drawn from seed for this D
        self._rff: tuple[object, Tensor, Tensor] | None = None  # key, (D, fourier) w / sigma, b
        self._sigma: float | None = None  # the Fourier features' length scale (None: not yet set)
        self._sigma_inputs: int | None = None  # ... for inputs of this size
        self._fill: Tensor | None = None  # the first window's mean usable input (set with sigma)
        self._proj_norm: tuple[int, float] | None = None  # inputs, largest projection column norm
        self._constants: tuple[object, Constants] | None = None  # piece_sums' matrices
        self.restart()

    @property
    def open_count(self) -> int:
        """Samples in the open window (read-only): where the next window ends."""
        return self._count

    @property
    def fourier_scale(self) -> float | None:
        """The Fourier features' length scale :math:`\\sigma` (read-only; None until the first
        window is complete)."""
        return self._sigma

    def restart(self) -> None:
        """Forget the reference (after a consolidation: the new segment becomes the reference).
        The Fourier features' length scale stays: it is the stream's, measured once."""
        self._raw: Tensor | None = None  # the first window's inputs while the length scale waits
        self._mean: Tensor | None = None
        self._scale: Tensor | None = None  # 1 / sqrt(v + eps * mean(v))
        self._var: Tensor | None = None
        self._prefix: Tensor | None = None  # sum of y over the open window
        self._sum: Tensor | None = None  # sum and sum of squares of x over the open window
        self._sumsq: Tensor | None = None
        self._count = 0  # samples in the open window
        self._windows = 0  # windows in the reference

    def per_sample(self, x: Tensor) -> Tensor:
        """The values of the samples of ``x`` (batch first, any shape), shape ``(N,)``, float64."""
        raw = self._rows(x)
        self._follow(raw)
        good = self._good_rows(raw)
        if self._first_window(raw):
            return raw.new_zeros(raw.shape[0], dtype=torch.float64)
        flat = self._features(raw) if good is None else None
        out, i, n = [], 0, raw.shape[0]
        while i < n:  # window by window (a stand-in is the reference's mean at its window's start)
            take = min(self.window - self._count, n - i)
            chunk = (flat[i:i + take] if flat is not None
                     else self._features(self._stand_in(raw[i:i + take], good[i:i + take])))  # type: ignore[index]
            out.append(self._chunk(chunk))
            i += take
        return torch.cat(out) if out else raw.new_zeros(0, dtype=torch.float64)

    def piece_sums(self, x: Tensor, cuts: Sequence[int] = ()) -> tuple[Tensor, list[int]]:
        """The sums of :meth:`per_sample`'s values over the pieces of ``x`` that ``cuts`` (sample
        offsets into ``x``, e.g. batch ends) and the window ends delimit, and the pieces' lengths.

        The same sums and the same state after as ``per_sample(x)`` up to rounding (the float32
        features are summed over each piece around the reference mean, the reference is kept in
        float64; a constant stream gives exactly per_sample's zeros), in a fixed number of
        tensor operations whatever the number of windows in ``x``
        (:func:`~online_mas.shift_windows.piece_statistics`): what a detector of window means
        needs, and how the Trigger's deferred evaluation feeds
        :class:`~online_mas.detectors.Combined`. Returns a float64 tensor and a list.

        Examples
        --------
        >>> import torch
        >>> x = torch.randn(100, 3, generator=torch.Generator().manual_seed(0))
        >>> a, b = InputShift(window=8), InputShift(window=8)
        >>> sums, lengths = a.piece_sums(x, cuts=[50])
        >>> lengths[:8], sum(lengths)
        ([8, 8, 8, 8, 8, 8, 2, 6], 100)
        >>> each = b.per_sample(x).split(lengths)
        >>> torch.allclose(sums, torch.stack([v.sum() for v in each]), rtol=1e-4, atol=1e-6)
        True
        """
        raw = self._rows(x)
        n = raw.shape[0]
        self._follow(raw)
        if n == 0:
            return raw.new_zeros(0, dtype=torch.float64), []
        w, c0 = self.window, self._count
        ends = [*sorted({c for c in cuts if 0 < c < n} | set(range(w - c0, n, w))), n]
        lengths = [e - s for s, e in zip([0, *ends[:-1]], ends, strict=True)]
        good = self._good_rows(raw)
        if self._first_window(raw):
            return raw.new_zeros(len(lengths), dtype=torch.float64), lengths
        if good is None:
            return self._bulk(raw, lengths), lengths
        groups: list[list[int]] = [[]]  # the pieces, window by window (a stand-in is the
        pos = self._count  # reference's mean at its window's start)
        for k in lengths:
            groups[-1].append(k)
            pos += k
            if pos % w == 0:
                groups.append([])
        out, at = [], 0
        for group in (g for g in groups if g):
            m = sum(group)
            out.append(self._bulk(self._stand_in(raw[at:at + m], good[at:at + m]), group))
            at += m
        return torch.cat(out), lengths

    def _bulk(self, flat: Tensor, lengths: list[int]) -> Tensor:
        """:meth:`piece_sums` of usable inputs ``flat`` over pieces of ``lengths`` samples."""
        w, c0 = self.window, self._count
        feats = self._blocks(flat.float())
        sums, sumsq = _piece_sums(feats, lengths, self._mean)
        ref = Reference(self._mean, self._var, self._scale, self._sum, self._sumsq, c0, self._windows)
        blocks = tuple(t.shape[1] for t in feats)
        key = (w, self.half_life, self.eps, blocks)
        if self._constants is None or self._constants[0] != key:
            self._constants = (key, Constants(window=w, half_life=self.half_life, eps=self.eps,
                                              blocks=blocks))
        out, after, prefix = piece_statistics(sums, sumsq, lengths, ref, self._constants[1])
        self._mean, self._var, self._scale = after.mean, after.var, after.scale
        self._sum, self._sumsq = after.sum, after.sumsq
        self._count, self._windows = after.filled, after.windows
        self._prefix = prefix
        return out

    @staticmethod
    def _rows(x: Tensor) -> Tensor:
        """The samples of ``x`` as rows, floating point (bool and integer inputs in float64)."""
        raw = x.detach().flatten(1)
        return raw if raw.is_floating_point() else raw.double()

    def _good_rows(self, flat: Tensor) -> Tensor | None:
        """None when the input shift can use every sample of ``flat`` (one reduction), else which
        it can (a bool mask), with a warning: a sample that holds a nan or an inf, or a value
        beyond :meth:`input_limit` (its float32 features would overflow), is left out."""
        if flat.numel() == 0:
            return None
        limit = self.input_limit(flat.shape[1])
        lo, hi = torch.aminmax(flat)
        if -limit <= float(lo) and float(hi) <= limit:  # False for a nan too
            return None
        good = _usable_rows(flat, limit)
        warnings.warn(f"InputShift: {int((~good).sum())} of {flat.shape[0]} samples have a nan, an inf or "
                      f"a value beyond +-{limit:.3g} (float32 features would overflow): they are left "
                      "out of the input shift (the reference's mean input stands in for them; before "
                      "there is a reference, the first window's mean usable input); scale the inputs "
                      "to keep them", RuntimeWarning, stacklevel=3)
        return good

    def _stand_in(self, flat: Tensor, good: Tensor) -> Tensor:
        """``flat`` with the rows that ``good`` does not mark replaced by the reference's mean
        input (before there is one, the first window's mean usable input): such a sample moves
        the reference's mean by nothing."""
        if bool(good.all()):
            return flat
        d = flat.shape[1]
        if self._mean is not None and self._mean.shape[0] == d + self.projections + self.fourier:
            fill = self._mean[:d].to(flat.device, flat.dtype)
        elif self._fill is not None and self._fill.shape[0] == d:
            fill = self._fill.to(flat.device, flat.dtype)
        else:  # not reached: the first window sets the fill
            fill = _mean_of(flat, good)
        return torch.where(good[:, None], flat, fill)

    def input_limit(self, inputs: int) -> float:
        """The largest absolute input value of a usable sample of ``inputs`` values: below it the
        float32 features, the squares of the projections included, and their squares summed over
        a window stay within float32 range."""
        top = math.sqrt(torch.finfo(torch.float32).max / (4 * self.window))  # a feature's bound
        if not self.projections:
            return top
        if self._proj_norm is None or self._proj_norm[0] != inputs:
            self._proj_norm = (inputs, float(self._draw_projection(inputs).norm(dim=0).max()))
        return min(top, math.sqrt(top) / (self._proj_norm[1] * math.sqrt(inputs)))

    def _follow(self, flat: Tensor) -> None:
        """Start afresh when the inputs change size (a growing river model: a new reference, new
        projections and a new length scale); follow them to another device."""
        d = flat.shape[1]
        kept = self._sum if self._sum is not None else self._mean
        size = (self._raw.shape[1] if self._raw is not None
                else kept.shape[0] - self.projections - self.fourier if kept is not None
                else self._sigma_inputs)
        if size is not None and size != d:
            self._sigma, self._sigma_inputs, self._fill = None, None, None
            self.restart()
        elif kept is not None and kept.device != flat.device:
            self._to(flat.device)
        if self._raw is not None and self._raw.device != flat.device:
            self._raw = self._raw.to(flat.device)

    def _first_window(self, flat: Tensor) -> bool:
        """While the stream's first window (that sets the Fourier features' length scale and the
        stand-in of unusable samples) stays open after ``flat``, keep its inputs and say so (its
        values are zeros); once ``flat`` closes it, set them and the window's feature sums from the
        kept inputs. A state that has measured anything (one saved before the first window was
        kept) goes on as it was."""
        if self._sigma_inputs is not None or self._mean is not None or (self._sum is not None
                                                                       and self._raw is None):
            return False
        if self._count + flat.shape[0] < self.window:
            self._keep_raw(flat)
            return True
        raw, good = self._settle(flat)
        if raw is not None:
            kept = self._stand_in(raw, good[:raw.shape[0]])
            if self.fourier:  # summed in float32 (as before), and fourier=0 in float64 (as per_sample)
                s0, q0 = _piece_sums(self._blocks(kept.float()), [raw.shape[0]])
                self._sum, self._sumsq = s0[0], q0[0]
            else:
                f = self._features(kept)
                self._sum, self._sumsq = f.sum(0), f.pow(2).sum(0)
        return False

    def _keep_raw(self, flat: Tensor) -> None:
        self._raw = flat.clone() if self._raw is None else torch.cat([self._raw, flat.to(self._raw.dtype)])
        self._count += flat.shape[0]

    def _settle(self, flat: Tensor) -> tuple[Tensor | None, Tensor]:
        """The first window closes within ``flat``: set the length scale from its samples (the
        kept ones and the first of ``flat``); returns the kept ones (None if none) and which of
        the window's samples are usable, the kept ones first."""
        raw, self._raw = self._raw, None
        rows = flat[: self.window - self._count]
        rows = rows if raw is None else torch.cat([raw.to(rows.dtype), rows])
        good = _usable_rows(rows, self.input_limit(rows.shape[1]))
        if self.fourier:  # at least where no usable input can overflow the features' arguments
            d = rows.shape[1]
            usable = rows[good]
            if self._of_projections(d):  # the distances between the projections
                usable = usable.float() @ self._projection(usable)
            self._sigma = max(self.bandwidth * _median_distance(usable), self._least_scale(d))
        self._sigma_inputs = flat.shape[1]
        self._fill = _mean_of(rows, good)  # stands in for unusable samples until there is a reference
        return raw, good

    def _of_projections(self, inputs: int) -> bool:
        """The Fourier features are of the projections (inputs larger than the projections), not
        of the inputs themselves."""
        return 0 < self.projections < inputs

    def _least_scale(self, inputs: int) -> float:
        """The least Fourier length scale at which ``w.v / sigma`` stays finite in float32 for
        every usable input (of norm at most ``sqrt(inputs)`` times :meth:`input_limit`; ``v`` the
        input or its projections)."""
        top = math.sqrt(inputs) * self.input_limit(inputs)  # the largest norm of a usable input
        size = inputs
        if self._of_projections(inputs):
            norms = self._draw_projection(inputs).norm(dim=0)
            top, size = top * float(norms.norm()), self.projections  # |P^T x| <= |P|_F |x|
        w, _ = self._draw_fourier(size)
        return 4.0 * float(w.norm(dim=0).max()) * top / torch.finfo(torch.float32).max

    def _blocks(self, f: Tensor) -> list[Tensor]:
        """The feature blocks of float32 inputs ``f``: the inputs, the squares of their random
        projections, the random Fourier features of the inputs (of the projections, for inputs
        larger than the projections) (the blocks with features)."""
        feats = [f]
        source = f
        if self.projections:
            u = f @ self._projection(f)
            if self._of_projections(f.shape[1]):
                source = u
                feats.append(u.square())
            else:
                feats.append(u.square_())
        if self.fourier:
            w, b = self._fourier_weights(source)
            feats.append(torch.addmm(b, source, w).cos_())
        return feats

    def _features(self, flat: Tensor) -> Tensor:
        """The inputs, the squares of their random projections and their Fourier features, float64."""
        if self.projections == 0 and self.fourier == 0:
            return flat.double()
        return torch.cat([flat.double(), *(t.double() for t in self._blocks(flat.float())[1:])], 1)

    def _fourier_weights(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        """``w / sigma`` (``(V, fourier)``, ``V`` the size of ``flat``'s rows: the inputs or their
        projections) and ``b`` (``(fourier,)``), float32 on ``flat``'s device."""
        d = flat.shape[1]
        key = (d, self._sigma, str(flat.device))
        if self._rff is None or self._rff[0] != key:
            w, b = self._draw_fourier(d)
            sigma = self._sigma if self._sigma is not None else 1.0
            self._rff = (key, (w / sigma).float().to(flat.device), b.float().to(flat.device))
        return self._rff[1], self._rff[2]

    def _draw_fourier(self, d: int) -> tuple[Tensor, Tensor]:
        """The Fourier features' ``w`` (``(d, fourier)``) and ``b`` drawn from ``seed`` on their
        own stream, float64 on the CPU."""
        g = torch.Generator().manual_seed((self.seed + _FOURIER_STREAM) % 2**64)
        w = torch.randn(d, self.fourier, generator=g, dtype=torch.float64)
        return w, torch.rand(self.fourier, generator=g, dtype=torch.float64) * (2.0 * math.pi)

    def _projection(self, flat: Tensor) -> Tensor:
        """The ``(D, projections)`` float32 projections for inputs ``flat`` (drawn once per size)."""
        d = flat.shape[1]
        if self._proj is None or self._proj.shape[0] != d or self._proj.device != flat.device:
            self._proj = self._draw_projection(d).to(flat.device)
        return self._proj

    def _draw_projection(self, d: int) -> Tensor:
        """The ``(d, projections)`` projections drawn from ``seed``, float32 on the CPU."""
        g = torch.Generator().manual_seed(self.seed)
        return torch.randn(d, self.projections, generator=g) / math.sqrt(d)

    def _chunk(self, x: Tensor) -> Tensor:
        if self._sum is None or self._sumsq is None:
            self._sum, self._sumsq = x.new_zeros(x.shape[1]), x.new_zeros(x.shape[1])
        self._sum += x.sum(0)
        self._sumsq += x.pow(2).sum(0)
        if self._mean is None or self._scale is None:
            values = x.new_zeros(x.shape[0])
        else:
            y = (x - self._mean) * self._scale
            if self._prefix is None:
                self._prefix = torch.zeros_like(self._mean)
            before = torch.cumsum(y, 0) - y + self._prefix  # the window's earlier samples
            values = (2.0 * (y * before).sum(1) + y.pow(2).sum(1)) / y.shape[1]
            self._prefix = before[-1] + y[-1]
        self._count += x.shape[0]
        if self._count == self.window:
            self._close()
        return values

    def _close(self) -> None:
        """The window is complete: move the reference toward it."""
        if self._sum is None or self._sumsq is None:  # not reached: a window has samples
            return
        m = self._sum / self.window
        second = self._sumsq / self.window
        if self._mean is None or self._var is None:
            self._mean, self._var = m, (second - m * m).clamp_min(0.0)
        else:
            rate = max(1.0 - 0.5 ** (self.window / self.half_life), 1.0 / (self._windows + 1))
            target = (second - 2.0 * m * self._mean + self._mean * self._mean).clamp_min_(0.0)
            self._var += rate * (target - self._var)
            self._mean += rate * (m - self._mean)
        self._windows += 1
        # each block its own floor: the squares' and the cosines' variances are of other scales
        d = self._var.shape[0] - self.projections - self.fourier
        parts = self._var.split([k for k in (d, self.projections, self.fourier) if k])
        floor = torch.cat([v.mean().expand_as(v) for v in parts])
        self._scale = (self._var + self.eps * floor + 1e-12).rsqrt()
        self._sum, self._sumsq, self._prefix, self._count = None, None, None, 0

    def _to(self, device: torch.device) -> None:
        for key in ("_mean", "_scale", "_var", "_prefix", "_sum", "_sumsq", "_raw", "_fill"):
            v = getattr(self, key)
            if isinstance(v, Tensor):
                setattr(self, key, v.to(device))

    def state_dict(self) -> dict[str, object]:
        return {"version": 4, "window": self.window, "half_life": self.half_life, "eps": self.eps,
                "projections": self.projections, "fourier": self.fourier,
                "bandwidth": self.bandwidth, "seed": self.seed, "fourier_scale": self._sigma,
                "fourier_inputs": self._sigma_inputs, "fill": self._fill, "raw": self._raw,
                "count": self._count, "windows": self._windows, "mean": self._mean, "var": self._var,
                "scale": self._scale, "prefix": self._prefix, "sum": self._sum, "sumsq": self._sumsq}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore :meth:`state_dict`. A version 3 state of inputs larger than the projections
        (its Fourier features were of the inputs, now of their projections) starts afresh, with a
        warning: no reference, and the length scale measured again on the next window."""
        version = state.get("version")
        if version not in (1, 2, 3, 4):
            raise ValueError(f"unsupported InputShift state version {version!r}; this library reads "
                             "1 to 4")
        saved = state.get("projections", 0) if version != 1 else 0  # version 1: the input means only
        if saved != self.projections or (version != 1 and state.get("seed") != self.seed):
            raise ValueError(
                f"the saved input shift has projections={saved!r}"
                + (f", seed={state.get('seed')!r}" if version != 1 else " (a version 1 state)")
                + f"; this one projections={self.projections!r}, seed={self.seed!r}: build it with the "
                "saved values to continue (default_detector(shift_projections=...))")
        fourier = state.get("fourier", 0) if version in (3, 4) else 0  # before version 3: none
        if fourier != self.fourier:
            raise ValueError(
                f"the saved input shift has fourier={fourier!r}"
                + (f" (a version {version} state, before Fourier features)" if version in (1, 2) else "")
                + f"; this one fourier={self.fourier!r}: build it with the saved value to continue "
                f"(default_detector(shift_fourier={fourier!r}))")
        if state.get("window") != self.window:
            raise ValueError(f"window differs: saved {state.get('window')!r}, this signal {self.window!r}")
        self.half_life = float(state["half_life"])  # type: ignore[arg-type]
        self.eps = float(state["eps"])  # type: ignore[arg-type]
        if fourier_of_inputs(state):
            warnings.warn(f"a version 3 InputShift state of {_saved_inputs(state)} inputs, more than its "
                          f"{self.projections} projections: its Fourier features were of the inputs, "
                          "now of their projections; the input shift starts afresh (a new reference, "
                          "the length scale measured again)", RuntimeWarning, stacklevel=2)
            self.bandwidth = float(state["bandwidth"])  # type: ignore[arg-type]
            self._sigma, self._sigma_inputs, self._fill = None, None, None
            self.restart()
            return
        if version in (3, 4):
            self.bandwidth = float(state["bandwidth"])  # type: ignore[arg-type]
            sigma, inputs = state.get("fourier_scale"), state.get("fourier_inputs")
            self._sigma = float(sigma) if sigma is not None else None  # type: ignore[arg-type]
            self._sigma_inputs = int(inputs) if inputs is not None else None  # type: ignore[call-overload]
        else:
            self._sigma, self._sigma_inputs = None, None
        self._count = int(state["count"])  # type: ignore[call-overload]
        self._windows = int(state["windows"])  # type: ignore[call-overload]
        for key in ("mean", "var", "scale", "prefix", "sum", "sumsq", "raw", "fill"):  # fill: absent before
            v = state.get(key)
            setattr(self, "_" + key, v.clone() if isinstance(v, Tensor) else None)

    def __repr__(self) -> str:
        return (f"InputShift(window={self.window}, half_life={self.half_life:g}, eps={self.eps:g}, "
                f"projections={self.projections}, fourier={self.fourier}, "
                f"bandwidth={self.bandwidth:g}, seed={self.seed})")


_FOURIER_STREAM = 0x9E3779B97F4A7C15  # the Fourier features' generator: seed + this (mod 2**64)


def fourier_of_inputs(state: dict[str, object]) -> bool:
    """Whether an :class:`InputShift` state holds Fourier features of inputs larger than its
    projections (version 3; version 4 takes them of the projections there)."""
    if state.get("version") != 3 or not state.get("fourier"):
        return False
    inputs, projections = _saved_inputs(state), state.get("projections", 0)
    return isinstance(projections, int) and inputs is not None and 0 < projections < inputs


def _saved_inputs(state: dict[str, object]) -> int | None:
    """The input size of an InputShift state (None: it has seen none)."""
    if isinstance(state.get("fourier_inputs"), int):
        return int(state["fourier_inputs"])  # type: ignore[call-overload]
    raw = state.get("raw")
    if isinstance(raw, Tensor):
        return raw.shape[1]
    kept = state.get("sum") if isinstance(state.get("sum"), Tensor) else state.get("mean")
    if isinstance(kept, Tensor):
        return kept.shape[0] - int(state.get("projections", 0)) - int(state.get("fourier", 0))  # type: ignore[call-overload]
    return None


def _usable_rows(flat: Tensor, limit: float) -> Tensor:
    """Which rows hold only finite values within ``+-limit`` (a bool mask; compared in float64,
    as :meth:`InputShift._good_rows` does)."""
    return torch.isfinite(flat).all(1) & (flat.abs().amax(1).double() <= limit)


def _mean_of(flat: Tensor, good: Tensor) -> Tensor:
    """The mean of the rows of ``flat`` that ``good`` marks (float64 sums; zeros if none)."""
    if not bool(good.any()):
        return flat.new_zeros(flat.shape[1])
    return flat[good].double().mean(0).to(flat.dtype)


def _median_distance(rows: Tensor) -> float:
    """The median of the positive Euclidean distances between the rows (float64), at least 1e-6
    times the rows' root mean square norm; when every row is the same, that norm (1.0 if zero)."""
    r = rows.double()
    dist = torch.pdist(r) if r.shape[0] > 1 else r.new_zeros(0)
    positive = dist[dist > 0]
    rms = float(r.pow(2).sum(1).mean().sqrt()) if r.numel() else 0.0
    if positive.numel() == 0:
        return rms if rms > 0.0 else 1.0
    return max(float(positive.median()), 1e-6 * rms)


def _piece_sums(feats: list[Tensor], lengths: list[int],
                center: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Sums of the rows of the feature blocks ``feats`` and of their squares over consecutive
    pieces of ``lengths`` rows, blocks side by side, float64. Accumulated in the features' dtype
    around ``center`` (the reference mean, ``(F,)``; None: the first row), and moved back in
    float64: the features of a constant stream sum to exactly ``n`` times their value, as in
    ``per_sample`` (a plain float32 sum rounds, and a reference of zero variance would
    standardise that rounding into large values)."""
    widths = [t.shape[1] for t in feats]
    first = torch.cat([t[0] for t in feats]) if center is None else center.to(feats[0].dtype)
    centers = first.split(widths)
    equal = all(k == lengths[0] for k in lengths)
    index = None if equal else torch.repeat_interleave(
        torch.arange(len(lengths), device=feats[0].device), torch.tensor(lengths, device=feats[0].device))
    sums, sumsq = [], []
    for t, c in zip(feats, centers, strict=True):  # block by block: no temporary of all features
        d = t - c
        if index is None:
            shape = (len(lengths), lengths[0], -1)
            sums.append(d.view(shape).sum(1))
            sumsq.append(d.square_().view(shape).sum(1))
        else:
            sums.append(d.new_zeros(len(lengths), d.shape[1]).index_add_(0, index, d))
            sumsq.append(d.new_zeros(len(lengths), d.shape[1]).index_add_(0, index, d.square_()))
    s0, q0 = torch.cat(sums, 1).double(), torch.cat(sumsq, 1).double()
    c64 = torch.cat(centers).double()
    n = torch.tensor(lengths, dtype=torch.float64, device=s0.device)[:, None]
    # sum f = sum (f - c) + n c;  sum f^2 = sum (f - c)^2 + 2 c sum (f - c) + n c^2
    return s0 + n * c64, q0 + 2.0 * c64 * s0 + n * c64 * c64
