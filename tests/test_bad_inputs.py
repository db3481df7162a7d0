"""Bad inputs to the public entry points get one clear line: what was expected, what came."""

import math

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


# Found by a sweep of every public entry point with wrong shapes, counts, dtypes and ranges.
def _bad_calls():
    from nbutils.analytic import gaussian_mixture_velocity
    from nbutils.autoregressive import FVSBN, NADE, dependency_map
    from nbutils.data import eight_gaussians, spirals, two_moons
    from nbutils.flows import CNF, ActNorm, Squeeze, VariationalDequantizer
    from nbutils.likelihood import ode_log_prob
    from nbutils.metrics import accuracy, bits_per_dim, count_parameters, dequantized_bpd
    from nbutils.nn import VelocityMLP
    from nbutils.paths import logit_normal_times, uniform_times
    from nbutils.pixelcnn import CategoricalPixelCNN, GatedPixelCNN, PixelCNN
    from nbutils.rectified import reflow_pairs

    return [
        ("FVSBN logits", lambda: FVSBN(6).logits(torch.zeros(2, 5)), ValueError,
         r"x must have shape \(B, 6\), got \(2, 5\)"),
        ("NADE logits", lambda: NADE(6, hidden=4).logits(torch.zeros(2, 5)), ValueError,
         r"shape \(B, 6\)"),
        ("MADE logits", lambda: MADE(6, hidden=(8,)).logits(torch.zeros(2, 5)), ValueError,
         r"shape \(B, 6\)"),
        ("PixelCNN logits", lambda: PixelCNN(4, 4, channels=4, layers=1).logits(
            torch.zeros(2, 4, 4)), ValueError, r"shape \(B, 1, 4, 4\)"),
        ("gated logits labels", lambda: GatedPixelCNN(4, 4, channels=4, layers=1).logits(
            torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long)), ValueError,
         "unconditional"),
        ("integer logits", lambda: FVSBN(6).logits(torch.zeros(2, 6, dtype=torch.long)),
         TypeError, "floating-point"),
        ("NADE hidden 0", lambda: NADE(6, hidden=0), ValueError, "hidden must be a positive int"),
        ("MADE hidden int", lambda: MADE(6, hidden=8), ValueError, r"e\.g\. \(500,\), got 8"),
        ("MADE mask index", lambda: MADE(6, hidden=(8,), num_masks=2).set_mask(-1), ValueError,
         "mask index must be an integer >= 0, got -1"),
        ("MADE mask index type", lambda: MADE(6, hidden=(8,)).set_mask(1.5), ValueError,
         "integer >= 0"),
        ("dependency index", lambda: dependency_map(FVSBN(6), 6), ValueError,
         r"pixel index in \[0, 6\), got 6"),
        ("nice couplings", lambda: nice((4,), couplings=-1, partition=halves), ValueError,
         "couplings must be an int >= 0, got -1"),
        ("reflow batch", lambda: reflow_pairs(VelocityMLP(hidden=8), torch.zeros(4, 2),
            time_grid(2), batch_size=0), ValueError, "batch_size must be a positive int"),
        ("bpd of a matrix", lambda: dequantized_bpd(torch.zeros(3, 2)), ValueError,
         r"shape \(N,\), got \(3, 2\)"),
        ("bpd dims 0", lambda: bits_per_dim(1.0, dims=0), ValueError, "dims must be a positive"),
        ("float labels", lambda: accuracy(torch.zeros(4, 10), torch.zeros(4)), TypeError,
         "integer class indices"),
        ("not a module", lambda: count_parameters(3), TypeError, "needs a torch.nn.Module"),
        ("two moons n", lambda: two_moons(-1), ValueError, "n must be a positive int, got -1"),
        ("8 gaussians n", lambda: eight_gaussians(0), ValueError, "n must be a positive int"),
        ("spirals generator", lambda: spirals(4, generator=1), TypeError, "torch.Generator"),
        ("uniform times", lambda: uniform_times(0), ValueError, "n must be a positive int"),
        ("logit-normal std", lambda: logit_normal_times(4, std=-1.0), ValueError,
         "std must be a positive number, got -1.0"),
        ("mixture means", lambda: gaussian_mixture_velocity(torch.zeros(3), 0.1), ValueError,
         r"shape \(K, D\)"),
        ("mixture weights", lambda: gaussian_mixture_velocity(torch.zeros(2, 2), 0.1,
            weights=[0.2, 0.2]), ValueError, "summing to 1"),
        ("generator", lambda: CategoricalPixelCNN(2, 2, levels=3, channels=4, layers=0).sample(
            2, generator=3), TypeError, "generator must be a torch.Generator or None, got int"),
        ("squeeze odd", lambda: Squeeze((1, 5, 4)), ValueError,
         r"even H and W, got \(1, 5, 4\)"),
        ("CNF samples", lambda: CNF(VelocityMLP(hidden=8), (2,)).sample(0), ValueError,
         "n must be a positive int"),
        ("CNF non-finite", lambda: CNF(VelocityMLP(hidden=8), (2,)).log_prob(
            torch.full((2, 2), math.inf)), ValueError, "must be finite"),
        ("ODE probes", lambda: ode_log_prob(VelocityMLP(hidden=8), torch.zeros(2, 2),
            StandardNormal().log_prob, probes=0), ValueError, "probes must be a positive int"),
        ("float grey levels", lambda: VariationalDequantizer((1, 4, 4), couplings=1).sample(
            torch.zeros(2, 1, 4, 4)), TypeError, "must have dtype"),
        ("actnorm shape", lambda: ActNorm((3, 2, 2))(torch.zeros(2, 2, 2, 2)), ValueError,
         r"shape \(B, 3, 2, 2\), got \(2, 2, 2, 2\)"),
    ]  # fmt: skip


@pytest.mark.parametrize("case", _bad_calls(), ids=lambda c: c[0])
def test_every_public_entry_point_names_what_it_expected(case):
    _, call, error, message = case
    with pytest.raises(error, match=message):
        call()
