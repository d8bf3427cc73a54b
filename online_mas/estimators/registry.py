"""Which closed-form rule each layer type takes: adding a layer family is one file and one line.

A module takes the rule of the first of its classes (its own type, then its bases) found in
:data:`RULES`, if the rule's ``supported(m)`` accepts its settings; its parameters then get their
per-sample sums in closed form from its input and output gradient. Everything else goes to the
``torch.func`` fallback, which is exact too.
"""

from __future__ import annotations

from torch import nn

from online_mas.estimators import activation, attention, conv, embedding, linear, norm, recurrent
from online_mas.estimators.common import Rule

__all__ = ["RULES", "register", "rule_for"]

RULES: dict[type[nn.Module], Rule] = {
    nn.Linear: linear.RULE,
    nn.Conv1d: conv.RULE,
    nn.Conv2d: conv.RULE,
    nn.Conv3d: conv.RULE,
    nn.ConvTranspose1d: conv.RULE,
    nn.ConvTranspose2d: conv.RULE,
    nn.ConvTranspose3d: conv.RULE,
    nn.Embedding: embedding.RULE,
    nn.LayerNorm: norm.RULE,
    nn.GroupNorm: norm.RULE,
    nn.BatchNorm1d: norm.RULE,
    nn.BatchNorm2d: norm.RULE,
    nn.BatchNorm3d: norm.RULE,
    nn.RMSNorm: norm.RULE,
    nn.InstanceNorm1d: norm.RULE,
    nn.InstanceNorm2d: norm.RULE,
    nn.InstanceNorm3d: norm.RULE,
    nn.PReLU: activation.RULE,
    nn.MultiheadAttention: attention.RULE,
    nn.LSTM: recurrent.RULE, nn.GRU: recurrent.RULE, nn.RNN: recurrent.RULE,
}


def register(module_type: type[nn.Module], rule: Rule) -> None:
    """Use ``rule`` for ``module_type`` and its subclasses (unless they have their own).

    Examples
    --------
    >>> from torch import nn
    >>> from online_mas.estimators import registry
    >>> class MyLinear(nn.Linear): ...
    >>> registry.rule_for(MyLinear(2, 2)).name
    'linear'
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"module_type must be a subclass of nn.Module, got {module_type!r}")
    if not isinstance(rule, Rule):
        raise TypeError(f"rule must be an estimators.Rule, got {type(rule)!r}")
    RULES[module_type] = rule


def rule_for(m: nn.Module) -> Rule | None:
    """The rule for module ``m``, or None when it has none or its settings are not covered."""
    for cls in type(m).__mro__:
        rule = RULES.get(cls)
        if rule is not None:
            return rule if rule.supported(m) else None
    return None
