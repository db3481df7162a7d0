"""The one input check and the small tensor helpers."""

import pytest
import torch

from nbutils.tensors import append_dims, check_tensor, draw, generator_device


def test_names_bind_sizes_across_tensors():
    sizes = check_tensor(torch.zeros(8, 3, 5), "x", shape=("B", 3, "W"))
    assert sizes == {"B": 8, "W": 5}
    check_tensor(torch.zeros(8), "t", shape=("B",), sizes=sizes)
    with pytest.raises(ValueError, match=r"t must have shape \(B=8,\), got \(7,\)"):
        check_tensor(torch.zeros(7), "t", shape=("B",), sizes=sizes)
    with pytest.raises(ValueError, match=r"must have shape \(N, N\), got \(2, 3\)"):
        check_tensor(torch.zeros(2, 3), "m", shape=("N", "N"))


def test_star_means_one_or_more_further_dims():
    check_tensor(torch.zeros(2, 3), "x", shape=("B", "*"))
    check_tensor(torch.zeros(2, 3, 4, 5), "x", shape=("B", "*"))
    with pytest.raises(ValueError, match=r"shape \(B, \*\), got \(2,\)"):
        check_tensor(torch.zeros(2), "x", shape=("B", "*"))


def test_a_failed_match_binds_nothing():
    sizes = {}
    with pytest.raises(ValueError):
        check_tensor(torch.zeros(2, 3), "x", shape=("B", 4), sizes=sizes)
    assert sizes == {}


def test_type_dtype_and_value_errors_say_what_came():
    with pytest.raises(TypeError, match="must be a torch.Tensor, got list"):
        check_tensor([1.0], "x")
    with pytest.raises(TypeError, match=r"dtype torch.uint8, got torch.float32"):
        check_tensor(torch.zeros(2), "images", dtype=torch.uint8)
    with pytest.raises(TypeError, match="int64 or torch.int32"):
        check_tensor(torch.zeros(2), "y", dtype=(torch.int64, torch.int32))
    with pytest.raises(TypeError, match="floating-point tensor, got dtype torch.int64"):
        check_tensor(torch.zeros(2, dtype=torch.long), "x", floating=True)
    with pytest.raises(ValueError, match="2 NaN or infinite values; fix it"):
        check_tensor(
            torch.tensor([0.0, float("nan"), float("inf")]), "x", finite=True, fix="fix it"
        )
    with pytest.raises(ValueError, match=r"1 other values, e.g. 0.5 \(range \[0, 1\]\)"):
        check_tensor(torch.tensor([0.0, 0.5, 1.0]), "x", binary=True)
    check_tensor(torch.tensor([0.0, 1.0]), "x", binary=True, finite=True)


def test_append_dims():
    assert append_dims(torch.ones(3), 4).shape == (3, 1, 1, 1)
    with pytest.raises(ValueError, match="cannot expand"):
        append_dims(torch.ones(3, 2), 1)


def test_draw_uses_the_generator_and_moves_to_the_device():
    a = draw(torch.randn, (4,), generator=torch.Generator().manual_seed(1), device="cpu")
    b = torch.randn(4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert draw(torch.rand, (2, 3), dtype=torch.float64).dtype == torch.float64
    assert generator_device(None, "meta") == "meta"
    assert generator_device(torch.Generator(), "meta") == torch.device("cpu")


def test_a_cpu_generator_draws_the_same_numbers_for_any_device(device):
    a = draw(torch.randn, (3, 2), generator=torch.Generator().manual_seed(4), device=device)
    b = torch.randn(3, 2, generator=torch.Generator().manual_seed(4))
    assert a.device.type == device.type and torch.equal(a.cpu(), b)
