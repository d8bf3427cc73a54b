"""Parameters saved where a detector's CUSUM run began, so that a detection anchors before its change.

A detector reports a change some samples after it began (the default's mean delay is 140 to 240
samples, ``results/detection.md``); the parameters of that moment have already trained on the new
segment, and anchoring ``theta*`` there costs accuracy (``results/anchor_onset.md``). A one-sided
CUSUM knows more than the moment it fires: the run of its sum that crosses the threshold began
where the sum last left 0, Page's estimate of where the change began. :class:`OnsetSnapshots`
keeps the parameters of that sample: after each evaluation of the detector it copies the
parameters into one buffer (``pre``: the parameters the next samples are trained from) while some
channel has no open run, and when a run opens, that buffer becomes the run's snapshot
(``onset``, no copy). A detection then anchors at the newest of the two saved before its run
began. Two parameter-sized buffers and one copy of the parameters per evaluation while a channel
is idle (``scripts/bench.py --parts detector``).

It only knows the samples the detector evaluated: with a ``lag``, the parameters are copied once
per bulk evaluation, so the snapshot is the one before the block in which the run began (older by
up to ``lag`` samples, never after the change).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from online_mas.sharded import any_sharded, place

__all__ = ["OnsetSnapshots"]


class OnsetSnapshots:
    """``pre`` (the parameters from sample ``pre_at`` on) and ``onset`` (saved at or before the
    start of the earliest open run), each with the detector's sample index it was saved at."""

    def __init__(self) -> None:
        self.pre: dict[str, Tensor] | None = None
        self.pre_at = 0
        self.onset: dict[str, Tensor] | None = None
        self.onset_at = 0
        self._spare: dict[str, Tensor] | None = None  # a dropped buffer, reused by the next copy

    def track(self, starts: Sequence[int | None], now: int, names: Sequence[str],
              params: Sequence[Tensor]) -> None:
        """After an evaluation without a detection: ``starts`` are the channels' open runs (their
        first sample, None: none open) at the detector's sample ``now``."""
        open_ = [s for s in starts if s is not None]
        if not open_:
            self._drop_onset()
        elif self.pre is not None and self.pre_at <= min(open_):  # every open run began after it
            self._drop_onset()
            self.onset, self.onset_at, self.pre = self.pre, self.pre_at, None
        # else: the snapshot kept is still from before every open run
        if len(open_) < len(starts) or self.pre is None:  # a run may open in the next samples
            self._save_pre(now, names, params)

    def restart(self, now: int, names: Sequence[str], params: Sequence[Tensor]) -> None:
        """After a detection (the detector starts afresh): no run is open."""
        self._drop_onset()
        self._save_pre(now, names, params)

    def _drop_onset(self) -> None:
        if self.onset is not None:
            self._spare, self.onset = self.onset, None

    def before(self, start: int | None) -> dict[str, Tensor] | None:
        """The newest snapshot saved at or before sample ``start`` (None: none, or ``start``
        unknown)."""
        if start is None:
            return None
        kept = [(at, s) for at, s in ((self.pre_at, self.pre), (self.onset_at, self.onset))
                if s is not None and at <= start]
        return max(kept, key=lambda k: k[0])[1] if kept else None

    def _save_pre(self, now: int, names: Sequence[str], params: Sequence[Tensor]) -> None:
        with torch.no_grad():
            pre = self.pre if self.pre is not None else self._spare
            self._spare = None
            if pre is None or list(pre) != list(names) or any(
                    t.shape != p.shape or t.dtype != p.dtype or t.device != p.device
                    for t, p in zip(pre.values(), params, strict=True)):
                pre = {n: p.detach().clone() for n, p in zip(names, params, strict=True)}
            elif any_sharded(params):
                for t, p in zip(pre.values(), params, strict=True):
                    t.copy_(p.detach())
            else:
                torch._foreach_copy_(list(pre.values()), list(params))  # under no_grad: no detach
        self.pre, self.pre_at = pre, now

    def state_dict(self) -> dict[str, object]:
        def copy(s: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
            return None if s is None else {n: t.clone() for n, t in s.items()}
        return {"pre": copy(self.pre), "pre_at": self.pre_at, "onset": copy(self.onset),
                "onset_at": self.onset_at}

    def load_state_dict(self, state: Mapping[str, object], params: Mapping[str, Tensor] | None) -> None:
        def load(key: str) -> dict[str, Tensor] | None:
            saved = state.get(key)
            if saved is None:
                return None
            if not isinstance(saved, dict) or not all(isinstance(t, Tensor) for t in saved.values()):
                raise TypeError(f"StableAnchor state[{key!r}] must be a dict of tensors or None")
            if params is not None and set(saved) != set(params):
                return None  # another model's parameters: saved again at the next evaluation
            return {n: place(t, params[n]) if params is not None else t for n, t in saved.items()}
        for key in ("pre_at", "onset_at"):
            v = state.get(key, 0)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"StableAnchor state[{key!r}] must be an int >= 0, got {v!r}")
        self.pre, self.onset = load("pre"), load("onset")
        self.pre_at, self.onset_at = int(state.get("pre_at", 0)), int(state.get("onset_at", 0))  # type: ignore[call-overload]
