"""Shared fixtures: one CPU thread, float64 by default, per-example Jacobians by autograd, and
the device the device-aware tests run on (``pytest --device cuda``; the option itself is
declared by the plugin ``nbutils.pytest_defaults``, so it works from any folder).

Session defaults such as the smoke profile live in :mod:`nbutils.pytest_defaults`.
"""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test on one CPU thread: tiny tensors are faster so, and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def float64():
    """Run a test with float64 as the default dtype; the default is restored afterwards."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield torch.float64
    torch.set_default_dtype(before)


def _jacobians(fn, x: torch.Tensor) -> torch.Tensor:
    """Jacobians of ``fn`` (B, *in) -> (B, *out), one example at a time: (B, D_out, D_in)."""
    event = x.shape[1:]

    def one(v):
        return fn(v.reshape(1, *event)).flatten()

    return torch.stack([torch.autograd.functional.jacobian(one, xi.flatten()) for xi in x])


@pytest.fixture
def jacobians():
    """``jacobians(fn, x) -> (B, D_out, D_in)``: exact Jacobians of a batched map, by autograd
    (use float64 inputs: the tests compare them with tight tolerances)."""
    return _jacobians


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    """The device of ``pytest --device`` (default cpu); CUDA without a GPU is a usage error."""
    wanted = torch.device(request.config.getoption("--device"))
    if wanted.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--device cuda was asked for, but CUDA is not available here")
    return wanted
