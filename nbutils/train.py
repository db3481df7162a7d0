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

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from nbutils.checkpoint import (  # noqa: F401 (CheckpointMismatch is part of this module's face)
    FORMAT,
    CheckpointMismatch,
    architecture,
    canonical_config,
    check_compatible,
    config_hash,
    describe_callable,
    load_checkpoint,
    model_digest,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from nbutils.keepers import EMA, KeepBest
from nbutils.runtime import autocast_dtype, checkpoint_root, profile

__all__ = [
    "EMA",
    "CheckpointMismatch",
    "History",
    "KeepBest",
    "NonFiniteLoss",
    "fit",
    "load_or_train",
    "train_with_ema",
]


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; training stopped before applying that step."""


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


# ----------------------------------------------------------------------------- training


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
    autocast: torch.dtype | None = None
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
            "rng": rng_state(),
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
        set_rng_state(state["rng"])
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
    autocast: torch.dtype | None = None,
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
        autocast: run ``loss_fn`` (forward pass and loss) under ``torch.autocast`` with this
            dtype, e.g. ``torch.bfloat16`` on a GPU; the backward pass and the optimiser step
            stay outside it, and the weights stay in float32. On a GPU without native bfloat16
            (a T4) it falls back to float32 with a warning, and records float32 in the config.
        checkpoint: file to save to and resume from, or a function of the configuration's
            hash that returns that file.
        config: what the checkpoint must match (hashed), beside the training settings and what
            ``fit`` records itself: a digest of the model as it starts (structure, weights,
            buffers), of the loss function's code and of a :class:`Batches`' data. Its
            values must be JSON-like (numbers, strings, lists, dicts); others are refused.
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
    if autocast is not None:
        if autocast is not torch.bfloat16:  # float16 would need a gradient scaler
            raise ValueError(f"autocast must be None or torch.bfloat16, got {autocast!r}")
        autocast = autocast_dtype(autocast, _device_of(model))  # float32 where bf16 is not native
    if autocast is not None:
        settings["autocast"] = str(autocast)
    config = {**settings, **canonical_config(config or {}), **_recorded(model, loss_fn, batches)}
    optimizer = adamw(model, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _schedule(s, steps, warmup, cosine)
    )
    run = _Run(
        model, loss_fn, optimizer, scheduler, batches, ema, config, History(), keep_best, autocast
    )
    path = _checkpoint_path(checkpoint, config)
    if keep_best is not None:
        keep_best.reset()  # a fresh run starts a fresh record; a checkpoint restores its own
    if path is not None and path.exists():
        state = load_checkpoint(path, map_location=_device_of(model))
        check_compatible(state, path, model, config)
        run.restore(state)
    _train(run, steps, clip, path, save_every or max(1, steps // 10), desc or "train")
    return run.history


def adamw(model: nn.Module, *, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """The optimiser of :func:`fit`: AdamW, *fused* (one kernel for all parameters) where the
    model lives on CUDA, the plain loop elsewhere (so CPU results stay bit for bit)."""
    fused = _device_of(model).type == "cuda"
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=fused)


def _recorded(model: nn.Module, loss_fn, batches) -> dict[str, str]:
    """What ``fit`` records on its own, so that a change the config does not mention (another
    prior, partition, initialisation, loss, time density, data) never reuses a checkpoint: the
    model as it starts (structure, weights, buffers), the loss function, the data."""
    describe = getattr(batches, "fingerprint", None)
    return {
        "recorded: model at start": model_digest(model),
        "recorded: loss": describe_callable(loss_fn),
        "recorded: data": describe() if describe else type(batches).__name__,
    }


def _checkpoint_path(checkpoint, config: dict) -> Path | None:
    """A path, or ``checkpoint(config_hash)`` when it is a function (see load_or_train)."""
    if checkpoint is None:
        return None
    return Path(checkpoint(config_hash(config)) if callable(checkpoint) else checkpoint)


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
                save_checkpoint(run.state(), path)
                last_saved = run.step
    finally:
        run.history.seconds += time.perf_counter() - started
        bar.close()
        model.eval()


def run_step(run: _Run, clip: float | None) -> float:
    """One optimisation step; returns the loss and applies nothing if it is not finite."""
    batch = next(run.batches)
    if run.autocast is None:
        loss = run.loss_fn(run.model, batch)
    else:
        with torch.autocast(_device_of(run.model).type, dtype=run.autocast):
            loss = run.loss_fn(run.model, batch)
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
    """Train ``model``, or reuse its checkpoint ``<root>/<profile>/<name>-<hash>.pt``.

    The file is named by the hash of everything :func:`fit` checks: ``config``, the training
    settings, and what fit records itself (the model as it starts, the loss, the data). So a
    run that changes any of them trains afresh into its own file, beside the old one, and an
    unchanged run reuses its checkpoint (an unfinished one is resumed). ``retrain=True``
    deletes the matching checkpoint first. Temporary files left by an interrupted save of
    this checkpoint are removed. The model ends in eval mode with the trained weights.

    Args:
        name: file stem, e.g. ``"made"``.
        config: everything that defines the model and its data (sizes, seeds, ...).
        steps, fit_kwargs: passed to :func:`fit`.

    Returns:
        The run's :class:`History` (restored from the checkpoint when training was skipped).
    """
    if not isinstance(name, str) or not name or any(c in name for c in "/\\"):
        raise ValueError(f"name must be a plain file stem, got {name!r}")
    folder = checkpoint_root() / profile()

    def slot(digest: str) -> Path:
        path = folder / f"{name}-{digest[:12]}.pt"
        for stale in folder.glob(f"{path.name}*.tmp"):
            stale.unlink(missing_ok=True)
        if retrain:
            path.unlink(missing_ok=True)
        return path

    return fit(
        model,
        loss_fn,
        batches,
        steps=steps,
        checkpoint=slot,
        config={"name": name, **config},
        **fit_kwargs,
    )


def train_with_ema(
    name: str,
    model: nn.Module,
    loss_fn,
    batches,
    *,
    decay: float,
    config: dict,
    steps: int,
    **fit_kwargs,
) -> History:
    """One training stage that ends with the EMA weights in ``model``.

    :func:`load_or_train` with an :class:`EMA` of decay ``decay`` (started from the model's
    current weights); afterwards the averaged weights replace the raw ones, which is what the
    diffusion and flow chapters sample with.

    Returns:
        The stage's :class:`History`.
    """
    ema = EMA(model, decay)
    history = load_or_train(
        name, model, loss_fn, batches, config=config, steps=steps, ema=ema, **fit_kwargs
    )
    model.load_state_dict(ema.shadow)
    return history
