"""Loading what another chapter trained: the finished checkpoint with the configuration asked
for, rebuilt from its recorded configuration, with the weights that chapter evaluates with
(EMA, else the kept best, else the last), and clear errors."""

import pytest
import torch
from torch import nn

from nbutils import train
from nbutils.checkpoint import CheckpointMismatch
from nbutils.data import Batches
from nbutils.trained import finished_checkpoints, load_trained


@pytest.fixture(autouse=True)
def _folder(tmp_path, monkeypatch):
    monkeypatch.setenv("NBUTILS_CKPT", str(tmp_path))
    monkeypatch.setenv("NBUTILS_PROFILE", "smoke")


def net(config):
    return nn.Sequential(nn.Linear(3, config["width"]), nn.Tanh(), nn.Linear(config["width"], 1))


def problem(width=8, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5])

    def loss(m, batch):
        return ((m(batch[0]).squeeze(1) - batch[1]) ** 2).mean()

    return net({"width": width}), loss, Batches(x, y, batch_size=8, seed=seed)


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_ema_weights_of_the_matching_finished_run_are_loaded():
    model, loss, batches = problem()
    config = {"width": 8, "kind": [1, 2]}
    train.train_with_ema("reg", model, loss, batches, decay=0.9, config=config, steps=30, lr=1e-2)
    other, loss2, batches2 = problem(width=4)
    train.load_or_train("reg", other, loss2, batches2, config={"width": 4}, steps=10, lr=1e-2)
    found = load_trained("reg", net, match={"width": 8, "kind": (1, 2)})  # a tuple: the stored list
    assert found.weights == "ema" and found.config["width"] == 8 and found.history.steps == 30
    assert same(found.model.state_dict(), model.state_dict())  # train_with_ema left the EMA in
    assert not found.model.training
    plain = load_trained("reg", net, match={"width": 4})
    assert plain.weights == "last" and same(plain.model.state_dict(), other.state_dict())
    assert load_trained("reg", net, match={"width": 5}) is None
    assert load_trained("nothing_here", net) is None


def test_the_kept_best_weights_are_loaded_and_unfinished_runs_skipped(tmp_path):
    model, loss, batches = problem()
    scores = iter([2.0, 1.0, 3.0])
    keeper = train.KeepBest(lambda m: next(scores), every=5)
    train.load_or_train("sel", model, loss, batches, config={"width": 8}, steps=15, lr=1e-2,
                        keep_best=keeper)  # fmt: skip
    found = load_trained("sel", net)
    keeper.load_into(model)
    assert found.weights == "best" and same(found.model.state_dict(), model.state_dict())

    (path,) = (tmp_path / "smoke").glob("sel-*.pt")
    state = torch.load(path, weights_only=True)
    state["step"] = 7  # as if the run were interrupted
    torch.save(state, path)
    assert finished_checkpoints("sel") == [] and load_trained("sel", net) is None


def test_a_newer_variant_of_another_architecture_is_skipped(tmp_path):
    import os

    model, loss, batches = problem(width=8)
    train.load_or_train("reg", model, loss, batches, config={"width": 8}, steps=5)
    other, loss2, batches2 = problem(width=4)
    train.load_or_train("reg", other, loss2, batches2, config={"width": 4}, steps=5)
    older, newer = sorted((tmp_path / "smoke").glob("reg-*.pt"), key=lambda p: p.stat().st_mtime)
    os.utime(older, (1, 1))  # make the order certain
    found = load_trained("reg", lambda c: net({"width": 8}))  # builds only the width-8 model
    assert found.config["width"] == 8 and same(found.model.state_dict(), model.state_dict())


def test_bad_names_and_a_wrong_architecture_are_clear_errors(tmp_path):
    model, loss, batches = problem()
    train.load_or_train("reg", model, loss, batches, config={"width": 8}, steps=5)
    with pytest.raises(CheckpointMismatch, match="must make the trained architecture"):
        load_trained("reg", lambda c: net({"width": c["width"] + 1}))
    with pytest.raises(ValueError, match="file stem"):
        load_trained("../reg", net)
    with pytest.raises(TypeError, match="match"):
        load_trained("reg", net, match={"width": object()})
    (tmp_path / "smoke" / "reg-0123456789ab.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatch, match="could not be read"):
        load_trained("reg", net)
