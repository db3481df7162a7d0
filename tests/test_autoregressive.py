"""Mathematical facts about the autoregressive models (chapter 01), on tiny problems in float64."""

import itertools
import math

import pytest
import torch
from torch.autograd.functional import jacobian

from nbutils.autoregressive import FVSBN, NADE, dependency_map, nll_nats_per_image
from nbutils.joint import JointModel, classify
from nbutils.made import MADE, ensemble_log_prob
from nbutils.nn import causal_mask
from nbutils.pixelcnn import GatedPixelCNN, PixelCNN

NAMES = ("fvsbn", "nade", "made", "made_direct", "pixelcnn", "gated")


def make(name, vector=4, image=(2, 2), num_classes=0, seed=0):
    """A small model of `vector` bits (dense models) or an `image` (PixelCNNs), randomised."""
    torch.manual_seed(seed)
    h, w = image
    model = {
        "fvsbn": lambda: FVSBN(vector, num_classes=num_classes),
        "nade": lambda: NADE(vector, hidden=8, num_classes=num_classes),
        "made": lambda: MADE(vector, (8, 8), num_masks=3, order="random", num_classes=num_classes),
        "made_direct": lambda: MADE(
            vector, (8,), num_masks=3, order="random", num_classes=num_classes, direct=True
        ),
        "pixelcnn": lambda: PixelCNN(
            h, w, 8, layers=2, kernel=3, first_kernel=3, num_classes=num_classes
        ),  # fmt: skip
        "gated": lambda: GatedPixelCNN(
            h, w, 8, layers=2, kernel=3, first_kernel=3, num_classes=num_classes
        ),  # fmt: skip
    }[name]().double()
    with torch.no_grad():  # move away from the (near-uniform) initialisation
        for p in model.parameters():
            p.add_(0.7 * torch.randn_like(p))
    return model


def all_configurations(shape) -> torch.Tensor:
    """Every binary tensor of the given event shape: (2^D, *shape), float64."""
    d = math.prod(shape)
    rows = torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)), dtype=torch.float64)
    return rows.view(-1, *shape)


def logit_jacobian(model, x, y=None) -> torch.Tensor:
    """d logits / d x for one input x (*shape): (D, D), row i = conditional i."""
    shape = model.event_shape
    labels = None if y is None else torch.tensor([y])
    return jacobian(lambda z: model.logits(z.view(1, *shape), labels).flatten(), x.flatten())


def rank_of(model) -> torch.Tensor:
    rank = torch.empty_like(model.order)
    rank[model.order] = torch.arange(model.dim)
    return rank


# ----------------------------------------------------------------------------- autoregressive


@pytest.mark.parametrize("name", NAMES)
def test_conditional_i_sees_only_earlier_pixels(name):
    model = make(name, vector=6, image=(3, 4), num_classes=3)
    masks = range(3) if name.startswith("made") else range(1)
    for k in masks:
        if name.startswith("made"):
            model.set_mask(k)
        x = torch.rand(model.event_shape, dtype=torch.float64)  # any real x: logits are smooth
        jac = logit_jacobian(model, x, y=1)
        rank = rank_of(model)
        future = rank[None, :] >= rank[:, None]  # (i, j): j is i itself or after i
        assert jac[future].abs().max() == 0.0, "a conditional sees itself or a later pixel"
        assert jac[~future].abs().sum() > 0


def test_made_orders_are_resampled_and_reproducible():
    model = MADE(6, (10,), num_masks=4, order="random", seed=3)
    orders = []
    for _ in range(4):
        orders.append(model.order.clone())
        model.resample_masks()
    assert int(model.mask_index) == 0 and torch.equal(model.order, orders[0])  # cycled back
    assert len({tuple(o.tolist()) for o in orders}) > 1
    model.set_mask(2)
    assert torch.equal(model.order, orders[2])
    natural = MADE(6, (10,), num_masks=4, order="natural")
    natural.resample_masks()
    assert torch.equal(natural.order, torch.arange(6))


def test_dense_models_see_the_whole_past():
    for name in ("fvsbn", "nade"):
        model = make(name, vector=5)
        jac = logit_jacobian(model, torch.rand(5, dtype=torch.float64))
        assert (jac.tril(-1)[torch.ones(5, 5).tril(-1).bool()] != 0).all()


def test_type_a_mask_hides_the_centre_and_type_b_keeps_it():
    a, b = causal_mask(3, 3, "A"), causal_mask(3, 3, "B")
    assert a[1, 1] == 0 and b[1, 1] == 1
    assert torch.equal(a, torch.tensor([[1.0, 1, 1], [1, 0, 0], [0, 0, 0]]))
    assert torch.equal(b - a, torch.tensor([[0.0, 0, 0], [0, 1, 0], [0, 0, 0]]))


def test_plain_pixelcnn_has_a_blind_spot_and_gated_does_not():
    shape = (4, 4)
    plain = PixelCNN(*shape, channels=8, layers=3, kernel=3, first_kernel=5).double()
    gated = GatedPixelCNN(*shape, channels=8, layers=3, kernel=3, first_kernel=5).double()
    past = torch.ones(16, 16).tril(-1).bool()  # raster order
    x = torch.rand(1, 4, 4, dtype=torch.float64)
    assert (logit_jacobian(plain, x)[past] == 0).any()  # e.g. pixel (2, 3) for (3, 0)
    assert (logit_jacobian(plain, x)[12, 11] == 0).all()
    assert (logit_jacobian(gated, x)[past] != 0).all()


def test_dependency_map_marks_exactly_the_visible_pixels():
    model = make("pixelcnn", image=(4, 4))
    jac = logit_jacobian(model, torch.rand(1, 4, 4, dtype=torch.float64))
    for i in (0, 5, 12, 15):
        seen = dependency_map(model, i).flatten() > 0
        assert torch.equal(seen, jac[i] != 0)


@pytest.mark.parametrize("cls", [PixelCNN, GatedPixelCNN])
def test_cropped_sampling_step_equals_full_logits(cls):
    torch.manual_seed(1)
    model = cls(11, 5, channels=6, layers=2, kernel=3, first_kernel=3, num_classes=2).double()
    assert model.reach == (1 + 2 * 1 if cls is PixelCNN else 1 + 2 * 1 + 1)  # 3 or 4 rows up
    x = torch.bernoulli(torch.full((3, 1, 11, 5), 0.4, dtype=torch.float64))
    y = torch.tensor([0, 1, 1])
    full = model.logits(x, y).flatten(1)
    for i in range(model.dim):
        step = model._logit_at(None, x.flatten(1), i, y)
        torch.testing.assert_close(step, full[:, i], rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("name", NAMES)
def test_probabilities_sum_to_one(name):
    model = make(name)
    xs = all_configurations(model.event_shape)
    assert model.log_prob(xs).exp().sum().item() == pytest.approx(1.0, abs=1e-10)
    conditional = make(name, num_classes=3)
    for label in range(3):
        y = torch.full((len(xs),), label)
        assert conditional.log_prob(xs, y).exp().sum().item() == pytest.approx(1.0, abs=1e-10)


def total_variation(samples: torch.Tensor, log_probs: torch.Tensor) -> float:
    """TV distance between the empirical law of binary samples (N, D) and exact probabilities."""
    d = samples.shape[1]
    codes = (samples.long() * (2 ** torch.arange(d - 1, -1, -1))).sum(1)
    empirical = torch.bincount(codes, minlength=2**d).double() / len(samples)
    return 0.5 * (empirical - log_probs.exp()).abs().sum().item()


@pytest.mark.parametrize("name", NAMES)
def test_samples_follow_the_model(name):
    model = make(name)
    xs = all_configurations(model.event_shape)  # in binary counting order
    samples = model.sample(20_000, generator=torch.Generator().manual_seed(0))
    assert set(samples.unique().tolist()) <= {0.0, 1.0}
    assert total_variation(samples.flatten(1), model.log_prob(xs)) < 0.03


@pytest.mark.parametrize("name", ["fvsbn", "nade", "pixelcnn", "gated"])
def test_completion_of_the_second_half_is_exact(name):
    model = make(name)  # raster order: the known first half precedes the unknown rest
    first_half = torch.tensor([1.0, 0.0], dtype=torch.float64)
    known = torch.tensor([True, True, False, False]).view(1, *model.event_shape)
    x = torch.zeros(20_000, 4, dtype=torch.float64)
    x[:, :2] = first_half
    out = model.complete(x.view(-1, *model.event_shape), known, generator=torch.Generator())
    out = out.flatten(1)
    assert torch.equal(out[:, :2], x[:, :2])
    rest = all_configurations((2,))
    joint = model.log_prob(
        torch.cat([first_half.expand(4, 2), rest], 1).view(4, *model.event_shape)
    )
    codes = (out[:, 2:].long() * torch.tensor([2, 1])).sum(1)
    empirical = torch.bincount(codes, minlength=4).double() / len(out)
    exact = torch.softmax(joint, 0)  # p(rest | first half)
    assert 0.5 * (empirical - exact).abs().sum().item() < 0.03


# ----------------------------------------------------------------------------- MADE ensemble


def test_mask_ensemble_averages_probabilities_not_logits():
    torch.manual_seed(2)  # a fixed draw of strong weights, so that the masks disagree
    model = MADE(3, (6,), num_masks=4, order="random").double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(4.0 * torch.randn_like(p))
    model.set_mask(1)
    xs = all_configurations((3,))
    per_mask = []
    for k in range(4):
        model.set_mask(k)
        per_mask.append(model.log_prob(xs).exp())
    model.set_mask(1)
    ensemble = ensemble_log_prob(model, xs)
    assert int(model.mask_index) == 1  # restored
    torch.testing.assert_close(ensemble.exp(), torch.stack(per_mask).mean(0))
    assert ensemble.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    # the shortcut: average the logits over masks, then score - not a distribution
    logits = []
    for k in range(4):
        model.set_mask(k)
        logits.append(model.logits(xs))
    mean_logits = torch.stack(logits).mean(0)
    shortcut = -torch.nn.functional.binary_cross_entropy_with_logits(
        mean_logits, xs, reduction="none"
    ).sum(1)
    assert abs(shortcut.exp().sum().item() - 1.0) > 0.1  # 0.44 here
    assert not torch.allclose(shortcut, ensemble)


# ----------------------------------------------------------------------------- joint p(x, y)


@pytest.mark.parametrize("name", ["made", "fvsbn", "pixelcnn"])
def test_bayes_classifier_matches_brute_force(name):
    joint = JointModel(make(name, num_classes=10)).double()
    with torch.no_grad():
        joint.prior_logits.copy_(torch.randn(10))
    xs = all_configurations(joint.model.event_shape)
    table = torch.stack(
        [joint.log_prob(xs, torch.full((len(xs),), k)) for k in range(10)], dim=1
    ).exp()  # p(x, y): (16, 10)
    assert table.sum().item() == pytest.approx(1.0, abs=1e-10)
    posterior = classify(joint, xs).exp()
    torch.testing.assert_close(posterior.sum(1), torch.ones(len(xs), dtype=torch.float64))
    torch.testing.assert_close(posterior, table / table.sum(1, keepdim=True))
    torch.testing.assert_close(joint.classify(xs), classify(joint, xs))


def test_joint_sampling_draws_labels_from_the_prior():
    joint = JointModel(make("fvsbn", num_classes=10)).double()
    with torch.no_grad():
        joint.prior_logits.copy_(torch.tensor([3.0] + [0.0] * 9))
    x, y = joint.sample(2000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2000, 4) and y.shape == (2000,)
    p0 = joint.log_prior().exp()[0].item()  # about 0.69
    assert (y == 0).double().mean().item() == pytest.approx(p0, abs=0.04)


# ----------------------------------------------------------------------------- contracts


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_gives_a_clear_error(name):
    model = make(name)
    shape = model.event_shape
    with pytest.raises(ValueError, match="binary"):
        model.log_prob(torch.full((2, *shape), 0.5, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating-point tensor"):
        model.log_prob(torch.ones(2, *shape, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        model.log_prob(torch.ones(2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="binary"):
        model.complete(torch.full((2, *shape), 0.3, dtype=torch.float64), torch.ones(shape))
    with pytest.raises(ValueError, match="unconditional"):
        model.log_prob(torch.ones(2, *shape, dtype=torch.float64), torch.zeros(2, dtype=torch.long))
    conditional = make(name, num_classes=3)
    with pytest.raises(TypeError, match="labels"):
        conditional.log_prob(torch.ones(2, *shape, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        conditional.log_prob(torch.ones(2, *shape, dtype=torch.float64), torch.tensor([0, 3]))


def test_check_binary_message_names_what_came():
    with pytest.raises(ValueError, match=r"range \[0, 0.7\]"):
        FVSBN(2).log_prob(torch.tensor([[0.0, 0.7]]))


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_receives_a_gradient(name):
    joint = JointModel(make(name, vector=12, image=(3, 4), num_classes=10)).double()
    x = torch.bernoulli(torch.full((40, *joint.model.event_shape), 0.5, dtype=torch.float64))
    y = torch.arange(40) % 10
    joint.train()
    nll_nats_per_image(joint, (x, y)).backward()
    for pname, p in joint.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_nll_nats_per_image_ignores_labels_for_unconditional_models():
    model = make("made").eval()
    x = torch.bernoulli(torch.full((5, 4), 0.5, dtype=torch.float64))
    loss = nll_nats_per_image(model, (x, torch.zeros(5, dtype=torch.long)))
    assert loss.item() == pytest.approx(-model.log_prob(x).mean().item())
    assert int(model.mask_index) == 0  # eval mode: no mask change


def test_mnist_sized_models_have_the_expected_parameter_counts():
    d = 784
    assert sum(p.numel() for p in FVSBN().parameters()) == d * (d - 1) // 2 + d
    assert (
        sum(p.numel() for p in NADE(hidden=500).parameters()) == 500 * (d - 1) + 500 + d * 500 + d
    )
    x = torch.zeros(2, 1, 28, 28)
    for model in (FVSBN(), NADE(hidden=10), MADE(hidden=(20,)), PixelCNN(channels=4, layers=1)):
        assert model.logits(x).shape == x.shape


@pytest.mark.parametrize("name", NAMES)
def test_init_marginals_sets_the_output_bias(name):
    model = make(name)
    probs = torch.tensor([0.1, 0.5, 0.9, 0.3], dtype=torch.float64).view(model.event_shape)
    model.init_marginals(probs)
    bias = model.output_bias()
    expected = torch.logit(probs).flatten()
    if bias.numel() == 1:  # PixelCNNs: one bias shared by all pixels
        expected = torch.logit(probs.mean()).view(1)
    torch.testing.assert_close(bias.detach(), expected)
    fvsbn = FVSBN(4).double()  # zero weights: exactly the independent-pixel model
    fvsbn.init_marginals(probs.flatten())
    torch.testing.assert_close(
        torch.sigmoid(fvsbn.logits(torch.ones(1, 4).double()))[0], probs.flatten()
    )


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_stacked_masked_convolutions_see_exactly_the_wedge_of_note_01(k):
    """After k 3x3 masked convolutions (the first of type A), the output at (r, c) depends on
    (r - m, c + j) iff 1 <= m <= k and -k <= j <= m, or m = 0 and -k <= j <= -1 (ar-wedge):
    the pixels with j > m >= 1 (above right of the diagonal) are never seen."""
    torch.manual_seed(0)
    model = PixelCNN(height=15, width=15, channels=8, layers=k - 1, kernel=3, first_kernel=3)
    seen = dependency_map(model, 7 * 15 + 7).view(15, 15) > 0
    m = 7 - torch.arange(15)[:, None]  # rows above the centre
    j = torch.arange(15)[None, :] - 7  # columns to its right
    wedge = ((m >= 1) & (m <= k) & (j >= -k) & (j <= m)) | ((m == 0) & (j >= -k) & (j <= -1))
    assert torch.equal(seen, wedge)
    assert not seen[6, 9] and not seen[7 - k, 7 + k + 1]  # (r-1, c+2) and past the diagonal
