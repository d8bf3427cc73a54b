"""The hard-sample buffer of Task-Free Continual Learning, label-free.

Aljundi, Kelchtermans and Tuytelaars (CVPR 2019) keep a small buffer of the recent samples with the
highest loss and use it when importance is estimated at consolidation, so the importance of a
segment reflects the samples the model found hardest, not only the last batches. Here "hard" is
label-free: the per-sample surprise of a signal (predictive entropy by default, see
:mod:`online_mas.signals`). Older scores fade by ``decay`` per update so the buffer stays recent.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["HardBuffer"]


class HardBuffer:
    """Keeps the ``size`` most surprising recent samples.

    Parameters
    ----------
    size
        Capacity in samples (>= 1).
    decay
        Factor in (0, 1] applied to the stored scores at every update, so a sample must stay
        surprising relative to newer ones to remain.

    Examples
    --------
    >>> import torch
    >>> buf = HardBuffer(2, decay=1.0)
    >>> buf.add(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([0.1, 0.9, 0.5]))
    >>> buf.add(torch.tensor([[4.0]]), torch.tensor([0.7]))
    >>> buf.samples.flatten().tolist(), [round(s, 3) for s in buf.scores.tolist()]
    ([2.0, 4.0], [0.9, 0.7])
    """

    def __init__(self, size: int, *, decay: float = 0.99) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an int >= 1, got {size!r}")
        if not isinstance(decay, int | float) or not math.isfinite(decay) or not 0 < decay <= 1:
            raise ValueError(f"decay must be a number in (0, 1], got {decay!r}")
        self.size = size
        self.decay = float(decay)
        self._reset()

    def _reset(self) -> None:
        self._samples: Tensor | None = None
        self._scores = torch.zeros(0)

    @property
    def samples(self) -> Tensor | None:
        """The stored samples, most surprising first (``None`` when empty)."""
        return self._samples

    @property
    def scores(self) -> Tensor:
        """Their current (decayed) scores."""
        return self._scores

    def __len__(self) -> int:
        return 0 if self._samples is None else int(self._samples.shape[0])

    def add(self, x: Tensor, scores: Tensor) -> None:
        """Offer a batch with one score per sample; the buffer keeps the top ``size`` overall."""
        x, scores = x.detach(), scores.detach().float().flatten()
        if scores.shape[0] != x.shape[0]:
            raise ValueError(f"need one score per sample: {x.shape[0]} samples, {scores.shape[0]} scores")
        keep_new = torch.isfinite(scores)
        x, scores = x[keep_new], scores[keep_new]
        if self._samples is not None and self._samples.shape[1:] != x.shape[1:]:
            self._reset()  # the input shape changed: start over
        if self._samples is not None and self._samples.device != x.device:  # loaded on the CPU
            self._samples, self._scores = self._samples.to(x.device), self._scores.to(x.device)
        if self._samples is None:
            pool_x, pool_s = x, scores
        else:
            pool_x = torch.cat([self._samples, x])
            pool_s = torch.cat([self._scores * self.decay, scores])
        k = min(self.size, pool_s.shape[0])
        top = torch.topk(pool_s, k).indices
        self._samples, self._scores = pool_x[top].clone(), pool_s[top].clone()

    def clear(self) -> None:
        """Empty the buffer (after a consolidation)."""
        self._reset()

    def state_dict(self) -> dict[str, object]:
        return {"version": 1, "size": self.size, "decay": self.decay,
                "samples": self._samples, "scores": self._scores}

    def load_state_dict(self, state: dict[str, object]) -> None:
        if state.get("version") != 1:
            raise ValueError(f"unsupported HardBuffer state version {state.get('version')!r}")
        samples, scores = state["samples"], state["scores"]
        self._samples = samples.clone() if isinstance(samples, Tensor) else None
        self._scores = scores.clone() if isinstance(scores, Tensor) else torch.zeros(0)
