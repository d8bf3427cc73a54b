"""Label-free augmentations for small inputs: 8x8 images ``(B, C, H, W)`` and 1-D signals ``(B, C, L)``.

A two-view self-supervised objective (SimSiam) compares two random views of each sample; a
denoising autoencoder reconstructs a sample from one corrupted view. The views come from
:class:`Augment`, which applies, in this order:

- ``"shift"``: a random translation by up to ``shift`` pixels (samples, for a signal) along each
  spatial axis, zero-filled (pad, then a random crop);
- ``"mask"``: each input element set to 0 with probability ``mask``;
- ``"noise"``: Gaussian noise of standard deviation ``noise`` added.

A shift assumes that neighbouring elements are neighbours in the data: on a pixel-permuted stream
it scrambles, so the permuted configs use ``"noise"`` and ``"mask"`` only. Randomness comes from
``generator`` (default: torch's global generator, which the runner checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["AUGMENTATIONS", "Augment", "random_shift"]

AUGMENTATIONS = ("shift", "mask", "noise")


@dataclass(frozen=True)
class Augment:
    """Random views of a batch; see the module docstring.

    Examples
    --------
    >>> import torch
    >>> x = torch.arange(4.0).reshape(1, 1, 4)
    >>> Augment(("shift",), shift=1)(x, generator=torch.Generator().manual_seed(0))
    tensor([[[1., 2., 3., 0.]]])
    >>> Augment(("blur",))
    Traceback (most recent call last):
    ...
    ValueError: augment must be a list of distinct names from ('shift', 'mask', 'noise'), got ('blur',)
    """

    names: tuple[str, ...] = ("mask", "noise")  # which augmentations, of AUGMENTATIONS
    noise: float = 0.1  # standard deviation of the added Gaussian noise, >= 0
    mask: float = 0.2  # probability that an element is set to 0, in [0, 1)
    shift: int = 1  # largest translation per spatial axis, in elements, >= 0

    def __post_init__(self) -> None:
        names = tuple(self.names)
        if any(n not in AUGMENTATIONS for n in names) or len(set(names)) != len(names):
            raise ValueError(f"augment must be a list of distinct names from {AUGMENTATIONS}, got "
                             f"{self.names!r}")
        object.__setattr__(self, "names", names)
        if not _number(self.noise) or self.noise < 0:
            raise ValueError(f"noise must be a finite number >= 0, got {self.noise!r}")
        if not _number(self.mask) or not 0 <= self.mask < 1:
            raise ValueError(f"mask must be a number in [0, 1), got {self.mask!r}")
        if isinstance(self.shift, bool) or not isinstance(self.shift, int) or self.shift < 0:
            raise ValueError(f"shift must be an int >= 0, got {self.shift!r}")

    def __call__(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """One random view of every sample of ``x`` (batch first; a new tensor)."""
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
            raise TypeError(f"x must be a floating tensor (batch first, at least 2-D), got "
                            f"{type(x).__name__ if not isinstance(x, Tensor) else (x.dtype, tuple(x.shape))}")
        out = x
        if "shift" in self.names and self.shift > 0 and x.dim() >= 3:
            out = random_shift(out, self.shift, generator=generator)
        if "mask" in self.names and self.mask > 0:
            keep = torch.rand(out.shape, generator=generator, device="cpu").to(out.device) >= self.mask
            out = out * keep.to(out.dtype)
        if "noise" in self.names and self.noise > 0:
            noise = torch.randn(out.shape, generator=generator, device="cpu").to(out.device)
            out = out + self.noise * noise.to(out.dtype)
        return out if out is not x else x.clone()


def random_shift(x: Tensor, shift: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Translate each sample of ``x`` (``(B, C, *spatial)``) by a random offset in
    ``[-shift, shift]`` per spatial axis, filling with zeros.

    Examples
    --------
    >>> import torch
    >>> x = torch.arange(1.0, 5.0).reshape(2, 1, 2)
    >>> random_shift(x, 1, generator=torch.Generator().manual_seed(3)).tolist()
    [[[1.0, 2.0]], [[4.0, 0.0]]]
    """
    b, spatial = x.shape[0], x.shape[2:]
    pad = [shift] * (2 * len(spatial))
    padded = torch.nn.functional.pad(x, pad)
    offsets = torch.randint(0, 2 * shift + 1, (b, len(spatial)), generator=generator)
    out = torch.empty_like(x)
    for combo in torch.unique(offsets, dim=0).tolist():  # at most (2 shift + 1)^dims groups
        rows = (offsets == torch.tensor(combo)).all(1).nonzero().flatten().to(x.device)
        view = padded[rows]
        for axis, (start, size) in enumerate(zip(combo, spatial, strict=True)):
            view = view.narrow(2 + axis, start, size)
        out[rows] = view
    return out


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v == v and abs(v) != float("inf")
