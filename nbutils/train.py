"""The training loop shared by every chapter: :func:`fit` and :func:`load_or_train`.

``fit`` runs ``steps`` optimisation steps of ``loss_fn(model, batch)`` on batches drawn from a
:class:`nbutils.data.Batches`, with a ``tqdm.auto`` progress bar showing the running loss,
Adam(W) with linear warm-up and cosine decay, optional gradient clipping and an exponential
moving average (EMA) of the weights. With ``checkpoint=path`` it saves everything needed to
resume *exactly* (weights, optimiser, schedule, EMA, data order, random-number states, the
loss history), atomically, every ``save_every`` steps and at the end; it resumes from such a
file, and refuses one written for another configuration. A non-finite loss stops training
with :class:`NonFiniteLoss` before the bad step touches the weights or the checkpoint.
With ``keep_best=KeepBest(score, every)`` it also scores the model on held-out data during
training and keeps the best weights (model selection by early stopping).

Randomness inside ``loss_fn`` must come from torch's global generator (``torch.randn`` etc.),
whose state is saved; Python's ``random`` and NumPy are not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import numbers
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from nbutils.data import cache_dir
from nbutils.runtime import profile

CKPT_ENV = "NBUTILS_CKPT"
FORMAT = 1


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; training stopped before applying that step."""


class CheckpointMismatch(RuntimeError):
    """A checkpoint exists for this name but was written for a different configuration."""


@dataclass
class History:
    """What a training run did: the loss at every step and the wall time spent training."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def steps(self) -> int:
        return len(self.losses)

    def smoothed(self, window: int = 50) -> list[float]:
        """Running mean of the loss over the last ``window`` steps."""
        out, total = [], 0.0
        for i, value in enumerate(self.losses):
            total += value - (self.losses[i - window] if i >= window else 0.0)
            out.append(total / min(i + 1, window))
        return out


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

    Passed to :func:`fit` as ``keep_best``, it calls ``score(model)`` (lower is better, e.g. a
    validation loss) with the model in eval mode and without gradients after every ``every``
    steps and after the last one, records the curve, and keeps a CPU copy of the weights with
    the lowest score. Its state is saved in ``fit``'s checkpoints, so a resumed or reloaded run
    still knows its best weights; a run that starts from scratch starts a fresh record. The time
    spent scoring counts as training time. It scores and keeps the raw weights, not an EMA's.

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


# ----------------------------------------------------------------------------- checkpoints


def config_hash(config: dict) -> str:
    """A short, stable hash of a JSON-serialisable configuration."""
    try:
        text = json.dumps(config, sort_keys=True, default=str)
    except TypeError as err:
        raise TypeError(f"config must be JSON-serialisable: {err}") from err
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def architecture(model: nn.Module) -> dict[str, list[int]]:
    """Names and shapes of a model's state: what a checkpoint must match to be loaded."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def save_atomic(state: dict, path: Path) -> None:
    """Write ``state`` with torch.save to a temporary file, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: Path, map_location=None) -> dict:
    """Load a checkpoint with ``weights_only=True``; a clear error if it is unreadable."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for a truncated or foreign file
        raise CheckpointMismatch(
            f"checkpoint {path} could not be read ({type(err).__name__}: {err}); "
            "delete it to retrain"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointMismatch(f"{path} is not a checkpoint written by nbutils.train.fit")
    return state


def _describe_mismatch(saved: dict, config: dict) -> str:
    keys = sorted(set(saved) | set(config))
    absent = "<absent>"
    diffs = [
        f"{k}: {saved.get(k, absent)!r} in the checkpoint, {config.get(k, absent)!r} now"
        for k in keys
        if saved.get(k, absent) != config.get(k, absent)
    ]
    return "; ".join(diffs[:6]) + (" ..." if len(diffs) > 6 else "")


def check_compatible(state: dict, path: Path, model: nn.Module, config: dict) -> None:
    """Raise CheckpointMismatch unless the checkpoint was written for this config and model."""
    fix = f"Delete {path}, choose another name, or pass retrain=True."
    if state["config_hash"] != config_hash(config):
        raise CheckpointMismatch(
            f"checkpoint {path} was trained with another configuration "
            f"({_describe_mismatch(state['config'], config)}). {fix}"
        )
    want, got = architecture(model), state["architecture"]
    if want != got:
        diff = [k for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)][:4]
        raise CheckpointMismatch(
            f"checkpoint {path} holds another architecture (differs in {', '.join(diff)}). {fix}"
        )


# ----------------------------------------------------------------------------- training


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _schedule(step: int, steps: int, warmup: int, cosine: bool) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to 0."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if not cosine:
        return 1.0
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class _Run:
    """Everything a checkpoint restores, gathered for one call of :func:`fit`."""

    model: nn.Module
    loss_fn: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    batches: object
    ema: EMA | None
    config: dict
    history: History
    keep_best: KeepBest | None = None
    step: int = 0

    def state(self) -> dict:
        return {
            "format": FORMAT,
            "config": self.config,
            "config_hash": config_hash(self.config),
            "architecture": architecture(self.model),
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "batches": self.batches.state_dict() if hasattr(self.batches, "state_dict") else None,
            "rng": _rng_state(),
            "losses": torch.tensor(self.history.losses, dtype=torch.float64),
            "seconds": self.history.seconds,
            "torch": str(torch.__version__),
            "keep_best": self.keep_best.state_dict() if self.keep_best else None,
        }

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema and state["ema"]:
            self.ema.load_state_dict(state["ema"])
        if state["batches"] is not None:
            self.batches.load_state_dict(state["batches"])
        _set_rng_state(state["rng"])
        if self.keep_best is not None and state.get("keep_best") is not None:
            self.keep_best.load_state_dict(state["keep_best"])
        self.history = History(state["losses"].tolist(), state["seconds"])
        self.step = state["step"]


def fit(
    model: nn.Module,
    loss_fn,
    batches,
    *,
    steps: int,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    warmup: int = 0,
    cosine: bool = True,
    clip: float | None = None,
    ema: EMA | None = None,
    keep_best: KeepBest | None = None,
    checkpoint: str | Path | None = None,
    config: dict | None = None,
    save_every: int | None = None,
    desc: str | None = None,
) -> History:
    """Train ``model`` for ``steps`` steps of ``loss_fn(model, next(batches))``.

    Args:
        model: the network; trained in place (``model.train()`` during the run).
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        batches: an iterator of batches; a :class:`nbutils.data.Batches` makes resume exact.
        steps: total number of optimisation steps (a resumed run continues up to it).
        lr, weight_decay: AdamW settings. warmup: linear warm-up steps. cosine: decay lr to 0.
        clip: clip the global gradient norm to this value.
        ema: an :class:`EMA` updated after every step.
        keep_best: a :class:`KeepBest` that scores the model during training.
        checkpoint: file to save to and resume from.
        config: what the checkpoint must match (hashed); defaults to the training settings.
        save_every: steps between checkpoints (default: about ten per run).
        desc: label of the progress bar.

    Returns:
        The :class:`History` of the whole run, including steps done before a resume.

    Raises:
        NonFiniteLoss: the loss was NaN or infinite; the last good checkpoint is kept.
        CheckpointMismatch: ``checkpoint`` exists but belongs to another configuration.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    settings = {
        "steps": steps,
        "lr": lr,
        "weight_decay": weight_decay,
        "warmup": warmup,
        "cosine": cosine,
        "clip": clip,
        "ema": ema.decay if ema else None,
    }
    if keep_best is not None:  # only then, so that other checkpoints keep their hashes
        settings["keep_best_every"] = keep_best.every
    config = {**settings, **(config or {})}
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _schedule(s, steps, warmup, cosine)
    )
    run = _Run(model, loss_fn, optimizer, scheduler, batches, ema, config, History(), keep_best)
    path = Path(checkpoint) if checkpoint is not None else None
    if keep_best is not None:
        keep_best.reset()  # a fresh run starts a fresh record; a checkpoint restores its own
    if path is not None and path.exists():
        state = load_checkpoint(path, map_location=_device_of(model))
        check_compatible(state, path, model, config)
        run.restore(state)
    _train(run, steps, clip, path, save_every or max(1, steps // 10), desc or "train")
    return run.history


def _device_of(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _train(run: _Run, steps: int, clip, path: Path | None, save_every: int, desc: str) -> None:
    model, last_saved = run.model, run.step
    model.train()
    bar = tqdm(total=steps, initial=run.step, desc=desc, leave=True, mininterval=0.5)
    started = time.perf_counter()
    try:
        while run.step < steps:
            loss = run_step(run, clip)
            if not math.isfinite(loss):
                where = (
                    f"last good checkpoint: {path}, step {last_saved}" if path else "no checkpoint"
                )
                raise NonFiniteLoss(
                    f"loss became {loss} at step {run.step}; the step was not applied ({where}). "
                    "Lower the learning rate, add gradient clipping, or check the inputs."
                )
            run.history.losses.append(loss)
            run.step += 1
            bar.update(1)
            if run.step % 25 == 0 or run.step == steps:
                recent = run.history.losses[-25:]
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4g}")
            keeper = run.keep_best
            if keeper is not None and (run.step % keeper.every == 0 or run.step == steps):
                keeper(run.step, model)
            if path is not None and (run.step % save_every == 0 or run.step == steps):
                run.history.seconds += time.perf_counter() - started
                started = time.perf_counter()
                save_atomic(run.state(), path)
                last_saved = run.step
    finally:
        run.history.seconds += time.perf_counter() - started
        bar.close()
        model.eval()


def run_step(run: _Run, clip: float | None) -> float:
    """One optimisation step; returns the loss and applies nothing if it is not finite."""
    loss = run.loss_fn(run.model, next(run.batches))
    value = loss.item()
    if not math.isfinite(value):
        return value
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), clip)
    run.optimizer.step()
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update(run.model)
    return value


def checkpoint_root() -> Path:
    """Where :func:`load_or_train` keeps checkpoints: ``$NBUTILS_CKPT`` or the cache folder."""
    root = os.environ.get(CKPT_ENV)
    return Path(root).expanduser() if root else cache_dir() / "checkpoints"


def load_or_train(
    name: str,
    model: nn.Module,
    loss_fn,
    batches,
    *,
    config: dict,
    steps: int,
    retrain: bool = False,
    **fit_kwargs,
) -> History:
    """Train ``model`` or reuse the checkpoint ``<root>/<profile>/<name>.pt`` if it matches.

    The checkpoint is reused when its configuration hash (``config`` plus the training
    settings) and the model's architecture match; an unfinished one is resumed; one written
    for another configuration is refused with :class:`CheckpointMismatch` (or replaced when
    ``retrain=True``). The model ends in eval mode with the trained weights.

    Args:
        name: file stem, e.g. ``"made"``.
        config: everything that defines the model and its data (sizes, seeds, ...).
        steps, fit_kwargs: passed to :func:`fit`.

    Returns:
        The run's :class:`History` (restored from the checkpoint when training was skipped).
    """
    if not name or any(c in name for c in "/\\"):
        raise ValueError(f"name must be a plain file stem, got {name!r}")
    path = checkpoint_root() / profile() / f"{name}.pt"
    if retrain and path.exists():
        path.unlink()
    return fit(
        model,
        loss_fn,
        batches,
        steps=steps,
        checkpoint=path,
        config={"name": name, **config},
        **fit_kwargs,
    )
