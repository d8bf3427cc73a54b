"""Running importance statistics and the rules that consolidate them.

The running importance is either a sample-weighted running mean over everything seen since the last
consolidation (independent of how the stream is cut into batches) or an exponential moving average
whose half-life is counted in samples. Consolidation combines the running importance of the segment
that just ended with the consolidated importance of the segments before it.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import torch
from torch import Tensor

from online_mas._checks import is_real as _real

__all__ = ["AVERAGES", "NORMALIZE", "RULES", "RunningImportance", "combine"]

AVERAGES = ("mean", "ema")
RULES = ("sum", "mean", "ema", "max")
NORMALIZE = (None, "max", "mean")


class RunningImportance:
    """Per-parameter running average of importance, weighted by sample count.

    ``update(sums, n)`` takes importance **summed** over ``n`` samples. With ``average="mean"`` the
    value after any sequence of updates is ``(sum of all sums) / (total n)``, whatever the batch
    sizes. With ``average="ema"`` each sample decays the past by ``d = 0.5 ** (1 / half_life)``; a
    batch of ``n`` samples with mean ``m`` gives ``value <- d**n * value + (1 - d**n) * m``, and the
    value is bias-corrected (divided by ``1 - d**N`` after ``N`` samples) so early estimates are not
    pulled towards zero.

    Statistics are float32 whatever the dtype of the incoming sums. Memory: one float32 buffer per
    parameter.

    Parameters
    ----------
    average
        ``"mean"`` or ``"ema"``.
    half_life
        Half-life of the EMA in samples (``average="ema"`` only), a finite number > 0.

    Examples
    --------
    >>> import torch
    >>> r = RunningImportance()
    >>> r.update({"w": torch.tensor([3.0, 6.0])}, 3)   # 3 samples, mean [1, 2]
    >>> r.update({"w": torch.tensor([4.0, 0.0])}, 1)   # 1 sample, value [4, 0]
    >>> r.value()["w"], r.count
    (tensor([1.7500, 1.5000]), 4)
    """

    def __init__(self, average: str = "mean", *, half_life: float = 10_000.0) -> None:
        if average not in AVERAGES:
            raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
        if not _positive_finite(half_life):
            raise ValueError(f"half_life must be a finite number > 0 (samples), got {half_life!r}")
        self.average = average
        self.half_life = float(half_life)
        self._reset()

    def _reset(self) -> None:
        self._mean: dict[str, Tensor] = {}
        self._count = 0
        self._weight = 0.0  # EMA: 1 - d**count, for bias correction

    @property
    def count(self) -> int:
        """Samples averaged since the last reset."""
        return self._count

    def weights(self, n: int) -> tuple[float, float]:
        """``(keep, add)`` of the next update of ``n`` samples: it sets ``m <- keep * m + add * s``
        for importance summed ``s`` (a caller can fold a sum in place with them; see ``update``)."""
        w = self._step(n)[0]
        return 1.0 - w, w / n

    def update(self, sums: dict[str, Tensor], n: int, *, folded: Collection[str] = ()) -> None:
        """Add importance summed over ``n`` samples (``n >= 1``).

        ``folded``: names whose running value the caller already moved in place to
        ``keep * m + add * s`` with ``weights(n)`` (they must have a running value); ``sums`` holds
        the others.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1 (samples in the batch), got {n!r}")
        if not isinstance(sums, dict) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in sums.items()
        ):
            raise TypeError(f"sums must be a dict of parameter name -> Tensor, got {sums!r}")
        unknown = [k for k in folded if k not in self._mean or k in sums]
        if unknown:
            raise ValueError(f"folded names must have a running value and no sum, got {unknown}")
        w, self._weight = self._step(n)
        # m + w (s/n - m) = (1 - w) m + (w/n) s: two in-place passes, no temporary.
        means, adds = [], []
        for name, s in sums.items():
            s = s.detach().float()
            m = self._mean.get(name)
            if m is None or m.shape != s.shape or m.device != s.device:
                self._mean[name] = s / n
            else:
                means.append(m)
                adds.append(s)
        if means:
            torch._foreach_mul_(means, 1.0 - w)
            torch._foreach_add_(means, adds, alpha=w / n)
        self._count += n

    def _step(self, n: int) -> tuple[float, float]:
        """Weight ``w`` of a batch of ``n`` samples in ``m + w (batch mean - m)``, and the EMA's
        bias-correction weight after it."""
        if self.average == "mean":
            return n / (self._count + n), self._weight  # incremental mean: m += n/(N+n) (mean - m)
        keep = 0.5 ** (n / self.half_life)
        new_weight = keep * self._weight + (1.0 - keep)
        return (1.0 - keep) / new_weight, new_weight  # bias-corrected EMA, same incremental form

    def value(self) -> dict[str, Tensor]:
        """The running importance per name (live tensors: copy before modifying)."""
        return self._mean

    def reset(self) -> None:
        """Forget everything (called after a consolidation)."""
        self._reset()

    def state_dict(self) -> dict[str, object]:
        return {
            "version": 1,
            "average": self.average,
            "half_life": self.half_life,
            "count": self._count,
            "weight": self._weight,
            "mean": dict(self._mean),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        if state.get("version") != 1:
            raise ValueError(f"unsupported RunningImportance state version {state.get('version')!r}")
        if state["average"] != self.average:
            raise ValueError(
                f"state was saved with average={state['average']!r}, this accumulator uses "
                f"average={self.average!r}"
            )
        mean = state["mean"]
        if not isinstance(mean, dict):
            raise TypeError("state['mean'] must be a dict of tensors")
        self.half_life = float(state["half_life"])  # type: ignore[arg-type]
        self._count = int(state["count"])  # type: ignore[call-overload]
        self._weight = float(state["weight"])  # type: ignore[arg-type]
        self._mean = {k: v.detach().float().clone() for k, v in mean.items()}


def combine(
    old: Tensor,
    new: Tensor,
    *,
    rule: str,
    segments: int,
    alpha: float = 0.5,
) -> Tensor:
    """Consolidated importance after one more segment.

    Parameters
    ----------
    old
        Consolidated importance of the ``segments`` segments before (zeros when ``segments == 0``).
    new
        Importance of the segment that just ended (already normalised if asked).
    rule
        ``"sum"``: ``old + new`` (the paper: importance accumulates over tasks);
        ``"mean"``: ``(segments * old + new) / (segments + 1)`` (the task-free code);
        ``"ema"``: ``alpha * old + (1 - alpha) * new`` (Avalanche), ``new`` for the first segment;
        ``"max"``: ``maximum(old, new)``.
    segments
        How many segments ``old`` already holds.
    alpha
        Weight of the old importance for ``rule="ema"``, in [0, 1].

    Examples
    --------
    >>> import torch
    >>> old, new = torch.tensor([1.0, 4.0]), torch.tensor([3.0, 2.0])
    >>> [combine(old, new, rule=r, segments=1).tolist() for r in RULES]
    [[4.0, 6.0], [2.0, 3.0], [2.0, 3.0], [3.0, 4.0]]
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if isinstance(segments, bool) or not isinstance(segments, int) or segments < 0:
        raise ValueError(f"segments must be an int >= 0, got {segments!r}")
    if not isinstance(old, Tensor) or not isinstance(new, Tensor):
        raise TypeError(f"old and new must be tensors, got {type(old)!r} and {type(new)!r}")
    if old.shape != new.shape:
        raise ValueError(f"old and new must have the same shape, got {tuple(old.shape)} and "
                         f"{tuple(new.shape)}")
    if not _real(alpha) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    if segments == 0:
        return new.clone()
    if rule == "sum":
        return old + new
    if rule == "mean":
        return (old * segments + new) / (segments + 1)
    if rule == "ema":
        return old * alpha + new * (1.0 - alpha)
    return torch.maximum(old, new)


def normalize(omega: dict[str, Tensor], how: str | None) -> dict[str, Tensor]:
    """Rescale a whole importance dict: ``"max"`` to a global max of 1, ``"mean"`` to a mean of 1.

    All-zero importance is returned unchanged (there is nothing to rescale).
    """
    if how not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {how!r}")
    if how is None or not omega:
        return omega
    if how == "max":
        scale = max(float(t.max()) if t.numel() else 0.0 for t in omega.values())
    else:
        total = sum(float(t.sum()) for t in omega.values())
        scale = total / max(1, sum(t.numel() for t in omega.values()))
    if scale <= 0.0 or not math.isfinite(scale):
        return omega
    return {k: t / scale for k, t in omega.items()}


def _positive_finite(v: object) -> bool:
    return (
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    )
