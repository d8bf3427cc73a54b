"""Online MAS across ranks: reductions with torch.distributed (gloo, 2 processes on CPU)."""

from __future__ import annotations

import torch
from models import MLP
from torch import nn

import online_mas as om


def test_wrapped_model_has_the_importance_and_state_of_the_plain_one() -> None:
    torch.manual_seed(0)
    plain = MLP()
    wrapped = nn.DataParallel(MLP())  # no GPU: a pass-through wrapper with "module." names
    wrapped.module.load_state_dict(plain.state_dict())
    x = torch.randn(12, 10)
    a = om.OnlineMAS(plain, detector=None)
    b = om.OnlineMAS(wrapped, detector=None)
    a.observe(x)
    b.observe(x)
    assert list(b.running_omega) == [n for n, _ in plain.named_parameters()]
    for n, v in a.running_omega.items():
        assert v.sum() > 0
        torch.testing.assert_close(b.running_omega[n], v)
    a.consolidate()
    b.consolidate()
    for src, dst in ((a, om.OnlineMAS(nn.DataParallel(MLP()), detector=None)),
                     (b, om.OnlineMAS(MLP(), detector=None))):
        dst.load_state_dict(src.state_dict())
        for n, v in src.omega.items():
            assert torch.equal(dst.omega[n], v) and torch.equal(dst.anchors[n], src.anchors[n])
