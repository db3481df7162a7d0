"""Checkpoints: a configuration hash, the architecture record, atomic writes, safe loading,
the compatibility check and the random-number state.

A checkpoint is a plain dict written by :func:`save_checkpoint` (through :func:`atomic_write`,
so an interrupted write never leaves half a file) and read by :func:`load_checkpoint` with
``weights_only=True`` (no arbitrary code runs on load). :func:`check_compatible` refuses a
checkpoint written for another configuration or another architecture, with a message that
says what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

#: Version of the checkpoint layout written by :func:`nbutils.train.fit`.
FORMAT = 1


class CheckpointMismatch(RuntimeError):
    """A checkpoint exists for this name but was written for a different configuration."""


def config_hash(config: dict) -> str:
    """A short, stable hash of a JSON-serialisable configuration.

    Example:
        >>> config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})
        True
    """
    try:
        text = json.dumps(config, sort_keys=True, default=str)
    except TypeError as err:
        raise TypeError(f"config must be JSON-serialisable: {err}") from err
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def architecture(model: nn.Module) -> dict[str, list[int]]:
    """Names and shapes of a model's state: what a checkpoint must match to be loaded."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def atomic_write(path: str | os.PathLike, write: Callable) -> Path:
    """Write a file all at once: ``write(f)`` fills a temporary file beside ``path``, which is
    then renamed over it (readable by everyone, like a normally created file).

    A failure inside ``write`` leaves ``path`` as it was and removes the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o644)
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` the state to ``path`` atomically."""
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike, map_location=None) -> dict:
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


def describe_mismatch(saved: dict, config: dict) -> str:
    """The keys on which two configurations differ, as ``key: old in the checkpoint, new now``."""
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
            f"({describe_mismatch(state['config'], config)}). {fix}"
        )
    want, got = architecture(model), state["architecture"]
    if want != got:
        diff = [k for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)][:4]
        raise CheckpointMismatch(
            f"checkpoint {path} holds another architecture (differs in {', '.join(diff)}). {fix}"
        )


def rng_state() -> dict:
    """The state of torch's global generators (CPU, and every CUDA device when present)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
