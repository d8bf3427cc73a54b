"""Batch transforms that define a segment's input distribution: permutation, rotation, corruption.

Each transform is applied to a whole float32 batch ``(B, *input_shape)`` on the fly and keeps only
small precomputed state (a permutation index, a sampling grid, a blur kernel). Stochastic transforms
(noise) draw from the ``generator`` the stream passes in, seeded per batch, so a batch is the same
whenever it is rebuilt.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CORRUPTIONS", "MAX_SEVERITY", "Corrupt", "Permute", "Rotate", "Transform"]

#: Largest corruption severity; severities lie in ``[0, MAX_SEVERITY]`` and 0 is the clean input.
MAX_SEVERITY = 5.0
#: Corruption kinds accepted by :class:`Corrupt`.
CORRUPTIONS = ("noise", "blur", "contrast")


class Transform:
    """Base class: ``transform(x, generator)`` maps a float32 batch to a batch of the same shape."""

    #: Whether the transform draws random numbers (then it needs a generator).
    stochastic: bool = False

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError


class Permute(Transform):
    """Permute the features of each input (``x.flatten(1)[:, perm]``), as in permuted MNIST.

    Parameters
    ----------
    perm : Tensor
        A permutation of ``0..D-1`` where ``D`` is the number of features per input.

    Examples
    --------
    >>> t = Permute(torch.tensor([2, 0, 1]))
    >>> t(torch.tensor([[10.0, 20.0, 30.0]])).tolist()
    [[30.0, 10.0, 20.0]]
    """

    def __init__(self, perm: Tensor) -> None:
        perm = torch.as_tensor(perm, dtype=torch.int64)
        if perm.dim() != 1 or not torch.equal(torch.sort(perm).values, torch.arange(len(perm))):
            raise ValueError(f"perm must be a permutation of 0..D-1, got {perm.tolist()[:10]}...")
        self.perm = perm

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        flat = x.flatten(1)
        if flat.shape[1] != len(self.perm):
            raise ValueError(f"inputs have {flat.shape[1]} features, the permutation "
                             f"{len(self.perm)}")
        return flat[:, self.perm].view(x.shape)

    def __repr__(self) -> str:
        return f"Permute(D={len(self.perm)})"


class Rotate(Transform):
    """Rotate images ``(B, C, H, W)`` counter-clockwise by ``angle`` degrees about their centre.

    Bilinear interpolation, zeros outside the image. The sampling grid is computed once.

    Parameters
    ----------
    angle : float
        Degrees, counter-clockwise as displayed (row 0 at the top).

    Examples
    --------
    >>> x = torch.arange(4.0).view(1, 1, 2, 2)
    >>> Rotate(90)(x).round().view(2, 2).tolist()
    [[1.0, 3.0], [0.0, 2.0]]
    """

    def __init__(self, angle: float) -> None:
        if not math.isfinite(float(angle)):
            raise ValueError(f"angle must be a finite number of degrees, got {angle!r}")
        self.angle = float(angle)
        self._grid: Tensor | None = None

    def _grid_for(self, x: Tensor) -> Tensor:
        if self._grid is None or self._grid.shape[1:3] != x.shape[-2:]:
            a = math.radians(self.angle)
            c, s = math.cos(a), math.sin(a)
            # output pixel (u, v) samples input at R^-1 (u, v); with y pointing down this turns the
            # displayed image counter-clockwise
            theta = torch.tensor([[[c, -s, 0.0], [s, c, 0.0]]], dtype=torch.float32)
            self._grid = F.affine_grid(theta, [1, 1, *x.shape[-2:]], align_corners=False)
        return self._grid

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"Rotate needs images of shape (B, C, H, W), got {tuple(x.shape)}")
        if self.angle % 360 == 0:
            return x
        grid = self._grid_for(x).expand(x.shape[0], -1, -1, -1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def __repr__(self) -> str:
        return f"Rotate({self.angle:g})"


class Corrupt(Transform):
    """Corrupt inputs in ``[0, 1]`` with ``kind`` at ``severity`` in ``[0, MAX_SEVERITY]``.

    - ``"noise"``: add Gaussian noise of standard deviation ``0.08 * severity``, clip to [0, 1];
    - ``"blur"``: Gaussian blur of standard deviation ``severity * H / 40`` pixels (``H`` the image
      height; 1 pixel at severity 5 on 8x8 digits), edges replicated;
    - ``"contrast"``: move each image towards its mean, ``m + (1 - 0.18 * severity) * (x - m)``.

    Severity 0 returns the input unchanged.

    Parameters
    ----------
    kind : str
        One of :data:`CORRUPTIONS`.
    severity : float
        In ``[0, MAX_SEVERITY]``.

    Examples
    --------
    >>> x = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    >>> Corrupt("contrast", 2.5)(x).view(-1).tolist()
    [0.22499999403953552, 0.7749999761581421, 0.7749999761581421, 0.22499999403953552]
    >>> Corrupt("fog", 1)
    Traceback (most recent call last):
    ...
    ValueError: kind must be one of ('noise', 'blur', 'contrast'), got 'fog'
    """

    def __init__(self, kind: str, severity: float) -> None:
        if kind not in CORRUPTIONS:
            raise ValueError(f"kind must be one of {CORRUPTIONS}, got {kind!r}")
        check_severity(severity)
        self.kind = kind
        self.severity = float(severity)
        self.stochastic = kind == "noise" and self.severity > 0
        self._kernel: Tensor | None = None

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self.severity == 0:
            return x
        if self.kind == "noise":
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            return (x + 0.08 * self.severity * noise).clamp_(0.0, 1.0)
        if self.kind == "contrast":
            mean = x.flatten(1).mean(1).view(-1, *([1] * (x.dim() - 1)))
            return mean + (1.0 - 0.18 * self.severity) * (x - mean)
        return self._blur(x)

    def _blur(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"blur needs images of shape (B, C, H, W), got {tuple(x.shape)}")
        if self._kernel is None or self._kernel.shape[-1] > 2 * x.shape[-1] + 1:
            sigma = self.severity * x.shape[-2] / 40.0
            half = max(1, math.ceil(2 * sigma))
            r = torch.arange(-half, half + 1, dtype=torch.float32)
            k = torch.exp(-(r**2) / (2 * sigma**2))
            self._kernel = k / k.sum()
        k = self._kernel
        c, half = x.shape[1], (len(k) - 1) // 2
        out = F.pad(x, (half, half, half, half), mode="replicate")
        out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)

    def __repr__(self) -> str:
        return f"Corrupt({self.kind!r}, {self.severity:g})"


def check_severity(severity: float) -> float:
    """Return ``severity`` as a float if it lies in ``[0, MAX_SEVERITY]``, else raise ValueError.

    >>> check_severity(6)
    Traceback (most recent call last):
    ...
    ValueError: severity must lie in [0, 5.0], got 6
    """
    if (isinstance(severity, bool) or not isinstance(severity, int | float)
            or not 0.0 <= float(severity) <= MAX_SEVERITY):
        raise ValueError(f"severity must lie in [0, {MAX_SEVERITY}], got {severity!r}")
    return float(severity)
