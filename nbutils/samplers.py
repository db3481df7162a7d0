"""ODE samplers for velocity fields: Euler, Heun, RK4 and an adaptive Dormand-Prince (RK45) solver.

All of them integrate ``dx/dt = v(x, t)`` for a network called as ``model(x, t, **cond)``
with ``t`` of shape (B,). In this book t = 0 is data and t = 1 is noise, so generation runs
from t = 1 down to t = 0 along a **decreasing** time grid ``ts`` (``ts[0] = 1``,
``ts[-1] = 0``); an increasing grid runs the same ODE the other way (data -> noise).

The fixed-step samplers have the book's signature ``sampler(model, x, ts, *, callback=None,
grad=False, **cond) -> x``. The callback is called once per step with a dict::

    {"i": step index, "t": time reached, "x": state at that time (B, *),
     "v": slope of the step, (x_new - x_old) / (t_new - t_old), (B, *), "nfe": evaluations so far}

Samplers run without gradients (``torch.no_grad``) unless ``grad=True``: then the solution is
differentiable with respect to the start ``x`` and the model's parameters, which training a
continuous flow (chapter 03) and some likelihood computations need. :func:`trajectory`
collects the states of a solve through the callback, and :class:`NFECounter` wraps a model to
count its evaluations, whatever the sampler.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Sequence

import torch

from nbutils.tensors import check_count, check_like, check_tensor


def time_grid(steps: int, t_start: float = 1.0, t_end: float = 0.0) -> torch.Tensor:
    """Uniform grid of ``steps + 1`` times from ``t_start`` to ``t_end`` (float64, CPU).

    Example:
        >>> time_grid(4).tolist()
        [1.0, 0.75, 0.5, 0.25, 0.0]
    """
    check_count(steps, "steps")
    if not (0 <= t_start <= 1 and 0 <= t_end <= 1) or t_start == t_end:
        raise ValueError(
            f"a time grid runs between two different times in [0, 1] (t = 0 data, t = 1 "
            f"noise), got {t_start} -> {t_end}"
        )
    return torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)


def check_grid(ts) -> list[float]:
    """Validate a time grid and return it as a list of floats.

    A grid is 1-D, has at least two points, lies in [0, 1] and is strictly monotone
    (decreasing for generation, increasing for encoding).

    Raises:
        ValueError: with what was expected and what came.
    """
    ts = torch.as_tensor(ts, dtype=torch.float64).cpu()
    if ts.dim() != 1 or ts.numel() < 2:
        raise ValueError(f"ts must be a 1-D grid of at least 2 times, got shape {tuple(ts.shape)}")
    if not torch.isfinite(ts).all() or ts.min() < 0 or ts.max() > 1:
        raise ValueError(
            f"times must lie in [0, 1] (t = 0 data, t = 1 noise), got [{ts.min()}, {ts.max()}]"
        )
    steps = ts[1:] - ts[:-1]
    if not ((steps < 0).all() or (steps > 0).all()):
        raise ValueError(f"ts must be strictly monotone (e.g. 1 -> 0 to generate), got {ts}")
    return ts.tolist()


def _check_state(x: torch.Tensor) -> None:
    check_tensor(x, "x", shape=("B", "*"), floating=True)


def _gradient_switch(sampler: Callable) -> Callable:
    """Give a sampler the keyword ``grad``: without it (the default) the sampler runs under
    ``torch.no_grad()``; with ``grad=True`` it runs in the caller's mode, so autograd can
    differentiate through the solve."""

    @functools.wraps(sampler)
    def run(*args, grad: bool = False, **kwargs):
        with contextlib.nullcontext() if grad else torch.no_grad():
            return sampler(*args, **kwargs)

    return run


def velocity(model: Callable, x: torch.Tensor, t: float, **cond) -> torch.Tensor:
    """Evaluate ``model(x, t)`` at one time for the whole batch and check the output's shape.

    Args:
        model: the velocity network, ``model(x, t, **cond)`` with t (B,).
        x: (B, *) states.
        t: the common time of the batch.

    Returns:
        (B, *) velocities dx/dt.
    """
    tb = torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)  # (B,)
    return check_like(model(x, tb, **cond), x, "the model", "a velocity")


class NFECounter:
    """Wrap a model and count its evaluations (number of function evaluations, NFE).

    Example:
        >>> counted = NFECounter(lambda x, t: -x)
        >>> _ = heun(counted, torch.ones(3, 2), time_grid(4))
        >>> counted.nfe
        8
    """

    def __init__(self, model: Callable):
        self.model, self.nfe = model, 0

    def __call__(self, x, t, **cond):
        self.nfe += 1
        return self.model(x, t, **cond)


def _report(callback, i, t, x, v, nfe) -> None:
    if callback is not None:
        callback({"i": i, "t": t, "x": x, "v": v, "nfe": nfe})


@_gradient_switch
def euler(model: Callable, x: torch.Tensor, ts, *, callback=None, **cond) -> torch.Tensor:
    """Euler's method: ``x <- x + (t_next - t) v(x, t)``; one evaluation per step.

    Args:
        model: velocity network ``model(x, t, **cond)``, t (B,).
        x: (B, *) states at ``ts[0]`` (noise at t = 1 to generate).
        ts: monotone grid in [0, 1], e.g. :func:`time_grid`.
        callback: called after every step with the dict described in the module docstring.
        grad: keep the autograd graph of the solve (default: no gradients).
        **cond: passed to the model (e.g. ``y`` labels).

    Returns:
        (B, *) states at ``ts[-1]``.
    """
    ts, _ = check_grid(ts), _check_state(x)
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:], strict=True)):
        v = velocity(model, x, t, **cond)
        x = x + (t_next - t) * v
        _report(callback, i, t_next, x, v, i + 1)
    return x


@_gradient_switch
def heun(model: Callable, x: torch.Tensor, ts, *, callback=None, final_euler: bool = False,
         **cond) -> torch.Tensor:  # fmt: skip
    """Heun's method (explicit trapezoid): an Euler predictor, then the average of the two
    slopes; second order, two evaluations per step. Same arguments as :func:`euler`, and

    Args:
        final_euler: make the last step a plain Euler step (2 k - 1 evaluations for k steps), as
            Karras et al. (2022) do: it never evaluates the model at the grid's end. A flow sees
            only exact data points at t = 0 in training, and the corrector would ask it at an
            Euler prediction, which is not one; a reflowed flow is also poor at t = 0 itself,
            where it must invert its own coupling (chapter 07 measures both).
    """
    ts, _ = check_grid(ts), _check_state(x)
    last = len(ts) - 2
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:], strict=True)):
        h, euler_step = t_next - t, final_euler and i == last
        v = velocity(model, x, t, **cond)
        if not euler_step:
            v2 = velocity(model, x + h * v, t_next, **cond)  # slope at the Euler prediction
            v = 0.5 * (v + v2)
        x = x + h * v
        _report(callback, i, t_next, x, v, 2 * (i + 1) - euler_step)
    return x


@_gradient_switch
def rk4(model: Callable, x: torch.Tensor, ts, *, callback=None, **cond) -> torch.Tensor:
    """The classical fourth-order Runge-Kutta method; four evaluations per step.

    On a fixed grid it is the solver to train a continuous flow with (chapter 03): the cost
    of a step is known in advance and no step size can shrink towards zero. Same arguments
    as :func:`euler`.
    """
    ts, _ = check_grid(ts), _check_state(x)
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:], strict=True)):
        h = t_next - t
        k1 = velocity(model, x, t, **cond)
        k2 = velocity(model, x + 0.5 * h * k1, t + 0.5 * h, **cond)
        k3 = velocity(model, x + 0.5 * h * k2, t + 0.5 * h, **cond)
        k4 = velocity(model, x + h * k3, t_next, **cond)
        v = (k1 + 2 * k2 + 2 * k3 + k4) / 6
        x = x + h * v
        _report(callback, i, t_next, x, v, 4 * (i + 1))
    return x


# Dormand-Prince 5(4) tableau: nodes C, stages A, 5th-order weights B5, 4th-order weights B4.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = _A[6] + (0.0,)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


def dopri_step(f: Callable, x: torch.Tensor, t: float, h: float, k1: torch.Tensor):
    """One Dormand-Prince step of size ``h`` from ``(t, x)`` given the slope ``k1 = f(x, t)``.

    Returns:
        ``(x5, error, k7)``: the 5th-order solution, the difference between the 5th- and
        4th-order solutions, and the slope at ``(t + h, x5)`` (first slope of the next step).
    """
    ks = [k1]
    for c, row in zip(_C[1:], _A[1:], strict=True):
        dx = sum(a * k for a, k in zip(row, ks, strict=True) if a != 0.0)
        ks.append(f(x + h * dx, t + c * h))
    x5 = x + h * sum(
        b * k for b, k in zip(_B5, ks, strict=True) if b != 0.0
    )  # equals the 7th stage point
    error = h * sum((b5 - b4) * k for b5, b4, k in zip(_B5, _B4, ks, strict=True))
    return x5, error, ks[-1]


def _error_norm(error: torch.Tensor, x: torch.Tensor, x_new: torch.Tensor, rtol, atol) -> float:
    scale = atol + rtol * torch.maximum(x.abs(), x_new.abs())
    return (error / scale).pow(2).mean().sqrt().item()  # RMS over batch and dimensions


@_gradient_switch
def rk45(
    model: Callable,
    x: torch.Tensor,
    ts: Sequence[float] | torch.Tensor = (1.0, 0.0),
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    first_step: float | None = None,
    max_steps: int = 10_000,
    callback=None,
    **cond,
) -> torch.Tensor:
    """Adaptive Dormand-Prince 5(4) integration (the reference solver, like scipy's RK45).

    The step is accepted when the RMS of the local error, scaled by
    ``atol + rtol * |x|``, is at most 1; the next step is then ``h * 0.9 * err^(-1/5)``
    (changed by a factor in [0.2, 10]). One step size serves the whole batch. Steps land
    exactly on every time in ``ts``; the callback sees every accepted step.

    Args:
        model, x, callback, grad, **cond: as in :func:`euler`.
        ts: monotone times in [0, 1]; default ``(1, 0)``, noise to data.
        rtol, atol: relative and absolute tolerances.
        first_step: initial step length (default: 1% of the first interval).
        max_steps: give up (RuntimeError) after this many attempted steps.

    Returns:
        (B, *) states at ``ts[-1]``. Use :class:`NFECounter` (or the callback's ``"nfe"``)
        for the number of evaluations.
    """
    ts, _ = check_grid(ts), _check_state(x)
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
    nfe = [0]

    def f(state, t):
        nfe[0] += 1
        return velocity(model, state, t, **cond)

    sign = 1.0 if ts[-1] > ts[0] else -1.0
    h = abs(first_step) if first_step else 0.01 * abs(ts[1] - ts[0])
    t, k, attempts, accepted = ts[0], f(x, ts[0]), 0, 0
    for target in ts[1:]:
        while sign * (target - t) > 1e-12:
            attempts += 1
            if attempts > max_steps:
                raise RuntimeError(f"rk45 took more than {max_steps} steps; loosen rtol/atol")
            step = sign * min(h, abs(target - t))
            x_new, error, k_new = dopri_step(f, x, t, step, k)
            err = _error_norm(error, x, x_new, rtol, atol)
            if err <= 1.0:  # accept
                t_new = target if abs(target - (t + step)) < 1e-12 else t + step
                _report(callback, accepted, t_new, x_new, (x_new - x) / step, nfe[0])
                x, t, k, accepted = x_new, t_new, k_new, accepted + 1
            factor = 10.0 if err == 0 else min(10.0, max(0.2, 0.9 * err**-0.2))
            h = abs(step) * factor if math.isfinite(factor) else abs(step) * 0.2
    return x


def trajectory(model: Callable, x: torch.Tensor, ts, *, sampler: Callable = euler, **kwargs):
    """Every state of a solve, start included: (len(ts), B, *) for a fixed-step sampler.

    The states come from the sampler's callback (an adaptive sampler gives one per accepted
    step instead). They stay on the device of ``x``; ``.cpu()`` them for plots.

    Example:
        >>> trajectory(lambda x, t: -x, torch.ones(2, 1), time_grid(2))[:, 0, 0].tolist()
        [1.0, 1.5, 2.25]
    """
    states = [x]
    sampler(model, x, ts, callback=lambda step: states.append(step["x"]), **kwargs)
    return torch.stack(states)
