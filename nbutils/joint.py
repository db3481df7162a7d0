"""Classification as inference: a joint model p(x, y) = p(y) p(x | y) and Bayes' rule.

The label is just one more variable of the chain, placed first: a class-conditional
autoregressive model gives p(x | y) exactly, a learnt categorical prior gives p(y), and
p(y | x) = p(x | y) p(y) / sum_k p(x | k) p(k) is exact too (ten passes of the model).
"""

from __future__ import annotations

import torch
from torch import nn

from nbutils.autoregressive import Autoregressive
from nbutils.tensors import check_count, generator_device


class JointModel(nn.Module):
    """The joint p(x, y) = p(y) p(x | y): the label is the first variable of the chain.

    Wraps a class-conditional autoregressive model and adds a learnt categorical prior
    p(y) (its maximum-likelihood value is the label frequencies of the training set).

    Args:
        model: an :class:`Autoregressive` model with ``num_classes > 0``.
    """

    def __init__(self, model: Autoregressive):
        super().__init__()
        if not getattr(model, "num_classes", 0):
            raise ValueError("JointModel needs a class-conditional model (num_classes > 0)")
        self.model, self.num_classes = model, model.num_classes
        self.prior_logits = nn.Parameter(torch.zeros(model.num_classes))

    def log_prior(self) -> torch.Tensor:
        """log p(y) for every label, (K,)."""
        return torch.log_softmax(self.prior_logits, dim=0)

    def log_prob(self, x, y) -> torch.Tensor:
        """log p(x, y) = log p(y) + log p(x | y) in nats, (B,)."""
        y = self.model.check_label(y, len(x))
        return self.log_prior()[y] + self.model.log_prob(x, y)

    def resample_masks(self) -> None:
        self.model.resample_masks()

    @torch.no_grad()
    def sample(self, n: int, y=None, generator: torch.Generator | None = None):
        """Draw y ~ p(y) (unless given), then x ~ p(x | y). Returns (x, y)."""
        check_count(n, "n")
        if y is None:
            probs = self.log_prior().exp()
            where = generator_device(generator, probs.device)  # draw where the generator lives
            y = torch.multinomial(probs.to(where), n, replacement=True, generator=generator)
            y = y.to(probs.device)
        return self.model.sample(n, y, generator=generator), y

    def classify(self, x) -> torch.Tensor:
        """log p(y | x) by Bayes' rule, (B, K)."""
        return classify(self.model, x, self.log_prior())


def class_log_likelihoods(model: Autoregressive, x) -> torch.Tensor:
    """log p(x | y = k) for every label k, (B, K): K passes over the batch, done as one."""
    b, k = len(x), model.num_classes
    labels = torch.arange(k, device=x.device).repeat(b)  # (B K,)
    return model.log_prob(x.repeat_interleave(k, dim=0), labels).view(b, k)


def classify(model, x, log_prior: torch.Tensor | None = None) -> torch.Tensor:
    """Classification as inference: log p(y | x) = log p(x | y) + log p(y) - log p(x), (B, K).

    Args:
        model: a :class:`JointModel` (its prior is used) or a class-conditional model.
        x: (B, *event_shape) binary images.
        log_prior: log p(y) (K,) for a conditional model; uniform when None.
    """
    if isinstance(model, JointModel):
        model, log_prior = model.model, model.log_prior()
    joint = class_log_likelihoods(model, x)  # (B, K)
    if log_prior is not None:
        joint = joint + log_prior.to(joint)
    return torch.log_softmax(joint, dim=1)  # the uniform prior cancels
