"""Shared fixtures. (Session defaults such as the smoke profile live in nbutils.pytest_defaults.)"""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test on one CPU thread: tiny tensors are faster so, and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
