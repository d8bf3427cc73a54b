"""``[learner.<name>.mas]``: the OnlineMAS settings of a config file, and the object they build.

The section keeps the flat keys of the config files (``average``, ``half_life``, ``rule``,
``alpha``, ``signal``, ``anchor``, ``stable_*``, ``buffer_*``, ``sync_every``);
:func:`~online_mas.experiment.registry.build_mas` turns them into :class:`~online_mas.OnlineMAS`'s
policy objects.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from online_mas.accumulate import AVERAGES, RunningImportance
from online_mas.buffer import HardBuffer
from online_mas.checks import check_choice, is_int, is_real
from online_mas.consolidate import EMA, RULES, CurrentAnchor, StableAnchor, rule_from
from online_mas.online import MASConfig
from online_mas.reduce import Reducer
from online_mas.signals import SIGNALS

__all__ = ["ANCHORS", "MASSection"]

ANCHORS = ("current", "stable")


@dataclass(frozen=True)
class MASSection:
    """How OnlineMAS estimates, averages and consolidates importance (one TOML table).

    Examples
    --------
    >>> MASSection(anchor="slow")
    Traceback (most recent call last):
    ...
    ValueError: anchor must be one of ('current', 'stable'), got 'slow'
    """

    method: str = "exact"  # importance estimator: exact, vmap, loop, batch, local (om.importance)
    average: str = "mean"  # running importance: "mean" since the last consolidation, or "ema"
    half_life: float = 10_000.0  # EMA half-life in samples (average="ema")
    share: float = 1 / 64  # fraction of the stream's samples whose importance is estimated, in (0, 1]
    min_estimate: int = 32  # fewest samples one estimate covers (a smaller batch: the whole batch)
    subsample: int | None = None  # estimate on at most this many samples of each batch (seeded)
    rule: str = "sum"  # consolidation: sum (paper), mean (task-free code), ema (Avalanche), max
    alpha: float = 0.5  # weight of the old Omega for rule="ema", in [0, 1]
    normalize: str | None = None  # rescale a segment's Omega before combining: None, "max", "mean"
    chunk_size: int | None = None  # max samples whose per-sample gradients exist at once
    seed: int = 0  # seed of the subsample generator
    signal: str = "entropy"  # what the detector watches: output_norm, entropy, max_prob, feature_shift, loss
    anchor: str = "stable"  # a detector's consolidation anchors the "stable" or the "current" parameters
    stable_samples: int = 320  # anchor="stable": samples between updates of the slow parameter copy
    stable_weight: float = 0.5  # anchor="stable": weight of the current parameters in an update, (0, 1]
    buffer_size: int = 0  # hard-sample buffer of the most surprising recent samples (0: off)
    buffer_decay: float = 0.99  # per-update fading of the buffer's surprise scores, in (0, 1]
    sync_every: int = 1  # torch.distributed: all-reduce importance every k-th importance update
    shared_forward: bool = False  # exact importance from the training forward where it is the same

    def __post_init__(self) -> None:
        check_choice("average", self.average, AVERAGES)
        check_choice("rule", self.rule, RULES)
        check_choice("signal", self.signal, SIGNALS)
        check_choice("anchor", self.anchor, ANCHORS)
        if not is_real(self.half_life) or not self.half_life > 0:
            raise ValueError(f"half_life must be a finite number > 0, got {self.half_life!r}")
        if not is_real(self.alpha) or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be a number in [0, 1], got {self.alpha!r}")
        if not is_int(self.buffer_size) or self.buffer_size < 0:
            raise ValueError(f"buffer_size must be an int >= 0, got {self.buffer_size!r}")
        self.policies()  # the policy objects check their own numbers
        self.config()

    def config(self) -> MASConfig:
        """The numbers that always apply."""
        return MASConfig(method=self.method, share=self.share, min_estimate=self.min_estimate,
                         subsample=self.subsample,
                         chunk_size=self.chunk_size, seed=self.seed, normalize=self.normalize,
                         shared_forward=self.shared_forward)

    def policies(self) -> dict[str, object]:
        """OnlineMAS's keyword arguments for the averaging, rule, anchor, buffer and reducer."""
        return {
            "average": RunningImportance(self.average, half_life=self.half_life),
            "rule": EMA(self.alpha) if self.rule == "ema" else rule_from(self.rule),
            "anchor": StableAnchor(samples=self.stable_samples, weight=self.stable_weight)
            if self.anchor == "stable" else CurrentAnchor(),
            "buffer": HardBuffer(self.buffer_size, decay=self.buffer_decay) if self.buffer_size else None,
            "reducer": Reducer(sync_every=self.sync_every),
            "signal": self.signal,
        }

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

