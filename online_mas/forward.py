"""What OnlineMAS takes from the user's own forward pass: the model's trainable parameters by name,
and the latest output (for the detector's signal at no extra cost)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from online_mas.estimators.common import unwrapped
from online_mas.estimators.doubled import DoubledBatch
from online_mas.estimators.inputs import Inputs, batch_size, is_same
from online_mas.estimators.shared import SharedForward

__all__ = ["LastForward", "Parameters", "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel/DataParallel and ``torch.compile``, in any order,
    else the model itself.

    Importance is estimated on it: its parameter names carry no ``module.`` or ``_orig_mod.``
    prefix, and its forward runs on this process alone, without the wrapper's gradient hooks or
    scatter to replicas.
    """
    return unwrapped(model)


class Parameters:
    """The model's trainable parameters by name, followed as the model changes (a new head, a
    frozen layer, a move to another device)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.names: list[str] = []
        self.params: list[Tensor] = []
        self.replaced: list[str] = []  # names whose parameter object changed at the last change
        self._key: tuple[object, ...] = ()
        self._links: list[tuple[dict[str, object], str, object]] = []  # (children, name, child)

    def named(self) -> dict[str, Tensor]:
        return dict(zip(self.names, self.params, strict=True))

    def changed(self) -> bool:
        """Re-read the model; True when the set, shapes, dtypes or devices changed."""
        root = unwrap(self.model)
        named = [(n, p) for n, p in root.named_parameters() if p.requires_grad]
        key = tuple((n, id(p), p.shape, p.dtype, p.device) for n, p in named)
        if key == self._key:
            return False
        before = {entry[0]: entry[1] for entry in self._key}  # type: ignore[index]
        self.replaced = [n for n, p in named if n in before and before[n] != id(p)]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self._key = key
        self._links = [(m._modules, c, child) for m in root.modules()  # type: ignore[misc]
                       for c, child in m._modules.items()]
        self._links += [(m._parameters, k, p) for m in root.modules()  # type: ignore[misc]
                        for k, p in m._parameters.items() if p is not None and p.requires_grad]
        return True

    def moved(self) -> bool:
        """The per-step check: was a module or parameter replaced, or did a known parameter
        freeze, change shape, dtype or device? (New parameters are found by :meth:`changed`.)"""
        if any(slots.get(name) is not obj for slots, name, obj in self._links):
            return True
        return any(
            p.requires_grad is False or p.shape != key[2] or p.dtype != key[3]  # type: ignore[index]
            or p.device != key[4]  # type: ignore[index]
            for p, key in zip(self.params, self._key, strict=False)
        )

    def forget(self) -> None:
        """Make the next :meth:`changed` report a change (and no parameter as replaced)."""
        self._key = ()


class LastForward:
    """The latest input and (detached) output of the user's own forward pass, from a forward hook,
    so that ``observe(x)`` can compute the signal of a batch from the forward the training step
    already made; and the :class:`SharedForward` recorder, when importance shares that forward."""

    __slots__ = ("active", "args", "kwargs", "out", "shared")

    def __init__(self) -> None:
        self.args: tuple[object, ...] = ()
        self.kwargs: dict[str, object] = {}
        self.out: Tensor | None = None
        self.active = True  # False while OnlineMAS runs forwards of its own
        self.shared: SharedForward | DoubledBatch | None = None

    def attach(self, model: nn.Module, *, shared: bool, chunk: int | None,
               doubled: bool = False) -> Callable[[], None]:
        """Hook the model's forward (and, with ``shared``, record it for importance; with
        ``doubled``, double its batch for importance, :mod:`~online_mas.estimators.doubled`);
        returns the function that detaches everything again."""
        handle = model.register_forward_hook(self.hook, with_kwargs=True)
        if doubled:
            self.shared = DoubledBatch(unwrap(model), chunk, gate=lambda: self.active)
        elif shared:
            self.shared = SharedForward(unwrap(model), chunk, gate=lambda: self.active)
        recorder = self.shared

        def detach() -> None:
            handle.remove()
            if recorder is not None:
                recorder.disarm()

        return detach

    def arm(self, names: Sequence[str] | None, params: Sequence[Tensor]) -> None:
        """Record the next forward for these parameters' importance (None: do not record)."""
        if self.shared is not None:
            if names is None:
                self.shared.disarm()
            else:
                self.shared.arm(list(names), list(params))

    def hook(self, module: nn.Module, args: tuple[object, ...], kwargs: dict[str, object],
             out: object) -> None:
        if self.active and isinstance(out, Tensor):
            self.args, self.kwargs, self.out = args, kwargs, out.detach()
            if self.shared is not None and args and isinstance(args[0], Tensor):
                self.shared.on_forward(args[0], out)

    def take(self, x: Inputs) -> Tensor | None:
        """The output recorded for this very ``x`` (then forgotten), or None."""
        out = self.out if self.out is not None and is_same(x, self.args, self.kwargs) else None
        self.args, self.kwargs, self.out = (), {}, None
        if out is not None and (out.dim() == 0 or out.shape[0] != batch_size(x)):
            return None
        return out
