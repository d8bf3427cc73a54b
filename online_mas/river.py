"""river estimators with task-free online MAS inside (the optional extra ``online-mas[river]``).

:class:`Classifier` follows river's estimator protocol (``learn_one``, ``predict_proba_one``,
``predict_one``, ``clone``), so it goes into river pipelines and ``evaluate.progressive_val_score``.
It trains a torch network one sample at a time; every ``window`` samples its
:class:`~online_mas.OnlineMAS` observes them, and the default detector consolidates when the
stream moves on.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Hashable
from typing import Any

import torch
import torch.nn.functional as F
from river import base
from torch import Tensor, nn

from online_mas.checks import is_int, is_real
from online_mas.online import MASConfig, OnlineMAS

__all__ = ["Classifier"]

ModuleFactory = Callable[[int, int], nn.Module]
"""``factory(n_features, n_classes) -> nn.Module``: a network from 1-D inputs to class logits."""


class Classifier(base.MiniBatchClassifier):
    """A torch classifier trained online with task-free online MAS.

    Features are mapped to input positions by name (sorted within the first sample, new ones
    appended), a missing feature counts as 0. Without ``module``, a small MLP is built on the first
    sample; its input grows as new features appear and its output as new classes appear (capacity
    doubling, new weights zero, logits of unseen classes ignored). A layer that grows starts its
    importance over. ``learn_many`` and ``predict_proba_many`` take pandas frames, row by row.

    Parameters
    ----------
    module
        ``factory(n_features, n_classes) -> nn.Module``, called on the first sample with the
        features seen so far and ``n_classes``; None: the growing MLP.
    n_classes
        Outputs of a ``module``'s network (needed with ``module``); the MLP starts at 2 and grows.
    hidden
        Widths of the MLP's hidden layers (ReLU between).
    lr, momentum
        SGD of every ``learn_one`` step.
    lam
        Strength of the MAS penalty.
    window
        Samples per ``OnlineMAS.observe`` call: the importance and the detector see them together.
    share
        Fraction of the samples whose importance is estimated, in (0, 1] (the default 0.25 is the
        whole window on every 4th window: ``MASConfig.share``).

    ``every`` (importance on every k-th window) is gone: ``share=1/k`` replaces it.
    seed
        Seeds the network's initialisation (None: not seeded).

    Examples
    --------
    >>> from river import datasets, evaluate, metrics, preprocessing
    >>> model = preprocessing.StandardScaler() | Classifier(seed=0)
    >>> evaluate.progressive_val_score(datasets.Phishing(), model, metrics.Accuracy())
    Accuracy: 88.07%
    """

    def __init__(
        self,
        module: ModuleFactory | None = None,
        n_classes: int | None = None,
        hidden: tuple[int, ...] = (64,),
        lr: float = 0.01,
        momentum: float = 0.9,
        lam: float = 1e-3,
        window: int = 32,
        share: float = 0.25,
        seed: int | None = None,
        **_removed: object,
    ) -> None:
        if "every" in _removed:
            raise ValueError(f"Classifier(every={_removed['every']!r}) counted windows; importance is "
                             f"now estimated on a share of the samples: share=1/every (every=4 is the "
                             f"default share=0.25)")
        if _removed:
            raise TypeError(f"Classifier got unexpected keyword arguments {sorted(_removed)}")
        if module is not None and not callable(module):
            raise TypeError(f"module must be callable as module(n_features, n_classes) or None, "
                            f"got {module!r}")
        if module is not None and (not is_int(n_classes) or n_classes < 2):  # type: ignore[operator]
            raise ValueError(f"a module needs n_classes, an int >= 2, got {n_classes!r}")
        if not isinstance(hidden, tuple) or not all(is_int(h) and h >= 1 for h in hidden):
            raise ValueError(f"hidden must be a tuple of ints >= 1, got {hidden!r}")
        if not is_real(lr) or not lr > 0:
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        if not is_real(lam) or not lam >= 0:
            raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
        if not is_real(momentum) or not 0 <= momentum < 1:
            raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
        if not is_int(window) or window < 1:
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        if not is_real(share) or not 0 < share <= 1:
            raise ValueError(f"share must be a number in (0, 1], got {share!r}")
        if seed is not None and not is_int(seed):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        self.module = module
        self.n_classes = n_classes
        self.hidden = hidden
        self.lr = lr
        self.momentum = momentum
        self.lam = lam
        self.window = window
        self.share = share
        self._removed: dict[str, object] = {}  # river reads **kwargs back from here (repr, clone)
        self.seed = seed
        self._features: dict[Hashable, int] = {}
        self._classes: list[Hashable] = []
        self._net: nn.Module | None = None
        self._opt: torch.optim.Optimizer | None = None
        self._mas: OnlineMAS | None = None
        self._pending: list[Tensor] = []

    @property
    def _multiclass(self) -> bool:
        return True

    @property
    def mas(self) -> OnlineMAS | None:
        """The :class:`~online_mas.OnlineMAS` inside (None before the first sample)."""
        return self._mas

    @classmethod
    def _unit_test_params(cls) -> Any:
        yield {"seed": 0, "window": 8}
        yield {"seed": 1, "hidden": (8, 8), "lam": 0.0}

    def _unit_test_skips(self) -> set[str]:
        # Feature order: the positions are fixed by the first sample's sorted names, but a network
        # starts from a random initialisation, so any permutation of a sample's columns is a
        # different function until it is learned.
        return {"check_shuffle_features_no_impact"}

    def learn_one(self, x: dict[Hashable, Any], y: Hashable) -> None:
        if self._net is None:
            self._build(x, y)
        self._grow(x, y)
        net, opt, mas = self._net, self._opt, self._mas
        if net is None or opt is None or mas is None:  # built above
            raise RuntimeError("internal error: the classifier was not built")
        v = self._vector(x)
        target = torch.tensor([self._classes.index(y)])
        net.train()
        loss = F.cross_entropy(self._logits(net, v), target)
        opt.zero_grad()
        loss.backward()
        mas.penalty_grad_()
        opt.step()
        self._pending.append(v)
        if len(self._pending) == self.window:
            batch, self._pending = torch.cat(self._pending), []
            mas.observe(batch)

    def learn_many(self, X: Any, y: Any) -> None:
        """Learn the rows of a pandas ``DataFrame`` in order, one step each, as ``learn_one`` would
        (missing values, NaN, count as absent features)."""
        for row, target in zip(X.to_dict(orient="records"), list(y), strict=True):
            self.learn_one({k: v for k, v in row.items() if not _missing(v)}, target)

    def predict_proba_many(self, X: Any) -> Any:
        """Class probabilities of every row of a pandas ``DataFrame``, one column per class."""
        import pandas as pd

        rows = [self.predict_proba_one({k: v for k, v in r.items() if not _missing(v)})
                for r in X.to_dict(orient="records")]
        return pd.DataFrame(rows, index=X.index, columns=list(self._classes), dtype=float)

    def predict_proba_one(self, x: dict[Hashable, Any], **kwargs: Any) -> dict[Any, float]:
        if self._net is None:
            return {}
        self._net.eval()
        with torch.no_grad():
            probs = torch.softmax(self._logits(self._net, self._vector(x)).double(), dim=1)[0].tolist()
        total = math.fsum(probs)  # exactly 1 as river checks it
        return {c: p / total for c, p in zip(self._classes, probs, strict=True)}

    # ------------------------------------------------------------------ internals

    def _vector(self, x: dict[Hashable, Any]) -> Tensor:
        v = torch.zeros(1, len(self._features))
        for name, value in x.items():
            i = self._features.get(name)
            if i is not None and isinstance(value, int | float) and math.isfinite(value):
                v[0, i] = float(value)
        return v

    def _logits(self, net: nn.Module, v: Tensor) -> Tensor:
        return net(v)[:, : len(self._classes)]

    def _build(self, x: dict[Hashable, Any], y: Hashable) -> None:
        self._features = {name: i for i, name in enumerate(sorted(x, key=repr))}
        self._classes = [y]
        with torch.random.fork_rng(devices=[]):
            if self.seed is not None:
                torch.manual_seed(self.seed)
            if self.module is not None:
                self._net = self.module(len(self._features), self.n_classes)  # type: ignore[arg-type]
            else:
                widths = [len(self._features), *self.hidden]
                layers: list[nn.Module] = []
                for a, b in itertools.pairwise(widths):
                    layers += [nn.Linear(a, b), nn.ReLU()]
                self._net = nn.Sequential(*layers, nn.Linear(widths[-1], 2))
        self._opt = torch.optim.SGD(self._net.parameters(), lr=self.lr, momentum=self.momentum)
        self._mas = OnlineMAS(self._net, self.lam, config=MASConfig(share=self.share, seed=self.seed or 0),
                              output=self._logits)

    def _grow(self, x: dict[Hashable, Any], y: Hashable) -> None:
        """New classes (and, for the MLP, new features) widen the network."""
        new_features = [name for name in sorted(x, key=repr) if name not in self._features]
        if y not in self._classes:
            self._classes.append(y)
        if self.module is not None:
            if len(self._classes) > self.n_classes:  # type: ignore[operator]
                raise ValueError(f"class {y!r} is class number {len(self._classes)}, but the module has "
                                 f"n_classes={self.n_classes} outputs")
            return
        net = self._net
        first, head = (net[0], net[len(net) - 1]) if isinstance(net, nn.Sequential) else (None, None)
        if not isinstance(net, nn.Sequential) or not isinstance(first, nn.Linear) \
                or not isinstance(head, nn.Linear):
            raise RuntimeError("internal error: the growing MLP is not a Sequential of Linear ends")
        grown = False
        if new_features:
            for name in new_features:
                self._features[name] = len(self._features)
            net[0] = _widen(first, in_features=len(self._features))
            grown = True
        if len(self._classes) > head.out_features:
            net[len(net) - 1] = _widen(net[len(net) - 1], out_features=2 * head.out_features)  # type: ignore[arg-type]
            grown = True
        if grown:
            self._opt = torch.optim.SGD(net.parameters(), lr=self.lr, momentum=self.momentum)
            self._pending = []  # inputs of the old width
            with warnings.catch_warnings():  # the grown layer's importance restarts, by design
                warnings.simplefilter("ignore", RuntimeWarning)
                _ = self._mas.omega  # type: ignore[union-attr]  # follow the new parameters now


def _missing(v: object) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _widen(layer: nn.Linear, *, in_features: int | None = None, out_features: int | None = None) -> nn.Linear:
    """A copy of ``layer`` with more inputs or outputs, the new weights zero (no random draw, so a
    seeded classifier grows the same way whatever else used the global generator)."""
    new = nn.Linear(in_features or layer.in_features, out_features or layer.out_features,
                    bias=layer.bias is not None)
    with torch.no_grad():
        new.weight.zero_()
        if new.bias is not None:
            new.bias.zero_()
        new.weight[: layer.out_features, : layer.in_features] = layer.weight
        if layer.bias is not None and new.bias is not None:
            new.bias[: layer.out_features] = layer.bias
    return new
