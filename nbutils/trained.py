"""Models that another chapter trained: find its finished checkpoint, rebuild the network from
the configuration recorded there, and load the weights that chapter evaluates with.

Chapter 06 measures the likelihood of chapter 02's NICE, chapter 03's flow, chapter 05's
diffusion model and chapter 07's rectified flow on one test set. It does not train them again:
:func:`load_trained` looks in the checkpoint folder of the current profile for
``<name>-<hash>.pt`` files written by :func:`nbutils.train.load_or_train` that finished their
run and whose configuration has the values asked for (e.g. the schedule), rebuilds the model
with ``build(config)``, and loads

* the moving average of the weights, where the run kept one (:func:`~nbutils.train.
  train_with_ema`), else
* the best weights of a :class:`~nbutils.keepers.KeepBest` record, where there is one, else
* the weights after the last step,

which is what the chapter itself goes on with. Nothing is found -> None, so that the caller can
train the model itself or say that it is missing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from torch import nn

from nbutils.checkpoint import CheckpointMismatch, architecture, canonical_config, load_checkpoint
from nbutils.runtime import checkpoint_root, profile
from nbutils.train import History


class Trained(NamedTuple):
    """What :func:`load_trained` returns: the model (eval mode), the recorded configuration,
    the training history, the checkpoint's path and which weights were loaded (``"ema"``,
    ``"best"`` or ``"last"``)."""

    model: nn.Module
    config: dict
    history: History
    path: Path
    weights: str


def finished_checkpoints(name: str, match: dict | None = None, run_profile: str | None = None):
    """The finished checkpoints of ``name`` whose configuration holds ``match``, newest first.

    Args:
        name: the file stem given to :func:`~nbutils.train.load_or_train`, e.g. ``"vpsde_mnist"``.
        match: configuration entries that must be equal (compared in their stored form, so a
            tuple matches the list a checkpoint holds).
        run_profile: whose folder to search (default: the current profile's).

    Returns:
        ``[(path, state), ...]``; unfinished runs (fewer steps than configured) are skipped.
    """
    if not isinstance(name, str) or not re.fullmatch(r"[\w.]+", name):
        raise ValueError(
            f"name must be a checkpoint's file stem such as 'vpsde_mnist', got {name!r}"
        )
    wanted = canonical_config(match or {}, "match")
    folder = checkpoint_root() / (run_profile or profile())
    pattern = re.compile(re.escape(name) + r"-[0-9a-f]{12}\.pt")
    paths = [p for p in folder.glob(f"{name}-*.pt") if pattern.fullmatch(p.name)]
    found = []
    for path in sorted(paths, key=lambda p: p.stat().st_mtime, reverse=True):
        state = load_checkpoint(path, map_location="cpu")
        config = state["config"]
        if state["step"] < config.get("steps", 0):
            continue
        if all(k in config and config[k] == v for k, v in wanted.items()):
            found.append((path, state))
    return found


def load_trained(name: str, build: Callable[[dict], nn.Module], *, match: dict | None = None,
                 device=None) -> Trained | None:  # fmt: skip
    """Rebuild and load the newest finished model ``name`` of the current profile (older ones are
    tried in turn where ``build`` makes another architecture than the newest's).

    Args:
        name, match: as in :func:`finished_checkpoints`.
        build: ``build(config) -> nn.Module``, the architecture from the recorded configuration
            (the config as the training notebook passed it, with lists for tuples).
        device: where the model goes (default: stays where ``build`` put it).

    Returns:
        A :class:`Trained`, or None when no finished checkpoint matches.

    Raises:
        CheckpointMismatch: for no candidate does the rebuilt model have the checkpoint's
            parameter names and shapes (``build`` does not make the network that was trained).
    """
    found = finished_checkpoints(name, match)
    if not found:
        return None
    path = None
    for candidate, state in found:  # newest first; a variant of another architecture is skipped
        model = build(state["config"])
        if architecture(model) == state["architecture"]:
            path = candidate
            break
    if path is None:
        raise CheckpointMismatch(
            f"none of the {len(found)} finished checkpoint(s) of {name!r} "
            f"({', '.join(p.name for p, _ in found)}) has the architecture that build(config) "
            f"makes ({type(model).__name__}, {len(architecture(model))} tensors); build(config) "
            "must make the trained architecture"
        )
    weights, kind = state["model"], "last"
    if state.get("ema"):
        weights, kind = state["ema"]["shadow"], "ema"
    elif state.get("keep_best") and state["keep_best"].get("best_state") is not None:
        weights, kind = state["keep_best"]["best_state"], "best"
    model.load_state_dict(weights)
    if device is not None:
        model.to(device)
    history = History(state["losses"].tolist(), state["seconds"])
    return Trained(model.eval(), state["config"], history, path, kind)
