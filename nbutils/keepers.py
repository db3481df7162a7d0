"""Copies of the weights that :func:`nbutils.train.fit` keeps beside the model: an exponential
moving average (:class:`EMA`) and the best weights on held-out data (:class:`KeepBest`).

Both save and restore their state inside ``fit``'s checkpoints, so a resumed run is exact.
"""

from __future__ import annotations

import contextlib
import math
import numbers

import torch
from torch import nn

from nbutils.checkpoint import CheckpointMismatch


class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers.

    ``shadow = decay * shadow + (1 - decay) * current`` after every step; evaluate with the
    averaged weights inside ``with ema.applied(model): ...``.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                self.shadow[key].lerp_(value, 1.0 - self.decay)
            else:
                self.shadow[key].copy_(value)

    @contextlib.contextmanager
    def applied(self, model: nn.Module):
        """Temporarily load the averaged weights into ``model``."""
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(saved)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        for key, value in state["shadow"].items():
            self.shadow[key].copy_(value)


class KeepBest:
    """Model selection during training: score the model every ``every`` steps, keep the best.

    Passed to :func:`nbutils.train.fit` as ``keep_best``, it calls ``score(model)`` (lower is
    better, e.g. a validation loss) with the model in eval mode and without gradients after
    every ``every`` steps and after the last one, records the curve, and keeps a CPU copy of
    the weights with the lowest score. Its state is saved in ``fit``'s checkpoints, so a
    resumed or reloaded run still knows its best weights; a run that starts from scratch starts
    a fresh record. The time spent scoring counts as training time. It scores and keeps the raw
    weights, not an EMA's.

    Only ``every`` enters the checkpoint's configuration hash: put what defines the score (its
    data, their size) in ``fit``'s ``config``, so that a checkpoint selected on other data is
    refused rather than reused.

    Args:
        score: ``score(model) -> float``; a non-finite score is recorded but never best.
        every: steps between scores (at least 1).
    """

    def __init__(self, score, every: int):
        if isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        self.score, self.every = score, int(every)
        self.reset()

    def reset(self) -> None:
        """Forget every score and the best weights (``fit`` does this for a fresh run)."""
        self.steps: list[int] = []
        self.scores: list[float] = []
        self.best_step: int | None = None
        self.best_score = math.inf
        self.best_state: dict | None = None

    @torch.no_grad()
    def __call__(self, step: int, model: nn.Module) -> float:
        """Score ``model`` after ``step`` steps; remember its weights if they are the best."""
        was_training = model.training
        model.eval()
        try:
            value = float(self.score(model))
        finally:
            model.train(was_training)
        self.steps.append(step)
        self.scores.append(value)
        if math.isfinite(value) and value < self.best_score:
            self.best_step, self.best_score = step, value
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return value

    def load_into(self, model: nn.Module) -> nn.Module:
        """Load the best weights into ``model`` (on its own device) and return it."""
        if self.best_state is None:
            raise RuntimeError(
                "KeepBest has no finite score: pass it to fit(keep_best=...) (which scores at "
                f"least after the last step); scores so far: {self.scores}"
            )
        model.load_state_dict(self.best_state)
        return model

    def state_dict(self) -> dict:
        return {
            "every": self.every,
            "steps": torch.tensor(self.steps, dtype=torch.int64),
            "scores": torch.tensor(self.scores, dtype=torch.float64),
            "best_step": self.best_step,
            "best_score": self.best_score,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["every"] != self.every:
            raise CheckpointMismatch(
                f"the checkpoint scored every {state['every']} steps, this KeepBest every "
                f"{self.every}"
            )
        self.steps, self.scores = state["steps"].tolist(), state["scores"].tolist()
        self.best_step, self.best_score = state["best_step"], state["best_score"]
        best = state["best_state"]  # kept on the CPU, whatever device the checkpoint went to
        self.best_state = None if best is None else {k: v.cpu() for k, v in best.items()}
