"""Autoregressive models of binary vectors and images: the base class, FVSBN and NADE (MADE:
made.py; PixelCNN: pixelcnn.py).

Every model writes the joint distribution of D binary pixels with the chain rule over an order
``o`` of the pixels,

    p(x) = prod_i p(x_{o_i} | x_{o_1}, ..., x_{o_{i-1}}),

each conditional a Bernoulli whose logit comes from one pass of a network over the whole image
(teacher forcing). The common interface (:class:`Autoregressive`):

* ``logits(x, y=None)`` -> Bernoulli logits, same shape as ``x``; entry i depends only on the
  pixels before i in ``model.order`` (the tests check this with Jacobians);
* ``log_prob(x, y=None)`` -> (B,) exact log-likelihood in nats;
* ``sample(n, y=None, generator=None)`` -> n images drawn pixel by pixel;
* ``complete(x, known_mask, y=None, generator=None)`` -> the unknown pixels drawn given the known.

``y`` is a class label (B,) for class-conditional models (``num_classes > 0``); :class:`JointModel`
adds a prior p(y) and so models the joint p(x, y) with the label as the first variable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nbutils.nn.embeddings import ClassEmbedding
from nbutils.tensors import check_count, check_dtype_matches, check_tensor, draw

BINARIZE = "binarize images first, e.g. with nbutils.data.binarize"


def _check_binary(x: torch.Tensor, model: nn.Module) -> None:
    """Raise a clear error unless ``x`` is a float tensor (B, *event_shape) of 0s and 1s in the
    model's dtype."""
    shape = ("B", *model.event_shape)
    check_tensor(x, "x", shape=shape, floating=True, binary=True, fix=BINARIZE)
    check_dtype_matches(x, model)


class Autoregressive(nn.Module):
    """Base class: Bernoulli conditionals in the order ``self.order`` (a permutation of 0..D-1).

    Subclasses implement :meth:`logits`; they may override the three sampling hooks
    ``_start`` / ``_logit_at`` / ``_update`` with cheaper incremental versions.

    Args:
        shape: the event shape, e.g. ``(1, 28, 28)`` for MNIST or ``4`` for a vector of 4 bits.
        num_classes: number of labels the model is conditioned on (0: unconditional).
    """

    def __init__(self, shape, num_classes: int = 0):
        super().__init__()
        self.event_shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.dim = math.prod(self.event_shape)
        if self.dim < 2:
            raise ValueError(f"need at least 2 variables, got shape {self.event_shape}")
        self.num_classes = int(num_classes)
        self.register_buffer("order", torch.arange(self.dim))

    def logits(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Bernoulli logits of every conditional, (B, *event_shape).

        The shape and dtype of ``x`` are checked, its values are not (real-valued inputs are
        fine, e.g. for :func:`dependency_map`); labels ``y`` as in :meth:`check_label`.
        """
        check_tensor(x, "x", shape=("B", *self.event_shape), floating=True)
        check_dtype_matches(x, self)
        return self._logits(x, self.check_label(y, len(x)))

    def _logits(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """:meth:`logits` without the checks: what subclasses implement."""
        raise NotImplementedError

    def resample_masks(self) -> None:
        """Move to the next order / connectivity (MADE); models with a fixed order do nothing."""

    def output_bias(self) -> torch.Tensor:
        """The bias added to every logit last: (D,), or (1,) when shared by all pixels."""
        raise NotImplementedError

    @torch.no_grad()
    def init_marginals(self, probs: torch.Tensor) -> None:
        """Set the output bias to logit(probs), e.g. the mean training image (*event_shape).

        A data-dependent start: an FVSBN (zero weights) then *is* the independent-pixel model,
        and no model spends its first steps pushing background logits towards -10.
        """
        bias = self.output_bias()
        probs = probs.to(bias).clamp(1e-4, 1 - 1e-4)
        bias.copy_(torch.logit(probs.flatten() if bias.numel() == self.dim else probs.mean()))

    def check_label(self, y: torch.Tensor | None, n: int) -> torch.Tensor | None:
        """Validate labels: (n,) integers in [0, num_classes) for a conditional model, else None."""
        if not self.num_classes:
            if y is not None:
                raise ValueError("this model is unconditional (num_classes=0) but got labels y")
            return None
        if y is None or not torch.is_tensor(y) or y.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"a class-conditional model needs integer labels y of shape ({n},)")
        if tuple(y.shape) != (n,) or (y < 0).any() or (y >= self.num_classes).any():
            raise ValueError(
                f"labels y must have shape ({n},) and values in [0, {self.num_classes}), "
                f"got shape {tuple(y.shape)}, range [{int(y.min())}, {int(y.max())}]"
            )
        return y.long()

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log-likelihood log p(x) (or log p(x | y)) in nats, (B,)."""
        _check_binary(x, self)
        y = self.check_label(y, len(x))
        nll = F.binary_cross_entropy_with_logits(self._logits(x, y), x, reduction="none")
        return -nll.flatten(1).sum(1)

    @torch.no_grad()
    def sample(self, n: int, y=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ancestral sampling, pixel by pixel in ``self.order``: (n, *event_shape) in {0, 1}."""
        check_count(n, "n")
        ref = next(self.parameters())
        x = torch.zeros(n, *self.event_shape, device=ref.device, dtype=ref.dtype)
        free = torch.ones_like(x, dtype=torch.bool)
        return self._fill(x, free, self.check_label(y, n), generator)

    @torch.no_grad()
    def complete(self, x, known_mask, y=None, generator: torch.Generator | None = None):
        """Keep the known pixels and draw the others one at a time in ``self.order``.

        Each unknown pixel is drawn from its conditional given every pixel before it in the
        order (known or already drawn). When all known pixels come before all unknown ones (a
        raster model completing the bottom half) this is exact sampling from p(x_unknown |
        x_known). A known pixel that comes *after* an unknown one is clamped but cannot be
        seen by that unknown pixel's conditional, so the result is then an approximation
        (it ignores the evidence "from the future"), not the true posterior.

        Args:
            x: (B, *event_shape) in {0, 1}; values at unknown pixels are ignored.
            known_mask: bool, broadcastable to x; True where the pixel is given.

        Returns:
            (B, *event_shape) in {0, 1}.
        """
        _check_binary(x, self)
        known = torch.as_tensor(known_mask, device=x.device).bool()
        try:
            known = known.expand_as(x)
        except RuntimeError as err:
            raise ValueError(
                f"known_mask must broadcast to x's shape {tuple(x.shape)}, got shape "
                f"{tuple(known.shape)} (e.g. (1, *event_shape) for one mask for all images)"
            ) from err
        filled = torch.where(known, x, torch.zeros_like(x))
        return self._fill(filled, ~known, self.check_label(y, len(x)), generator)

    def _fill(self, x, free, y, generator):
        flat, free = x.view(len(x), self.dim), free.reshape(len(x), self.dim)  # (B, D)
        state = self._start(flat, y)
        for i in self.order.tolist():
            if free[:, i].any():
                p = torch.sigmoid(self._logit_at(state, flat, i, y))  # (B,)
                u = draw(torch.rand, p.shape, generator=generator, device=p.device, dtype=p.dtype)
                flat[:, i] = torch.where(free[:, i], (u < p).to(p.dtype), flat[:, i])
            self._update(state, flat, i)
        return x

    def _start(self, flat, y):
        """Sampling state before the first pixel (None: recompute everything each step)."""
        return None

    def _logit_at(self, state, flat, i, y):
        """Logit of pixel i given the current (partly filled) flat images (B, D): (B,)."""
        return self._logits(flat.view(len(flat), *self.event_shape), y).reshape(len(flat), -1)[:, i]

    def _update(self, state, flat, i):
        """Fold the newly set pixel i into the state."""


def _class_table(num_classes: int, width: int) -> ClassEmbedding | None:
    """A per-class additive term, initialised to zero (None when unconditional)."""
    return ClassEmbedding(num_classes, width, zero_init=True) if num_classes else None


def _plus_class(base: torch.Tensor, table: ClassEmbedding | None, y) -> torch.Tensor:
    """base (W,) + table[y] (B, W), or base alone when there is no label."""
    return base if y is None else base + table(y, validate=False)  # checked by check_label


class FVSBN(Autoregressive):
    """Fully visible sigmoid belief network (Frey 1998): logistic regression on the past.

    ``logit_i = b_i + sum_{j < i} W_ij x_j`` in raster order, with only the strictly lower
    triangle of W stored: D (D - 1) / 2 + D parameters, O(D^2).

    Shapes: x (B, *shape) -> logits (B, *shape).
    """

    def __init__(self, shape=(1, 28, 28), num_classes: int = 0):
        super().__init__(shape, num_classes)
        rows, cols = torch.tril_indices(self.dim, self.dim, offset=-1)
        self.register_buffer("where", rows * self.dim + cols, persistent=False)  # flat (i, j < i)
        self.weight = nn.Parameter(torch.zeros(len(rows)))
        self.bias = nn.Parameter(torch.zeros(self.dim))
        self.class_bias = _class_table(self.num_classes, self.dim)

    def weight_matrix(self) -> torch.Tensor:
        """The strictly lower-triangular (D, D) weight matrix."""
        flat = self.weight.new_zeros(self.dim * self.dim).index_put((self.where,), self.weight)
        return flat.view(self.dim, self.dim)

    def output_bias(self):
        return self.bias

    def _logits(self, x, y=None):
        flat = x.flatten(1)  # (B, D)
        out = flat @ self.weight_matrix().T + _plus_class(self.bias, self.class_bias, y)
        return out.view_as(x)

    def _start(self, flat, y):
        return {"W": self.weight_matrix(), "b": _plus_class(self.bias, self.class_bias, y)}

    def _logit_at(self, state, flat, i, y):  # O(i) per pixel
        return state["b"][..., i] + flat[:, :i] @ state["W"][i, :i]


class NADE(Autoregressive):
    """Neural autoregressive distribution estimator (Larochelle & Murray 2011).

    One hidden layer per conditional, all sharing the weights W:
    ``h_i = sigmoid(c + W[:, <i] x_<i)``, ``logit_i = b_i + V_i . h_i``; O(D d) parameters.
    The D pre-activations are one cumulative sum, so ``logits`` costs O(B D d) and
    sampling updates ``a`` in O(d) per pixel.

    Shapes: x (B, *shape) -> logits (B, *shape).
    """

    def __init__(self, shape=(1, 28, 28), hidden: int = 500, num_classes: int = 0):
        super().__init__(shape, num_classes)
        check_count(hidden, "hidden")
        self.W = nn.Parameter(torch.randn(hidden, self.dim - 1) / math.sqrt(self.dim))  # no x_D
        self.c = nn.Parameter(torch.zeros(hidden))
        self.V = nn.Parameter(torch.randn(self.dim, hidden) / math.sqrt(hidden))
        self.b = nn.Parameter(torch.zeros(self.dim))
        self.class_hidden = _class_table(self.num_classes, hidden)
        self.class_bias = _class_table(self.num_classes, self.dim)

    def output_bias(self):
        return self.b

    def _logits(self, x, y=None):
        flat = x.flatten(1)  # (B, D)
        terms = flat[:, :-1, None] * self.W.T  # (B, D-1, d): x_j W[:, j]
        c = _plus_class(self.c, self.class_hidden, y)  # (d,) or (B, d)
        a = F.pad(torch.cumsum(terms, dim=1), (0, 0, 1, 0)) + c.unsqueeze(-2)  # (B, D, d): j < i
        out = (torch.sigmoid(a) * self.V).sum(-1)  # (B, D): V_i . h_i
        return (out + _plus_class(self.b, self.class_bias, y)).view_as(x)

    def _start(self, flat, y):
        c = _plus_class(self.c, self.class_hidden, y).expand(len(flat), -1)  # (B, d)
        return {"a": c.clone(), "b": _plus_class(self.b, self.class_bias, y)}

    def _logit_at(self, state, flat, i, y):
        return state["b"][..., i] + torch.sigmoid(state["a"]) @ self.V[i]

    def _update(self, state, flat, i):
        if i < self.dim - 1:  # the last pixel conditions nothing
            state["a"] += flat[:, i : i + 1] * self.W[:, i]  # (B, d)


def nll_nats_per_image(model: nn.Module, batch) -> torch.Tensor:
    """Mean negative log-likelihood in nats of a batch ``x`` or ``(x, y)``: the training loss.

    Labels are used only by conditional models. In training mode the model first moves to
    its next mask (MADE's order / connectivity resampling; a no-op for the others).
    """
    x, y = (batch, None) if torch.is_tensor(batch) else (batch[0], batch[1])
    if not getattr(model, "num_classes", 0):
        y = None
    if model.training:
        model.resample_masks()
    return -model.log_prob(x, y).mean()


def dependency_map(model: Autoregressive, index: int, x=None, y=None) -> torch.Tensor:
    """How strongly pixel ``index``'s logit depends on each input pixel: |d logit / d x|.

    Summed over a few random real-valued inputs (so that no dependence hides behind a dead
    unit). Zero exactly where the conditional cannot see the pixel. Returns (*event_shape).
    """
    ref = next(model.parameters())
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < model.dim:
        raise ValueError(f"index must be a pixel index in [0, {model.dim}), got {index!r}")
    if x is None:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(4, *model.event_shape, generator=g).to(ref)
    x = x.detach().clone().requires_grad_(True)
    if model.num_classes and y is None:
        y = torch.zeros(len(x), dtype=torch.long, device=x.device)
    out = model.logits(x, y).flatten(1)[:, index].sum()
    (grad,) = torch.autograd.grad(out, x)
    return grad.abs().sum(0)
