"""The linear probe: how much of a label a frozen representation makes linearly readable.

:func:`linear_probe` fits a multinomial logistic regression (a single linear layer and
softmax) on features of labelled training images and reports its accuracy on test features.
It is convex, so full-batch L-BFGS finds the optimum; the weights start at zero, where the
loss is exactly ``log classes`` (a probe that ends there has learned nothing, whatever
accuracy it prints).

Features are standardised with the training set's mean and spread; a feature whose spread is
below a tenth of the average spread is scaled as if it had that tenth, so a pixel that is
constant in the training set cannot explode on a test image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from nbutils.tensors import check_count, check_tensor


@dataclass
class ProbeResult:
    """Test and training accuracy, the final training cross-entropy (nats) and its history."""

    accuracy: float
    train_accuracy: float
    loss: float
    losses: list[float] = field(default_factory=list)


def _check(features, labels, name: str, classes: int, sizes: dict) -> None:
    check_tensor(features, f"{name} features", shape=("N", "D"), sizes=sizes, floating=True,
                 finite=True)  # fmt: skip
    n = features.shape[0]
    check_tensor(labels, f"{name} labels", shape=(n,), dtype=torch.int64)
    if n and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(
            f"{name} labels must lie in [0, {classes}), got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    sizes.pop("N")


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    classes: int = 10,
    steps: int = 100,
    weight_decay: float = 1e-4,
) -> ProbeResult:
    """Fit logistic regression on frozen training features; score it on the test features.

    Args:
        train_features, test_features: (N, D) and (M, D) floats (detached; any device).
        train_labels, test_labels: (N,) and (M,) int64 in ``[0, classes)``.
        steps: L-BFGS iterations (full batch).
        weight_decay: the L2 penalty ``weight_decay / 2 * |W|^2`` (not on the bias).

    Returns:
        A :class:`ProbeResult`; ``loss`` is the training cross-entropy without the penalty.
    """
    sizes: dict[str, int] = {}
    _check(train_features, train_labels, "train", classes, sizes)
    _check(test_features, test_labels, "test", classes, sizes)
    if train_features.shape[0] < 2:
        raise ValueError(
            f"a probe needs at least 2 training examples, got {train_features.shape[0]}"
        )
    check_count(steps, "steps")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay}")
    places = {str(t.device) for t in (train_features, train_labels, test_features, test_labels)}
    if len(places) > 1:
        raise ValueError(f"features and labels must be on one device, got {sorted(places)}")
    x = train_features.detach().float()
    mean, spread = x.mean(0), x.std(0)
    spread = spread.clamp_min(0.1 * spread.mean().clamp_min(1e-12))
    x = (x - mean) / spread
    weight = torch.zeros(x.shape[1], classes, device=x.device, requires_grad=True)
    bias = torch.zeros(classes, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12)  # fmt: skip
    losses: list[float] = []

    def closure():
        optimizer.zero_grad()
        ce = F.cross_entropy(x @ weight + bias, train_labels)
        losses.append(ce.item())
        total = ce + 0.5 * weight_decay * weight.pow(2).sum()
        total.backward()
        return total

    optimizer.step(closure)
    with torch.no_grad():
        train_logits = x @ weight + bias
        test_logits = ((test_features.detach().float() - mean) / spread) @ weight + bias
        return ProbeResult(
            accuracy=(test_logits.argmax(1) == test_labels).double().mean().item(),
            train_accuracy=(train_logits.argmax(1) == train_labels).double().mean().item(),
            loss=F.cross_entropy(train_logits, train_labels).item(),
            losses=losses,
        )


def chance_loss(classes: int = 10) -> float:
    """``log classes``: the probe's loss at its zero start, as of a probe that learns nothing."""
    return math.log(check_count(classes, "classes"))
