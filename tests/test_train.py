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


def _interrupt_at(loss_fn, call):
    """``loss_fn`` that raises :class:`Interrupt` on its ``call``-th call (a killed run)."""
    calls = {"n": 0}

    def interrupted(m, batch):
        calls["n"] += 1
        if calls["n"] == call:
            raise Interrupt
        return loss_fn(m, batch)

    return interrupted


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

    # fresh objects, other initial weights, other RNG history: everything must come from the file
    model, loss_fn, batches = _problem(init_seed=7)
    torch.manual_seed(99)
    next(batches)
    ema = train.EMA(model, 0.9)
    history = train.fit(
        model,
        loss_fn,
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
    model, loss_fn, batches = _problem()
    first = train.load_or_train("reg", model, loss_fn, batches, config={"w": 16}, steps=20)
    assert (tmp_path / "smoke" / "reg.pt").exists()
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    calls = {"n": 0}

    def counting(m, batch):
        calls["n"] += 1
        return loss_fn(m, batch)

    model2, _, batches2 = _problem(init_seed=5)
    again = train.load_or_train("reg", model2, counting, batches2, config={"w": 16}, steps=20)
    assert calls["n"] == 0  # nothing retrained
    assert again.losses == first.losses
    assert all(torch.equal(v, weights[k]) for k, v in model2.state_dict().items())
    with pytest.raises(train.CheckpointMismatch, match="retrain=True"):
        train.load_or_train("reg", model2, counting, batches2, config={"w": 17}, steps=20)
    train.load_or_train("reg", model2, counting, batches2, config={"w": 17}, steps=20, retrain=True)
    assert calls["n"] == 20


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
    train.fit(model, loss_fn, batches, steps=20, lr=1e-2, keep_best=keeper, checkpoint=path)
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
    with pytest.raises(ValueError, match="floating dtype"):
        train.fit(model, loss_fn, batches, steps=5, autocast=torch.int8)


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
