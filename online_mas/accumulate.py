"""The running importance: a sample-weighted mean or an EMA over samples, and the fold into it.

The running importance is either a sample-weighted running mean over everything seen since the last
consolidation (independent of how the stream is cut into batches) or an exponential moving average
whose half-life is counted in samples (:mod:`online_mas.consolidate` turns it into Omega).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

import torch
from torch import Tensor

from online_mas.sharded import is_sharded, place

__all__ = ["AVERAGES", "RunningImportance"]

AVERAGES = ("mean", "ema")


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

    def update(
        self,
        sums: Mapping[str, Tensor],
        n: int,
        *,
        factors: Mapping[str, tuple[Tensor, Tensor]] | None = None,
    ) -> None:
        """Add importance summed over ``n`` samples (``n >= 1``).

        ``factors`` maps further names to ``(|G|, |A|)`` whose product ``|G|^T |A|`` is their sum
        (:class:`~online_mas.estimators.BatchImportance`): each is folded into its running value
        with one ``addmm_``, without forming the product.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1 (samples in the batch), got {n!r}")
        if not isinstance(sums, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in sums.items()
        ):
            raise TypeError(f"sums must be a dict of parameter name -> Tensor, got {sums!r}")
        factors = factors or {}
        both = sorted(set(factors) & set(sums))
        if both:
            raise ValueError(f"a name is either summed or factored, got both for {both}")
        w, self._weight = self._step(n)
        keep, add = 1.0 - w, w / n
        for name, (g, a) in factors.items():  # m <- keep m + add |G|^T |A|: one addmm_
            m = self._mean.get(name)
            if m is None or m.shape != (g.shape[1], a.shape[1]) or m.device != a.device:
                self._mean[name] = (g.t() @ a) / n
            else:
                m.addmm_(g.t(), a, beta=keep, alpha=add)
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
            torch._foreach_mul_(means, keep)
            torch._foreach_add_(means, adds, alpha=add)
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

    def follow(self, params: Mapping[str, Tensor], *, restart: Collection[str] = ()) -> None:
        """Follow the model's parameters: a value whose parameter changed shape or is in
        ``restart`` (replaced by a new one) restarts, one whose parameter moved device moves."""
        for name, p in params.items():
            m = self._mean.get(name)
            if m is not None and (m.shape != p.shape or name in restart):
                del self._mean[name]
            elif m is not None and (m.device != p.device or is_sharded(m) != is_sharded(p)):
                self._mean[name] = place(m, p, dtype=torch.float32)  # sharded like p (DTensor)

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
            "mean": {k: v.clone() for k, v in self._mean.items()},
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


def _positive_finite(v: object) -> bool:
    return (
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    )
