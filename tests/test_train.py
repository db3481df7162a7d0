import math

import pytest
import torch
from torch import nn

from nbutils import train
from nbutils.data import Batches


def _problem(seed=0, init_seed=None):
    """A small regression problem whose loss uses torch's global RNG (like a diffusion loss)."""
    torch.manual_seed(seed)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1
    if init_seed is not None:
        torch.manual_seed(init_seed)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))

    def loss_fn(m, batch):
        xb, yb = batch
        noise = 0.01 * torch.randn_like(xb)  # randomness inside the loss
        return ((m(xb + noise).squeeze(1) - yb) ** 2).mean()

    return model, loss_fn, Batches(x, y, batch_size=8, seed=seed)


def test_fit_lowers_the_loss_and_records_history():
    model, loss_fn, batches = _problem()
    history = train.fit(model, loss_fn, batches, steps=200, lr=1e-2)
    assert history.steps == 200 and history.seconds > 0
    assert sum(history.losses[-20:]) / 20 < 0.2 * sum(history.losses[:20]) / 20
    assert not model.training


class Interrupt(Exception):
    pass


INTERRUPT = {"at": None, "calls": 0}


def interrupted_loss(m, batch):
    """The loss of :func:`_problem`, raising :class:`Interrupt` on the ``INTERRUPT["at"]``-th
    call (a killed run). One function for the killed and the resumed run, as in real life."""
    INTERRUPT["calls"] += 1
    if INTERRUPT["calls"] == INTERRUPT["at"]:
        raise Interrupt
    return _LOSS(m, batch)


def _interrupt_at(loss_fn, call):
    """Arm :func:`interrupted_loss` to stop at its ``call``-th call (None: never)."""
    global _LOSS
    _LOSS = loss_fn
    INTERRUPT.update(at=call, calls=0)
    return interrupted_loss


def test_resume_after_interrupt_equals_uninterrupted(tmp_path):
    model, loss_fn, batches = _problem()
    ema = train.EMA(model, 0.9)
    train.fit(model, loss_fn, batches, steps=30, lr=1e-2, warmup=5, clip=1.0, ema=ema)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    reference_ema = {k: v.clone() for k, v in ema.shadow.items()}

    model, loss_fn, batches = _problem()
    path = tmp_path / "run.pt"
    with pytest.raises(Interrupt):
        train.fit(
            model,
            _interrupt_at(loss_fn, 18),
            batches,
            steps=30,
            lr=1e-2,
            warmup=5,
            clip=1.0,
            ema=train.EMA(model, 0.9),
            checkpoint=path,
            save_every=5,
        )
    assert train.load_checkpoint(path)["step"] == 15

    # fresh objects (the same start: the checkpoint records it), another RNG history, batches
    # drawn ahead: the weights at step 15, the optimiser, the order and the RNG come from the file
    model, loss_fn, batches = _problem()
    torch.manual_seed(99)
    next(batches)
    ema = train.EMA(model, 0.9)
    history = train.fit(
        model,
        _interrupt_at(loss_fn, None),
        batches,
        steps=30,
        lr=1e-2,
        warmup=5,
        clip=1.0,
        ema=ema,
        checkpoint=path,
        save_every=5,
    )
    assert history.steps == 30
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key]), key
    for key, value in ema.shadow.items():
        assert torch.equal(value, reference_ema[key]), key


def test_mismatched_checkpoint_is_refused(tmp_path):
    path = tmp_path / "run.pt"
    model, loss_fn, batches = _problem()
    train.fit(model, loss_fn, batches, steps=5, checkpoint=path, config={"width": 16})
    before = path.read_bytes()
    with pytest.raises(train.CheckpointMismatch, match=r"width: 16 in the checkpoint, 32 now"):
        train.fit(model, loss_fn, batches, steps=5, checkpoint=path, config={"width": 32})
    with pytest.raises(train.CheckpointMismatch, match="lr"):
        train.fit(model, loss_fn, batches, steps=5, lr=0.5, checkpoint=path, config={"width": 16})
    other = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    with pytest.raises(train.CheckpointMismatch, match="architecture"):
        train.fit(other, loss_fn, batches, steps=5, checkpoint=path, config={"width": 16})
    assert path.read_bytes() == before  # refused, and nothing lost


def test_unreadable_checkpoint_is_refused(tmp_path):
    path = tmp_path / "run.pt"
    path.write_bytes(b"garbage")
    model, loss_fn, batches = _problem()
    with pytest.raises(train.CheckpointMismatch, match="could not be read"):
        train.fit(model, loss_fn, batches, steps=5, checkpoint=path)


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
    model, loss_fn, batches = _problem()
    path = tmp_path / "run.pt"
    calls = {"n": 0}

    def exploding(m, batch):
        calls["n"] += 1
        loss = loss_fn(m, batch)
        return loss * float("nan") if calls["n"] == 13 else loss

    with pytest.raises(train.NonFiniteLoss, match=r"nan at step 12.*step 10"):
        train.fit(model, exploding, batches, steps=20, checkpoint=path, save_every=5)
    saved = train.load_checkpoint(path)
    assert saved["step"] == 10
    assert all(torch.isfinite(p).all() for p in model.parameters())  # bad step not applied


def test_load_or_train_reuses_a_matching_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("NBUTILS_CKPT", str(tmp_path))
    monkeypatch.setenv("NBUTILS_PROFILE", "smoke")
    calls = {"n": 0}

    def counting(m, batch):
        calls["n"] += 1
        return base_loss(m, batch)

    model, base_loss, batches = _problem()
    first = train.load_or_train("reg", model, counting, batches, config={"w": 16}, steps=20)
    (saved,) = (tmp_path / "smoke").glob("reg-*.pt")  # named by name and configuration hash
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    assert calls["n"] == 20

    model2, _, batches2 = _problem()
    again = train.load_or_train("reg", model2, counting, batches2, config={"w": 16}, steps=20)
    assert calls["n"] == 20  # nothing retrained
    assert again.losses == first.losses
    assert all(torch.equal(v, weights[k]) for k, v in model2.state_dict().items())
    # another configuration trains afresh into its own file; both stay
    model3, _, batches3 = _problem()
    train.load_or_train("reg", model3, counting, batches3, config={"w": 17}, steps=20)
    assert calls["n"] == 40 and len(list((tmp_path / "smoke").glob("reg-*.pt"))) == 2
    model4, _, batches4 = _problem()
    train.load_or_train("reg", model4, counting, batches4, config={"w": 16}, steps=20, retrain=True)
    assert calls["n"] == 60 and saved.exists()


def test_ema_tracks_the_average():
    model = nn.Linear(1, 1, bias=False)
    ema = train.EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(0.0)
        ema.shadow["weight"].fill_(4.0)
    ema.update(model)
    assert ema.shadow["weight"].item() == 2.0
    with ema.applied(model):
        assert model.weight.item() == 2.0
    assert model.weight.item() == 0.0
    with pytest.raises(ValueError, match="decay"):
        train.EMA(model, decay=1.0)


def test_schedule_warms_up_then_decays_to_zero():
    assert train._schedule(0, 100, 10, True) == pytest.approx(0.1)
    assert train._schedule(9, 100, 10, True) == pytest.approx(1.0)
    assert train._schedule(10, 100, 10, True) == pytest.approx(1.0)
    assert train._schedule(55, 100, 10, True) == pytest.approx(0.5)
    assert train._schedule(100, 100, 10, True) == pytest.approx(0.0, abs=1e-12)
    assert train._schedule(50, 100, 0, False) == 1.0


def test_history_smoothing():
    h = train.History([1.0, 3.0, 5.0, 7.0])
    assert h.smoothed(2) == [1.0, 2.0, 4.0, 6.0]
    assert math.isclose(sum(h.smoothed(10)), 1 + 2 + 3 + 4)


def test_keep_best_keeps_the_weights_of_the_lowest_score(tmp_path):
    model, loss_fn, batches = _problem()
    # the score after steps 5, 10, ..., 25; non-finite scores must never count as the best
    scripted = iter([3.0, 1.0, float("nan"), float("-inf"), 1.5])
    seen = {}

    def score(m):
        assert not m.training and not torch.is_grad_enabled()
        seen[len(seen) * 5 + 5] = {k: v.clone() for k, v in m.state_dict().items()}
        return next(scripted)

    keeper = train.KeepBest(score, every=5)
    path = tmp_path / "run.pt"
    train.fit(model, loss_fn, batches, steps=25, lr=1e-2, keep_best=keeper, checkpoint=path)
    assert keeper.steps == [5, 10, 15, 20, 25] and keeper.best_step == 10
    assert keeper.best_score == 1.0 and math.isnan(keeper.scores[2]) and keeper.scores[3] < 0
    final = {k: v.clone() for k, v in model.state_dict().items()}
    assert not torch.equal(final["0.weight"], seen[10]["0.weight"])  # training went on
    keeper.load_into(model)
    for key, value in seen[10].items():
        assert torch.equal(model.state_dict()[key], value)

    # a finished checkpoint restores the selection without scoring again
    fresh, _, fresh_batches = _problem()
    again = train.KeepBest(lambda m: pytest.fail("scored again"), every=5)
    train.fit(fresh, loss_fn, fresh_batches, steps=25, lr=1e-2, keep_best=again, checkpoint=path)
    assert again.steps == keeper.steps and again.best_step == 10
    again.load_into(fresh)
    assert torch.equal(fresh.state_dict()["0.weight"], seen[10]["0.weight"])


def test_keep_best_refuses_bad_settings_and_early_use(tmp_path):
    with pytest.raises(ValueError, match="positive integer"):
        train.KeepBest(lambda m: 0.0, every=0)
    model, loss_fn, batches = _problem()
    with pytest.raises(RuntimeError, match="no finite score"):
        train.KeepBest(lambda m: 0.0, every=5).load_into(model)
    with pytest.raises(ValueError, match="positive integer"):
        train.KeepBest(lambda m: 0.0, every=True)
    path = tmp_path / "run.pt"
    train.fit(model, loss_fn, batches, steps=10, checkpoint=path, keep_best=train.KeepBest(len, 5))
    # the same run scored at another interval, or not scored, is another configuration
    with pytest.raises(train.CheckpointMismatch, match="keep_best_every"):
        train.fit(
            model, loss_fn, batches, steps=10, checkpoint=path, keep_best=train.KeepBest(len, 2)
        )
    with pytest.raises(train.CheckpointMismatch, match="keep_best_every"):
        train.fit(model, loss_fn, batches, steps=10, checkpoint=path)
    plain = tmp_path / "plain.pt"
    train.fit(model, loss_fn, batches, steps=10, checkpoint=plain)
    with pytest.raises(train.CheckpointMismatch, match="keep_best_every"):
        train.fit(
            model, loss_fn, batches, steps=10, checkpoint=plain, keep_best=train.KeepBest(len, 5)
        )


def test_keep_best_resumes_exactly_and_restarts_fresh(tmp_path):
    def scored():
        """A validation score that depends on the weights, and a loss that checks train mode."""
        model, loss_fn, batches = _problem()
        x_val = torch.linspace(-1, 1, 12).view(4, 3)

        def checked_loss(m, batch):
            assert m.training, "the model must be back in train mode after scoring"
            return loss_fn(m, batch)

        keeper = train.KeepBest(lambda m: m(x_val).square().mean().item(), every=4)
        return model, checked_loss, batches, keeper

    model, loss_fn, batches, keeper = scored()
    train.fit(model, loss_fn, batches, steps=20, lr=1e-2, keep_best=keeper)
    reference = (list(keeper.steps), list(keeper.scores), keeper.best_step)
    reference_best = {k: v.clone() for k, v in keeper.best_state.items()}

    model, loss_fn, batches, keeper = scored()
    path = tmp_path / "run.pt"
    with pytest.raises(Interrupt):
        train.fit(
            model,
            _interrupt_at(loss_fn, 14),
            batches,
            steps=20,
            lr=1e-2,
            keep_best=keeper,
            checkpoint=path,
            save_every=4,
        )
    model, loss_fn, batches, keeper = scored()
    train.fit(
        model,
        _interrupt_at(loss_fn, None),
        batches,
        steps=20,
        lr=1e-2,
        keep_best=keeper,
        checkpoint=path,
    )
    assert (keeper.steps, keeper.scores, keeper.best_step) == reference
    for key, value in reference_best.items():
        assert torch.equal(keeper.best_state[key], value), key
        assert keeper.best_state[key].device.type == "cpu"

    # the same keeper passed to a fresh run forgets the old record
    fresh, fresh_loss, fresh_batches, _ = scored()
    train.fit(fresh, fresh_loss, fresh_batches, steps=8, lr=1e-2, keep_best=keeper)
    assert keeper.steps == [4, 8]


def test_autocast_runs_the_loss_in_lower_precision_and_keeps_float32_weights():
    model, _, batches = _problem()
    seen = []

    def loss_fn(m, batch):
        xb, yb = batch
        out = m(xb).squeeze(1)
        seen.append(out.dtype)
        return ((out.float() - yb) ** 2).mean()

    history = train.fit(model, loss_fn, batches, steps=5, autocast=torch.bfloat16)
    assert set(seen) == {torch.bfloat16} and history.steps == 5
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(ValueError, match=r"None or torch.bfloat16, got torch.float16"):
        train.fit(model, loss_fn, batches, steps=5, autocast=torch.float16)


def test_autocast_enters_the_checkpoint_config_only_when_set(tmp_path):
    model, loss_fn, batches = _problem()
    path = tmp_path / "a.pt"
    train.fit(model, loss_fn, batches, steps=3, checkpoint=path)
    assert "autocast" not in train.load_checkpoint(path)["config"]
    with pytest.raises(train.CheckpointMismatch, match="autocast"):
        train.fit(model, loss_fn, batches, steps=3, checkpoint=path, autocast=torch.bfloat16)


def test_train_with_ema_leaves_the_averaged_weights_in_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("NBUTILS_CKPT", str(tmp_path))
    model, loss_fn, batches = _problem()
    history = train.train_with_ema(
        "stage", model, loss_fn, batches, decay=0.9, config={"w": 16}, steps=30, lr=1e-2
    )
    twin, _, twin_batches = _problem()  # the same start, the same random draws
    ema = train.EMA(twin, 0.9)
    train.fit(twin, loss_fn, twin_batches, steps=30, lr=1e-2, ema=ema)
    assert history.steps == 30
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, ema.shadow[key])


# ----------------------------------------------------------------------------- what is recorded


def _counted(loss_fn, calls):
    def counted(m, batch):
        calls.append(1)
        return loss_fn(m, batch)

    return counted


def _knob_run(knob: str, turned: bool) -> int:
    """Train (or reuse) one small run under one name and config; return the loss calls made.

    ``turned`` changes one thing the config does not mention."""
    import functools

    from nbutils.flows import (
        Flow,
        StandardLogistic,
        StandardNormal,
        checkerboard_partition,
        halves,
        mlp_conditioner,
        nice,
        nll_nats_per_dim,
    )
    from nbutils.nn import VelocityMLP
    from nbutils.paths import logit_normal_times, uniform_times
    from nbutils.rectified import flow_matching_loss

    torch.manual_seed(0)
    data = torch.randn(64, 4) * (2.0 if turned and knob == "data" else 1.0)
    if knob == "time density":
        model = VelocityMLP(dim=4, hidden=8, layers=1)
        times = logit_normal_times if turned else uniform_times
        loss = functools.partial(flow_matching_loss, time_sampler=times)
    else:
        partition = checkerboard_partition if turned and knob == "partition" else halves
        prior = StandardLogistic() if turned and knob == "prior" else StandardNormal()
        conditioner = mlp_conditioner(8, 1)
        model = Flow(nice((4,), couplings=2, conditioner=conditioner, partition=partition), prior)
        if turned and knob == "init":
            with torch.no_grad():
                model.transform.transforms[-1].log_scale.fill_(0.5)
        loss = nll_nats_per_dim
    calls = []
    batches = Batches(data, batch_size=16, seed=0)
    train.load_or_train("knob", model, _counted(loss, calls), batches, config={"c": 1}, steps=3)
    return len(calls)


@pytest.mark.parametrize("knob", ["prior", "partition", "init", "time density", "data"])
def test_a_knob_the_config_does_not_name_never_reuses_a_checkpoint(knob, tmp_path, monkeypatch):
    monkeypatch.setenv("NBUTILS_CKPT", str(tmp_path))
    monkeypatch.setenv("NBUTILS_PROFILE", "smoke")
    assert _knob_run(knob, turned=False) == 3
    assert _knob_run(knob, turned=False) == 0  # unchanged: reused
    assert _knob_run(knob, turned=True) == 3, f"a changed {knob} reused the old checkpoint"
    assert _knob_run(knob, turned=True) == 0


def test_config_values_are_stored_in_a_loadable_form_or_refused_up_front(tmp_path):
    import pathlib

    import numpy as np

    model, loss_fn, batches = _problem()
    config = {"dims": np.prod((2, 3)), "lr": np.float32(0.5), "where": pathlib.Path("a/b")}
    calls = []
    loss = _counted(loss_fn, calls)
    train.fit(model, loss, batches, steps=2, checkpoint=tmp_path / "a.pt", config=config)
    saved = train.load_checkpoint(tmp_path / "a.pt")["config"]  # weights_only load works
    assert (saved["dims"], saved["lr"], saved["where"]) == (6, 0.5, "a/b")
    model, loss_fn, batches = _problem()
    calls = []
    train.fit(
        model,
        _counted(loss_fn, calls),
        batches,
        steps=2,
        checkpoint=tmp_path / "a.pt",
        config=config,
    )
    assert not calls  # the same run, reused

    for bad in ({"act": torch.tanh}, {"cls": nn.ReLU}, {"x": torch.ones(2)}):
        with pytest.raises(TypeError, match=rf"config.{next(iter(bad))} holds"):
            train.fit(model, _counted(loss_fn, calls), batches, steps=2, config=bad)
    assert not calls  # refused before any training


def test_load_or_train_removes_temporaries_of_a_killed_save(tmp_path, monkeypatch):
    monkeypatch.setenv("NBUTILS_CKPT", str(tmp_path))
    monkeypatch.setenv("NBUTILS_PROFILE", "smoke")
    model, loss_fn, batches = _problem()
    train.load_or_train("tmp", model, loss_fn, batches, config={}, steps=2)
    (saved,) = (tmp_path / "smoke").glob("tmp-*.pt")
    stale = saved.with_name(saved.name + "abc123.tmp")
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / "smoke" / "unrelated.pt.tmp"
    other.write_bytes(b"someone else's")
    model, loss_fn, batches = _problem()
    train.load_or_train("tmp", model, loss_fn, batches, config={}, steps=2)
    assert not stale.exists() and other.exists()


def test_resuming_with_other_batches_is_refused(tmp_path):
    model, loss_fn, batches = _problem()
    path = tmp_path / "b.pt"
    train.fit(model, loss_fn, batches, steps=3, checkpoint=path, config={})
    state = train.load_checkpoint(path)["batches"]
    other = Batches(torch.zeros(64, 3), torch.zeros(64), batch_size=4)
    with pytest.raises(
        train.CheckpointMismatch, match="batches of 8; these have 64 rows in batches of 4"
    ):
        other.load_state_dict(state)
