"""Bad inputs to the public entry points get one clear line: what was expected, what came."""

import pytest
import torch

from nbutils import runtime
from nbutils.flows import Flow, Logit, StandardNormal, halves, mlp_conditioner, nice
from nbutils.joint import JointModel
from nbutils.made import MADE, ensemble_log_prob
from nbutils.nn import UNet
from nbutils.paths import interpolate
from nbutils.rectified import flow_matching_loss
from nbutils.samplers import rk45, time_grid


def test_a_float64_input_to_a_float32_model_names_both_dtypes():
    flow = Flow(
        nice((2,), couplings=2, conditioner=mlp_conditioner(8, 1), partition=halves),
        StandardNormal(),
    )
    with pytest.raises(TypeError, match=r"torch.float64 but Flow computes in torch.float32"):
        flow.log_prob(torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="computes in torch.float32"):
        MADE(4, hidden=(8,)).log_prob(torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="computes in torch.float32"):
        UNet(channels=(8, 8))(torch.zeros(1, 1, 8, 8, dtype=torch.float64), torch.rand(1))


@pytest.mark.parametrize("n", [0, -3, 2.5, True, "4"])
def test_sample_counts_must_be_positive_ints(n):
    with pytest.raises(ValueError, match=r"n must be a positive int"):
        MADE(4, hidden=(8,)).sample(n)
    with pytest.raises(ValueError, match=r"n must be a positive int"):
        JointModel(MADE(4, hidden=(8,), num_classes=2)).sample(n)


def test_a_completion_mask_that_does_not_broadcast_is_named():
    model = MADE(4, hidden=(8,))
    with pytest.raises(ValueError, match=r"known_mask must broadcast to x's shape \(2, 4\)"):
        model.complete(torch.zeros(2, 4), torch.ones(3, dtype=torch.bool))


def test_zero_masks_is_refused_not_replaced_by_the_default():
    model = MADE(4, hidden=(8,), num_masks=2)
    with pytest.raises(ValueError, match="num_masks must be a positive int, got 0"):
        ensemble_log_prob(model, torch.zeros(1, 4), num_masks=0)


def test_integer_images_and_nan_times_are_refused_by_the_path():
    with pytest.raises(TypeError, match="x0 must be a floating-point tensor"):
        flow_matching_loss(lambda x, t: x, torch.zeros(2, 3, dtype=torch.uint8))
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\], got \[nan"):
        interpolate(x, x, torch.tensor([0.5, float("nan")]))


def test_nan_through_logit_is_refused():
    with pytest.raises(ValueError, match="got NaN"):
        Logit((2,))(torch.tensor([[0.5, float("nan")]]))


def test_solver_tolerances_and_grids_are_checked():
    with pytest.raises(ValueError, match="rtol and atol must be positive"):
        rk45(lambda x, t: x, torch.ones(2, 1), rtol=0.0)
    with pytest.raises(ValueError, match=r"two different times in \[0, 1\]"):
        time_grid(4, 1.5, 0.0)
    with pytest.raises(ValueError, match="two different times"):
        time_grid(4, 0.5, 0.5)
    with pytest.raises(ValueError, match="positive int"):
        time_grid(True)


def test_an_unknown_device_name_says_what_a_device_looks_like(monkeypatch):
    monkeypatch.setenv("NBUTILS_DEVICE", "gpu0")
    with pytest.raises(ValueError, match=r"NBUTILS_DEVICE='gpu0' is not a torch device"):
        runtime.device()
