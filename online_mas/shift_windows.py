r"""The input shift of many windows at once: :class:`~online_mas.signals.InputShift`'s recursion
over window references, solved for a whole block of windows in a fixed number of tensor operations.

``InputShift.per_sample`` walks a batch window by window (a dozen small tensor operations per
window). The Trigger's deferred evaluation hands it hundreds of samples at once;
:func:`piece_statistics` computes, from the sums of the features over consecutive pieces of the
block (no piece crosses a window end), the sums of the per-sample values over each piece and the
reference after the block. The reference recursion

.. math::

    \mu_k = \mu_{k-1} + r_k (m_k - \mu_{k-1}), \qquad
    v_k = v_{k-1} + r_k \big((q_k - 2 m_k \mu_{k-1} + \mu_{k-1}^2) - v_{k-1}\big)

(:math:`m_k, q_k` the mean and second moment of window :math:`k`, :math:`r_k` its rate) is linear:
with :math:`A_k = \prod_{i \le k} (1 - r_i)`,
:math:`\mu_k = A_k \mu_0 + \sum_{i \le k} (A_k / A_i)\, r_i m_i
= \mu_0 + \sum_{i \le k} (A_k / A_i)\, r_i (m_i - \mu_0)` (the weights sum to :math:`1 - A_k`),
one matrix product for all :math:`k`, taken in the second form so that windows equal to the
reference leave it exactly where it was (a constant stream: its values stay exactly 0, as in
``per_sample``), and the same for :math:`v` once the :math:`\mu_{k-1}` are known. The sum of the values
over a piece is :math:`(\|P_{\text{end}}\|^2 - \|P_{\text{start}}\|^2) / F`, with :math:`P` the
sum of :math:`y = (f - \mu) s` from the window's start: the window's feature sum so far minus its
count times :math:`\mu`, times :math:`s` (the reference is frozen during a window). The results
equal ``per_sample``'s up to rounding.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["Reference", "piece_statistics"]


class Reference(NamedTuple):
    """The state of an :class:`~online_mas.signals.InputShift` that the window recursion reads."""

    mean: Tensor | None  # reference mean of each feature (None: no reference yet)
    var: Tensor | None  # reference variance
    scale: Tensor | None  # 1 / sqrt(var + eps * floor)
    sum: Tensor | None  # feature sums over the open window's samples
    sumsq: Tensor | None  # and of their squares
    filled: int  # samples in the open window
    windows: int  # windows in the reference


class Constants:
    """Matrices that depend only on the hyperparameters and the number of windows, kept between
    calls (the recursion's weights once the rates are steady, the variance floor's averaging)."""

    def __init__(self, *, window: int, half_life: float, eps: float, blocks: tuple[int, ...]) -> None:
        self.window, self.eps, self.blocks = window, eps, blocks
        self.steady = 1.0 - 0.5 ** (window / half_life)  # the rate once the reference is long
        self._weights: dict[tuple[int, int, str], Tensor] = {}
        self._floor: dict[str, tuple[Tensor, Tensor]] = {}

    def weights(self, k: int, windows: int, like: Tensor) -> Tensor:
        """``(k + 1, k + 1)``: row ``j`` gives the reference after ``j`` more windows from column 0
        (the reference before) and the next ``j`` window sums (the ``1 / window`` folded in)."""
        rates = [max(self.steady, 1.0 / (windows + j + 1)) for j in range(k)]
        key = (k, windows if rates and rates[0] != self.steady else -1, str(like.device))
        found = self._weights.get(key)
        if found is None:
            r = torch.tensor(rates, dtype=torch.float64)
            keep = torch.cumprod(1.0 - r, 0)
            found = torch.zeros(k + 1, k + 1, dtype=torch.float64)
            found[0, 0] = 1.0
            found[1:, 0] = keep
            found[1:, 1:] = (keep[:, None] / keep[None, :]).tril() * (r / self.window)
            found = found.to(like.device)
            if len(self._weights) > 64:
                self._weights.clear()
            self._weights[key] = found
        return found

    def floor(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(F, blocks)`` block means and ``(blocks, F)`` block spread, for the variance floor."""
        key = str(like.device)
        if key not in self._floor:
            width = sum(self.blocks)
            mean = torch.zeros(width, len(self.blocks), dtype=torch.float64)
            spread = torch.zeros(len(self.blocks), width, dtype=torch.float64)
            start = 0
            for b, d in enumerate(self.blocks):
                mean[start:start + d, b] = 1.0 / d
                spread[b, start:start + d] = self.eps
                start += d
            self._floor[key] = (mean.to(like.device), spread.to(like.device))
        return self._floor[key]


def piece_statistics(sums: Tensor, sumsq: Tensor, lengths: list[int], ref: Reference,
                     constants: Constants) -> tuple[Tensor, Reference, Tensor | None]:
    """Sums of the per-sample input-shift values over consecutive pieces of samples.

    Parameters
    ----------
    sums, sumsq
        ``(P, F)`` float64: the sums of the features and of their squares over each piece; the
        first piece starts at sample ``ref.count`` of the open window, no piece crosses a window
        end.
    lengths
        The pieces' sample counts.
    ref
        The reference before the first piece.
    constants
        The :class:`Constants` of this input shift.

    Returns
    -------
    tuple
        The ``(P,)`` float64 sums of the values, the reference after the last piece, and the sum
        of ``y`` over the open window after it (None when no window is open or there is no
        reference), which ``InputShift.per_sample`` keeps as its prefix.
    """
    window, width = constants.window, sums.shape[1]
    c0 = ref.filled
    wins, ends, pos = [], [], c0
    for k in lengths:  # each piece's window (0: the open one) and end position in its window
        wins.append(pos // window)
        pos += k
        ends.append(pos - wins[-1] * window)
    n_win, closed = wins[-1] + 1, pos // window
    one_each = len(lengths) == n_win
    cum, q_win = sums, sumsq  # running sums from the window's start to each piece's end
    if not one_each:
        cum = _cumsum_within(sums, wins)
        q_win = sumsq.new_zeros(n_win, width).index_add_(0, torch.tensor(wins, device=sums.device), sumsq)
    if ref.sum is not None and ref.sumsq is not None:  # the open window's earlier samples
        n_first = wins.count(0)
        cum = torch.cat([cum[:n_first] + ref.sum, cum[n_first:]])
        q_win = torch.cat([q_win[:1] + ref.sumsq, q_win[1:]])
    s_win = cum
    if not one_each:  # the running sum at each window's last piece
        last = [i for i in range(len(wins)) if i == len(wins) - 1 or wins[i + 1] != wins[i]]
        s_win = cum[torch.tensor(last, device=cum.device)]
    mean, var, scale = _references(s_win[:closed], q_win[:closed], ref, constants)
    had = ref.mean is not None
    if not had:  # the open window has no reference: its pieces give zeros
        mean = torch.cat([mean[:1] * 0.0, mean]) if closed else sums.new_zeros(1, width)
        scale = torch.cat([scale[:1] * 0.0, scale]) if closed else sums.new_zeros(1, width)
        var = torch.cat([var[:1] * 0.0, var]) if closed else sums.new_zeros(1, width)
    # row k of mean/scale: the reference during window k (row closed: after the block)
    if one_each:
        if c0 == 0 and pos % window == 0:  # whole windows
            y = torch.add(cum, mean[:n_win], alpha=-window)
        else:
            y = cum - torch.tensor(ends, dtype=sums.dtype, device=sums.device)[:, None] * mean[:n_win]
        end = y.mul_(scale[:n_win])
    else:
        index = torch.tensor(wins, device=sums.device)
        count = torch.tensor(ends, dtype=sums.dtype, device=sums.device)[:, None]
        end = (cum - count * mean[index]) * scale[index]
    out = end.square().sum(1)
    # a piece that starts inside its window continues the previous piece (or, the first, the open
    # window's earlier samples): subtract the running sum's norm at its start
    inside = [i for i, (e, k) in enumerate(zip(ends, lengths, strict=True)) if e > k and (i or had)]
    if inside:
        prev = end[torch.tensor([max(i - 1, 0) for i in inside], device=end.device)]
        if inside[0] == 0:
            opening: Tensor = (ref.sum - c0 * ref.mean) * ref.scale  # type: ignore[operator, assignment]
            prev = torch.cat([opening[None], prev[1:]])
        out = out.index_add(0, torch.tensor(inside, device=out.device), prev.square().sum(1), alpha=-1)
    if not had:
        out = out * torch.tensor([k > 0 for k in wins], dtype=out.dtype, device=out.device)
    rem = pos % window
    after = Reference(mean[closed] if closed or had else None, var[closed] if closed or had else None,
                      scale[closed] if closed or had else None, s_win[-1] if rem else None,
                      q_win[-1] if rem else None, rem, ref.windows + closed)
    prefix = end[-1] if rem and (had or closed) else None
    return out.div_(width), after, prefix


def _cumsum_within(sums: Tensor, wins: list[int]) -> Tensor:
    """Running sums of the rows of ``sums`` that restart at each new window."""
    total = sums.cumsum(0)
    base, start = [], -1  # the running total just before each piece's window starts (-1: none)
    for i, k in enumerate(wins):
        if i == 0 or wins[i - 1] != k:
            start = i - 1
        base.append(start)
    padded = torch.cat([sums.new_zeros(1, sums.shape[1]), total])
    return total - padded[torch.tensor(base, device=sums.device) + 1]


def _references(s: Tensor, q: Tensor, ref: Reference, constants: Constants) -> tuple[Tensor, Tensor, Tensor]:
    """The reference (mean, variance, scale) before and after each window with feature sums
    ``s`` and sums of squares ``q`` (``(k, F)``, float64): ``k + 1`` rows, the first the
    reference before (``k`` rows when there was none: the first window sets it)."""
    window = constants.window
    mean0, var0, scale0, windows = ref.mean, ref.var, ref.scale, ref.windows
    if mean0 is None or var0 is None:
        if s.shape[0] == 0:
            return s, s, s
        mean0 = s[0] / window  # the first window sets the reference
        var0 = (q[0] / window - mean0 * mean0).clamp_min(0.0)
        s, q, windows, scale0 = s[1:], q[1:], 1, None
    weights = constants.weights(s.shape[0], windows, s)[:, 1:]
    # row j: after j windows; as steps from the reference before (the weights of the windows sum
    # to 1 minus the weight that stays on it), so a window equal to the reference moves nothing,
    # exactly, as in per_sample's recursion
    mean = torch.addmm(mean0, weights, torch.add(s, mean0, alpha=-window))
    before = mean[:-1]
    target = torch.addcmul(q, before, torch.add(before, s, alpha=-2.0 / window), value=window)
    var = torch.addmm(var0, weights, torch.add(target.clamp_min_(0.0), var0, alpha=-window))
    if scale0 is not None and s.shape[0] == 0:
        return mean, var, scale0[None]
    block_mean, spread = constants.floor(var)
    scale = torch.addmm(var, var @ block_mean, spread).add_(1e-12).rsqrt_()
    return mean, var, scale
