"""Chapter 09's contrastive estimators: NCE, InfoNCE and NWJ, the critics they score pairs
with, and the correlated-Gaussian benchmark whose mutual information is known.

Every estimator here reads one **critic matrix** ``scores`` of shape (N, N): row ``i`` holds
the critic's value ``f(x_i, y_j)`` for the anchor ``x_i`` against every ``y_j`` of the batch.
The diagonal holds the N positive pairs, drawn from the joint p(x, y); the N - 1 off-diagonal
entries of each row are that anchor's negatives, pairs of independent draws, so the
negatives are simply the *other* rows' positives::

    >>> import torch
    >>> scores = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    >>> round(float(info_nce(scores)), 4)  # log 2 - cross-entropy of the diagonal
    0.5662

:func:`info_nce` can never exceed ``log N`` (each row's log-softmax is at most 0), whatever
the true mutual information; :func:`nwj` has no such ceiling but its variance grows with
``exp`` of the critic. Units are nats throughout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nbutils.nn.layers import MLP
from nbutils.tensors import check_count, check_tensor, draw


def _check_scores(scores, name: str = "scores") -> int:
    """The critic matrix (N, N), N >= 2, finite; returns N."""
    check_tensor(scores, name, shape=("N", "N"), floating=True, finite=True)
    n = scores.shape[0]
    if n < 2:
        raise ValueError(
            f"{name} must come from a batch of at least 2 pairs (one positive and at least one "
            f"negative per anchor), got N={n}"
        )
    return n


def info_nce_loss(scores: torch.Tensor) -> torch.Tensor:
    """The InfoNCE loss: N-way cross-entropy of picking each row's positive, the diagonal.

    Shapes: scores (N, N) -> scalar, in nats. Equal to
    ``F.cross_entropy(scores, torch.arange(N))``: the "labels" are the diagonal positions.
    """
    n = _check_scores(scores)
    return F.cross_entropy(scores, torch.arange(n, device=scores.device))


def info_nce(scores: torch.Tensor) -> torch.Tensor:
    """The InfoNCE lower bound on I(X; Y): ``log N - info_nce_loss(scores)``, at most log N.

    Shapes: scores (N, N) -> scalar, in nats.
    """
    return math.log(_check_scores(scores)) - info_nce_loss(scores)


def nwj(scores: torch.Tensor) -> torch.Tensor:
    """The NWJ (f-divergence) lower bound ``E_p[f] - E_{p(x)p(y)}[exp(f - 1)]``.

    The joint's expectation is the mean of the diagonal, the product of the marginals' the
    mean over the off-diagonal entries. It is tight at ``f = 1 + log p(x, y) / (p(x) p(y))``.

    Shapes: scores (N, N) -> scalar, in nats.
    """
    n = _check_scores(scores)
    off = ~torch.eye(n, dtype=torch.bool, device=scores.device)
    return scores.diagonal().mean() - (scores[off] - 1).exp().mean()


def nce_loss(data_log_ratio: torch.Tensor, noise_log_ratio: torch.Tensor) -> torch.Tensor:
    """Noise-contrastive estimation: logistic regression of data against noise samples.

    A model ``g(x)`` of the log density ratio ``log p_data(x) / p_noise(x)`` is scored on
    ``n`` data samples and ``m`` noise samples (``nu = m / n`` noise per datum). The classifier
    "x is data" has logit ``g(x) - log nu``; this is its binary cross-entropy, summed over one
    datum and its ``nu`` noise samples. Its minimiser is the true log ratio.

    Shapes: data_log_ratio (n,), noise_log_ratio (m,) -> scalar.
    """
    check_tensor(data_log_ratio, "data_log_ratio", shape=("n",), floating=True, finite=True)
    check_tensor(noise_log_ratio, "noise_log_ratio", shape=("m",), floating=True, finite=True)
    if not len(data_log_ratio) or not len(noise_log_ratio):
        raise ValueError(
            f"nce_loss needs data and noise samples, got {len(data_log_ratio)} data and "
            f"{len(noise_log_ratio)} noise"
        )
    nu = noise_log_ratio.shape[0] / data_log_ratio.shape[0]
    on_data = F.softplus(-(data_log_ratio - math.log(nu))).mean()
    on_noise = F.softplus(noise_log_ratio - math.log(nu)).mean()
    return on_data + nu * on_noise


# ----------------------------------------------------------------------------------- critics


def _check_pair(x, y, dims: tuple[int, int] | None = None) -> None:
    """x (N, Dx) and y (N, Dy) of one batch of pairs; with ``dims``, the critic's (Dx, Dy)."""
    check_tensor(x, "x", shape=("N", "Dx"), floating=True)
    check_tensor(y, "y", shape=("N", "Dy"), floating=True)
    if dims is not None and (x.shape[1], y.shape[1]) != dims:
        raise ValueError(
            f"this critic scores x of {dims[0]} and y of {dims[1]} features, got x "
            f"{tuple(x.shape)} and y {tuple(y.shape)}"
        )
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must hold the same number of pairs (row i of each is one pair), got "
            f"{x.shape[0]} and {y.shape[0]}"
        )


class SeparableCritic(nn.Module):
    """``f(x, y) = g(x) . h(y)``: two encoders and a dot product, one matrix product per batch.

    Shapes: x (N, dim_x), y (N, dim_y) -> scores (N, N).
    """

    def __init__(self, dim_x: int, dim_y: int, hidden: int = 256, embed: int = 32, layers: int = 2):
        super().__init__()
        self.dims = (dim_x, dim_y)
        self.g = MLP((dim_x, *[hidden] * layers, embed), activation=nn.ReLU)
        self.h = MLP((dim_y, *[hidden] * layers, embed), activation=nn.ReLU)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_pair(x, y, self.dims)
        return self.g(x) @ self.h(y).T


class BilinearCritic(nn.Module):
    """``f(x, y) = x^T W y``, the critic of CPC's per-step predictions (W starts at zero).

    Shapes: x (N, dim_x), y (N, dim_y) -> scores (N, N).
    """

    def __init__(self, dim_x: int, dim_y: int):
        super().__init__()
        self.dims = (dim_x, dim_y)
        self.weight = nn.Parameter(torch.zeros(dim_x, dim_y))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``W^T x``, the prediction that the dot product scores: (..., dim_x) -> (..., dim_y)."""
        return x @ self.weight

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_pair(x, y, self.dims)
        return self.project(x) @ y.T


class ConcatCritic(nn.Module):
    """``f(x, y) = MLP([x, y])``: the most flexible critic, and N^2 network evaluations.

    Shapes: x (N, dim_x), y (N, dim_y) -> scores (N, N), entry (i, j) = MLP([x_i, y_j]).
    """

    def __init__(self, dim_x: int, dim_y: int, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.dims = (dim_x, dim_y)
        self.net = MLP((dim_x + dim_y, *[hidden] * layers, 1), activation=nn.ReLU)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_pair(x, y, self.dims)
        n = x.shape[0]
        pairs = torch.cat([x[:, None].expand(n, n, -1), y[None].expand(n, n, -1)], dim=-1)
        return self.net(pairs).squeeze(-1)


# ------------------------------------------------------------- the correlated-Gaussian benchmark


def gaussian_mi(rho: float, dim: int) -> float:
    """I(X; Y) in nats of ``dim`` independent pairs of unit Gaussians, each with correlation rho.

    Each pair contributes ``-1/2 log(1 - rho^2)``.
    """
    if not -1.0 < rho < 1.0:
        raise ValueError(f"rho must lie strictly between -1 and 1, got {rho}")
    return -0.5 * dim * math.log1p(-rho * rho)


def rho_for_mi(mi: float, dim: int) -> float:
    """The correlation that gives ``dim`` pairs a total mutual information of ``mi`` nats."""
    if not mi >= 0 or not math.isfinite(mi):
        raise ValueError(f"mi must be a finite number of nats >= 0, got {mi}")
    return math.sqrt(-math.expm1(-2.0 * mi / check_count(dim, "dim")))


def correlated_gaussians(
    n: int, dim: int, rho: float, generator: torch.Generator | None = None, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs ``y = rho x + sqrt(1 - rho^2) e`` with x, e standard normal in ``dim`` dimensions.

    Shapes: -> x (n, dim), y (n, dim); their MI is :func:`gaussian_mi` ``(rho, dim)``.
    """
    gaussian_mi(rho, check_count(dim, "dim"))  # validates rho
    x = draw(torch.randn, (check_count(n), dim), generator=generator, device=device)
    e = draw(torch.randn, (n, dim), generator=generator, device=device)
    return x, rho * x + math.sqrt(1.0 - rho * rho) * e


def gaussian_log_ratio(x: torch.Tensor, y: torch.Tensor, rho: float) -> torch.Tensor:
    """The optimal critic: ``log p(x_i, y_j) / (p(x_i) p(y_j))`` for every pair, in nats.

    Shapes: x (N, D), y (N, D) -> (N, N). Its diagonal averages to the MI.
    """
    _check_pair(x, y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    gaussian_mi(rho, x.shape[1])  # validates rho
    dim, s2 = x.shape[1], 1.0 - rho * rho
    cross = x @ y.T
    sq_x, sq_y = x.pow(2).sum(1)[:, None], y.pow(2).sum(1)[None]
    quad = (rho * rho * (sq_x + sq_y) - 2.0 * rho * cross) / (2.0 * s2)
    return -0.5 * dim * math.log(s2) - quad


def mi_staircase(
    critic: nn.Module,
    bound,
    *,
    levels=(2.0, 4.0, 6.0, 8.0, 10.0),
    steps_per_level: int = 4_000,
    batch: int = 64,
    dim: int = 20,
    lr: float = 5e-4,
    generator: torch.Generator | None = None,
    desc: str = "MI staircase",
) -> torch.Tensor:
    """Poole et al.'s benchmark: train ``critic`` to maximise ``bound`` while the true MI of
    correlated Gaussians steps through ``levels`` (nats), ``steps_per_level`` Adam steps each.

    Every step draws a fresh batch of ``batch`` pairs (the critic matrix is ``batch`` x
    ``batch``, so InfoNCE's ceiling is ``log batch``) and records the bound on it.

    Args:
        critic: ``critic(x, y) -> (N, N)`` scores, e.g. :class:`SeparableCritic` ``(dim, dim)``.
        bound: :func:`info_nce` or :func:`nwj` (any ``scores -> scalar`` to maximise).

    Returns:
        The estimates on the training batches, shape (len(levels) * steps_per_level,), on the CPU.
    """
    from tqdm.auto import tqdm

    steps = check_count(steps_per_level, "steps_per_level")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 2:
        raise ValueError(f"batch must be an int >= 2 (one positive, some negatives), got {batch}")
    device = next(critic.parameters()).device
    try:
        with torch.no_grad():
            trial = critic(torch.zeros(2, dim, device=device), torch.zeros(2, dim, device=device))
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"critic must score pairs of {dim}-dimensional x and y: {err}") from err
    if tuple(trial.shape) != (2, 2):
        raise ValueError(f"critic must return an (N, N) matrix, got {tuple(trial.shape)} for N=2")
    optimizer = torch.optim.Adam(critic.parameters(), lr=lr)
    estimates = torch.empty(len(levels) * steps)
    bar = tqdm(total=len(estimates), desc=desc, mininterval=1.0)
    for i, mi in enumerate(levels):
        rho = rho_for_mi(float(mi), dim)
        for s in range(steps):
            x, y = correlated_gaussians(batch, dim, rho, generator=generator, device=device)
            value = bound(critic(x, y))
            optimizer.zero_grad(set_to_none=True)
            (-value).backward()
            optimizer.step()
            estimates[i * steps + s] = value.detach()
            bar.update()
    bar.close()
    return estimates
