"""Self-supervised learning on an unlabeled stream: the network, the objectives, the learners.

:class:`SSLNet` holds the encoder (built from ``[model]``, its last linear layer giving the
embedding; ``forward`` is the encoder) and the heads of the objective: a projector and a
predictor for SimSiam, a decoder for the denoising autoencoder. Probes read the embedding only.

Objectives (:func:`ssl_loss`), neither of which reads a label:

- ``"simsiam"`` (Chen & He, CVPR 2021): two augmented views, ``z = projector(encoder(view))``,
  ``p = predictor(z)``; loss ``-(cos(p1, sg(z2)) + cos(p2, sg(z1))) / 2``, in [-1, 1].
- ``"dae"``: a denoising autoencoder, ``mean ||decoder(encoder(view)) - x||^2`` per element.

Learners of the kind (``experiment.learners``): ``finetune`` and ``joint`` (i.i.d. order, the upper
bound) are the runner's :class:`~online_mas.experiment.learners.Finetune`; ``online-mas`` and
``mas-oracle`` its :class:`~online_mas.experiment.learners.MAS`, with the OnlineMAS importance taken
from the squared norm of the embedding (``output=`` on the encoder), so only the encoder's
parameters have importance; ``lump`` is :class:`LUMP`.

References
----------
Madaan, Yoon, Li, Liu, Hwang. Representational continuity for unsupervised continual learning.
ICLR 2022 (LUMP). Chen, He. Exploring simple Siamese representation learning. CVPR 2021.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from online_mas.experiment.augment import Augment
from online_mas.experiment.config import ExperimentConfig, ModelConfig, SSLSection
from online_mas.experiment.learners import MAS, Finetune, Learner
from online_mas.experiment.models import build_model
from online_mas.experiment.registry import SSL_LEARNERS, build_detector, build_mas
from online_mas.experiment.replay_learners import check_learner_state
from online_mas.online import Event
from online_mas.rehearsal import Reservoir

__all__ = ["LUMP", "SSLNet", "build_ssl_learner", "embedding", "ssl_loss"]

_VERSION = 1


class SSLNet(nn.Module):
    """The encoder (``forward``) and the heads of both objectives.

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> net = SSLNet.build(ExperimentConfig().model, SSLSection(embed_dim=8), (1, 8, 8))
    >>> net(torch.zeros(3, 1, 8, 8)).shape, net.decoder(torch.zeros(3, 8)).shape
    (torch.Size([3, 8]), torch.Size([3, 1, 8, 8]))
    """

    def __init__(self, encoder: nn.Module, embed_dim: int, input_shape: tuple[int, ...], *,
                 proj_dim: int, pred_dim: int) -> None:
        super().__init__()
        d = 1
        for s in input_shape:
            d *= s
        self.encoder = encoder
        self.projector = nn.Sequential(nn.Linear(embed_dim, proj_dim), nn.BatchNorm1d(proj_dim),
                                       nn.ReLU(), nn.Linear(proj_dim, proj_dim))
        self.predictor = nn.Sequential(nn.Linear(proj_dim, pred_dim), nn.BatchNorm1d(pred_dim),
                                       nn.ReLU(), nn.Linear(pred_dim, proj_dim))
        self.decoder = nn.Sequential(nn.Linear(embed_dim, proj_dim), nn.ReLU(), nn.Linear(proj_dim, d),
                                     nn.Unflatten(1, tuple(input_shape)))

    @classmethod
    def build(cls, model: ModelConfig, ssl: SSLSection, input_shape: tuple[int, ...]) -> SSLNet:
        """The encoder of ``[model]`` (its head sized ``ssl.embed_dim``) with the heads of ``[ssl]``."""
        encoder = build_model(model, input_shape, ssl.embed_dim)
        return cls(encoder, ssl.embed_dim, input_shape, proj_dim=ssl.proj_dim, pred_dim=ssl.pred_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)


def embedding(net: nn.Module, x: Tensor) -> Tensor:
    """The encoder's output: what MAS differentiates (``OnlineMAS(..., output=embedding)``)."""
    return net.encoder(x)  # type: ignore[operator]


def ssl_loss(net: SSLNet, x: Tensor, objective: str, augment: Augment) -> Tensor:
    """The self-supervised loss of batch ``x`` (module docstring); random views from ``augment``.

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> net = SSLNet.build(ExperimentConfig().model, SSLSection(embed_dim=8), (1, 8, 8))
    >>> x = torch.rand(16, 1, 8, 8)
    >>> -1.0 <= ssl_loss(net, x, "simsiam", Augment()).item() <= 1.0
    True
    >>> ssl_loss(net, x, "dae", Augment()).item() > 0
    True
    """
    if objective == "simsiam":
        z1 = net.projector(net.encoder(augment(x)))
        z2 = net.projector(net.encoder(augment(x)))
        p1, p2 = net.predictor(z1), net.predictor(z2)
        return -(F.cosine_similarity(p1, z2.detach(), dim=1).mean()
                 + F.cosine_similarity(p2, z1.detach(), dim=1).mean()) / 2
    if objective == "dae":
        return F.mse_loss(net.decoder(net.encoder(augment(x))), x)
    raise ValueError(f"objective must be 'simsiam' or 'dae', got {objective!r}")


class LUMP(Finetune):
    """LUMP-style mixup replay (Madaan et al., ICLR 2022) from a small reservoir of unlabeled inputs.

    Each step trains on ``lam * x + (1 - lam) * x_mem`` with ``lam ~ Beta(alpha, alpha)`` and
    ``x_mem`` drawn from the memory (on ``x`` alone while the memory is empty), then offers the
    stream's batch to the reservoir. The memory never holds a label (it stores zeros in their place).

    Examples
    --------
    >>> import torch
    >>> lump = LUMP(Reservoir(4, seed=0), alpha=0.4)
    >>> x = torch.ones(2, 3)
    >>> torch.equal(lump.mix(x), x)   # empty memory: the batch itself
    True
    >>> _ = lump.after_step(x, 0.0)
    >>> lump.stored_samples(), lump.mix(torch.zeros(2, 3)).shape
    (2, torch.Size([2, 3]))
    """

    def __init__(self, memory: Reservoir, *, alpha: float) -> None:
        super().__init__()
        self.name = "lump"
        self.memory = memory
        self.alpha = alpha
        self._beta = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))

    def mix(self, x: Tensor) -> Tensor:
        """The inputs the objective trains on this step."""
        replay = self.memory.sample(len(x))
        if replay is None:
            return x
        lam = self._beta.sample((len(x),)).to(x.device, x.dtype)
        lam = lam.view(-1, *([1] * (x.dim() - 1)))
        other = replay.x[torch.arange(len(x)) % len(replay.x)]  # fewer stored than asked: cycle
        return lam * x + (1 - lam) * other.to(x.device, x.dtype)

    def after_step(self, x: Tensor, loss: float) -> Event | None:
        self.memory.update(x.detach(), torch.zeros(len(x), dtype=torch.int64, device=x.device))
        return None

    def stored_samples(self) -> int | None:
        return len(self.memory)

    def state_dict(self) -> dict[str, object]:
        return {"version": _VERSION, "learner": self.name, "memory": self.memory.state_dict()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        check_learner_state(state, self.name)
        self.memory.load_state_dict(state["memory"])  # type: ignore[arg-type]


def build_ssl_learner(name: str, config: ExperimentConfig, net: SSLNet, boundaries: list[int], *,
                      seed: int = 0) -> Learner:
    """The learner ``name`` of :data:`~online_mas.experiment.registry.SSL_LEARNERS` on ``net``.

    ``online-mas`` and ``mas-oracle`` read ``[learner.online-mas]`` / ``[learner.mas-oracle]``
    (``lam``, ``penalty``, detector, ``[...mas]``), with MAS importance from the embedding's norm.

    Examples
    --------
    >>> import torch
    >>> net = SSLNet.build(ExperimentConfig().model, SSLSection(embed_dim=8), (1, 8, 8))
    >>> build_ssl_learner("online-mas", ExperimentConfig(), net, [10]).mas.output is embedding
    True
    >>> build_ssl_learner("ewc", ExperimentConfig(), net, [10])
    Traceback (most recent call last):
    ...
    ValueError: unknown ssl learner 'ewc'; allowed: finetune, online-mas, mas-oracle, lump, joint
    """
    lr = config.optim.lr
    if name in ("finetune", "joint"):
        return Finetune(joint=name == "joint")
    if name == "online-mas":
        o = config.learner.online_mas
        detector = build_detector(o.detector, o.detector_args, where="learner.online-mas")
        return MAS(name, build_mas(net, o.lam, o.mas, detector=detector, output=embedding),
                   form=o.penalty, lr=lr)
    if name == "mas-oracle":
        m = config.learner.mas_oracle
        return MAS(name, build_mas(net, m.lam, m.mas, boundaries=boundaries, output=embedding),
                   form=m.penalty, lr=lr)
    if name == "lump":
        s = config.ssl
        return LUMP(Reservoir(s.lump_size, seed=seed), alpha=s.lump_alpha)
    raise ValueError(f"unknown ssl learner {name!r}; allowed: {', '.join(SSL_LEARNERS)}")
