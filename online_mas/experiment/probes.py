"""Probes of a representation: the only place an experiment of kind ``"ssl"`` reads labels.

At every evaluation the encoder embeds each segment's training samples and its held-out set;
per segment a probe is fitted on the training embeddings and their labels and scored on the
held-out ones:

- :func:`knn_accuracy`: ``k`` nearest neighbours by cosine similarity, majority vote (ties go to
  the lowest class index), as in the k-NN evaluation of self-supervised continual learning
  (Madaan et al., ICLR 2022);
- :func:`ridge_accuracy`: a linear probe in closed form, ridge regression of the one-hot labels
  on the embeddings standardised with the training statistics, plus a bias; predicted class
  ``argmax``. ``W = (Z^T Z + ridge * n I)^{-1} Z^T Y`` on the centred, scaled ``Z``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["knn_accuracy", "ridge_accuracy"]


def _check(z_train: Tensor, y_train: Tensor, z_test: Tensor, y_test: Tensor) -> None:
    for name, z in (("z_train", z_train), ("z_test", z_test)):
        if not isinstance(z, Tensor) or z.dim() != 2 or not z.is_floating_point():
            raise TypeError(f"{name} must be a 2-D floating tensor (samples, features), got "
                            f"{getattr(z, 'shape', type(z))}")
    for name, y, z in (("y_train", y_train, z_train), ("y_test", y_test, z_test)):
        if not isinstance(y, Tensor) or y.dim() != 1 or y.dtype != torch.int64 or len(y) != len(z):
            raise TypeError(f"{name} must be int64 labels, one per row of the embeddings, got "
                            f"{getattr(y, 'dtype', type(y))} of shape {getattr(y, 'shape', None)}")
    if len(z_train) == 0 or len(z_test) == 0 or z_train.shape[1] != z_test.shape[1]:
        raise ValueError(f"the probe needs non-empty train and test embeddings of one width, got "
                         f"{tuple(z_train.shape)} and {tuple(z_test.shape)}")


@torch.no_grad()
def knn_accuracy(z_train: Tensor, y_train: Tensor, z_test: Tensor, y_test: Tensor, *,
                 k: int = 10, chunk: int = 1024) -> float:
    """Accuracy in [0, 1] of a ``k``-nearest-neighbour vote (cosine similarity) on ``z_test``.

    Examples
    --------
    >>> import torch
    >>> z = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> y = torch.tensor([0, 0, 1, 1])
    >>> knn_accuracy(z, y, torch.tensor([[1.0, 0.2], [0.2, 1.0]]), torch.tensor([0, 0]), k=2)
    0.5
    """
    _check(z_train, y_train, z_test, y_test)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    k = min(k, len(z_train))
    a = torch.nn.functional.normalize(z_train.float(), dim=1)
    n_classes = int(max(int(y_train.max()), int(y_test.max()))) + 1
    correct = 0
    for start in range(0, len(z_test), chunk):
        b = torch.nn.functional.normalize(z_test[start:start + chunk].float(), dim=1)
        idx = (b @ a.T).topk(k, dim=1).indices  # (n, k)
        votes = torch.zeros(len(b), n_classes).scatter_add_(
            1, y_train[idx], torch.ones(idx.shape))
        correct += int((votes.argmax(1) == y_test[start:start + chunk]).sum())
    return correct / len(z_test)


@torch.no_grad()
def ridge_accuracy(z_train: Tensor, y_train: Tensor, z_test: Tensor, y_test: Tensor, *,
                   ridge: float = 1e-2) -> float:
    """Accuracy in [0, 1] of the ridge-regression linear probe (module docstring) on ``z_test``.

    Examples
    --------
    >>> import torch
    >>> z = torch.tensor([[0.0], [1.0], [3.0], [4.0]])
    >>> y = torch.tensor([0, 0, 1, 1])
    >>> ridge_accuracy(z, y, torch.tensor([[1.9], [2.1]]), torch.tensor([0, 1]))
    1.0
    """
    _check(z_train, y_train, z_test, y_test)
    if not isinstance(ridge, int | float) or isinstance(ridge, bool) or not ridge >= 0 \
            or ridge == float("inf"):
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
    z = z_train.double()
    mean, std = z.mean(0), z.std(0, correction=0).clamp_min(1e-8)
    z = (z - mean) / std
    n, d = z.shape
    n_classes = int(max(int(y_train.max()), int(y_test.max()))) + 1
    onehot = torch.nn.functional.one_hot(y_train, n_classes).double()
    target = onehot - onehot.mean(0)  # the bias is the mean target (z is centred)
    gram = z.T @ z + ridge * n * torch.eye(d, dtype=z.dtype)
    w = torch.linalg.solve(gram, z.T @ target)
    scores = ((z_test.double() - mean) / std) @ w + onehot.mean(0)
    return int((scores.argmax(1) == y_test).sum()) / len(y_test)
