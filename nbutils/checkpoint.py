"""Checkpoints: a configuration hash, the architecture record, atomic writes, safe loading,
the compatibility check and the random-number state.

A checkpoint is a plain dict written by :func:`save_checkpoint` (through :func:`atomic_write`,
so an interrupted write never leaves half a file) and read by :func:`load_checkpoint` with
``weights_only=True`` (no arbitrary code runs on load). :func:`check_compatible` refuses a
checkpoint written for another configuration or another architecture, with a message that
says what differs.
"""

from __future__ import annotations

import dis
import functools
import hashlib
import inspect
import json
import os
import tempfile
import types
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


def canonical_config(value, key: str = "config"):
    """A JSON-safe copy of a configuration, so that a checkpoint stores exactly what it hashes.

    Numbers, strings, booleans and None stay; tuples become lists; paths become strings;
    numpy and torch scalars become Python numbers; dtypes become their names. Anything else
    (a function, a class, a tensor, an object) is refused with the key that holds it, before
    any training, because it has no stable, loadable form.

    Example:
        >>> canonical_config({"sizes": (2, 3), "lr": 1e-3})
        {'sizes': [2, 3], 'lr': 0.001}
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [canonical_config(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise TypeError(f"{key} has non-string keys {bad!r}; configuration keys are strings")
        return {k: canonical_config(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, torch.dtype):
        return str(value)
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(
        f"{key} holds {type(value).__name__} {value!r}, which a checkpoint cannot store; a "
        "configuration holds numbers, strings, lists and dicts: describe it by a name instead"
    )


def tensor_digest(tensors, digest=None) -> str:
    """SHA-256 (16 hex digits) of tensors' dtypes, shapes and bytes, in order."""
    digest = digest or hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer, not a copy
    return digest.hexdigest()[:16]


def _const_text(const) -> str:
    """A constant of compiled code as stable text (frozensets sorted: their repr follows the
    string hash seed, which changes between runs)."""
    if isinstance(const, types.CodeType):
        return _code_digest(const)
    if isinstance(const, frozenset):
        return "frozenset(" + ", ".join(sorted(_const_text(c) for c in const)) + ")"
    if isinstance(const, tuple):
        return "(" + ", ".join(_const_text(c) for c in const) + ")"
    return repr(const)


def _code_digest(code: types.CodeType, skip_docstring: bool = False) -> str:
    digest = hashlib.sha256(code.co_code + repr(code.co_names).encode())
    consts = code.co_consts[1:] if skip_docstring else code.co_consts
    for const in consts:
        digest.update(_const_text(const).encode())
    return digest.hexdigest()[:16]


def describe_callable(fn, depth: int = 0) -> str:
    """A stable description of a function: its name, a digest of its code (not of its
    docstring), its default arguments and the values it closes over; for a
    ``functools.partial`` also its bound arguments. Lambdas and notebook functions too.

    A function written in the notebook or script itself (module ``__main__``) is described
    with the globals it reads, each by :func:`describe_value`: another time sampler, teacher
    network or number in a notebook variable is a change of the loss. Not seen: the contents
    of lists and dicts (counters change; pass a setting in the config) and the globals of the
    package's own functions, so a change inside the package is not detected
    (``retrain=True`` or another name then).
    """
    if depth > 4:  # deep or self-referring structures: the name is enough
        return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
    if isinstance(fn, functools.partial):
        args = [describe_value(a, depth + 1) for a in fn.args]
        keywords = {k: describe_value(v, depth + 1) for k, v in sorted(fn.keywords.items())}
        return f"partial({describe_callable(fn.func, depth + 1)}, {args}, {keywords})"
    if inspect.ismethod(fn):
        return f"{describe_value(fn.__self__, depth + 1)}.{describe_callable(fn.__func__, depth)}"
    if inspect.isfunction(fn):
        has_doc = bool(fn.__doc__) and fn.__code__.co_consts[:1] == (fn.__doc__,)
        code = _code_digest(fn.__code__, skip_docstring=has_doc)
        extras = [describe_value(v, depth + 1) for v in fn.__defaults__ or ()]
        extras += [
            f"{k}={describe_value(v, depth + 1)}"
            for k, v in sorted((fn.__kwdefaults__ or {}).items())
        ]
        extras += [_describe_cell(c, depth + 1) for c in fn.__closure__ or ()]
        if fn.__module__ == "__main__":
            extras += _describe_globals(fn, depth + 1)
        return f"{fn.__module__}.{fn.__qualname__}:{code}{extras or ''}"
    if isinstance(fn, nn.Module):
        return model_digest(fn)
    if isinstance(fn, type) or inspect.isbuiltin(fn):
        return f"{fn.__module__}.{fn.__qualname__}"
    return _describe_object(fn, depth)  # a callable object: its type and plain attributes


def _global_names(code: types.CodeType) -> set[str]:
    """The global names that compiled code (and the functions and lambdas inside it) loads."""
    names = {i.argval for i in dis.get_instructions(code) if i.opname == "LOAD_GLOBAL"}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _describe_globals(fn, depth: int) -> list[str]:
    """``name=description`` of each global a function reads that is defined (modules by their
    name; builtins and names not yet defined are left out)."""
    described = []
    for name in sorted(_global_names(fn.__code__)):
        if name not in fn.__globals__:
            continue
        value = fn.__globals__[name]
        if isinstance(value, types.ModuleType):
            described.append(f"{name}=module {value.__name__}")
        elif value is not fn:  # a recursive function: its own code is already described
            described.append(f"{name}={describe_value(value, depth)}")
    return described


def _describe_cell(cell, depth: int) -> str:
    """A closure's captured value (an empty cell, e.g. a function not yet defined, by a mark)."""
    try:
        value = cell.cell_contents
    except ValueError:
        return "<empty>"
    return describe_value(value, depth)


def _describe_object(value, depth: int) -> str:
    """An object by its type and the plain values among its attributes (numbers, strings,
    tuples of them), e.g. a schedule's beta_min and beta_max."""
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    try:
        attributes = sorted(vars(value).items())
    except TypeError:  # no __dict__
        return kind
    plain = [
        (k, v)
        for k, v in attributes
        if v is None or isinstance(v, bool | int | float | str | tuple)
    ]
    return kind + (f"{[(k, describe_value(v, depth + 1)) for k, v in plain]}" if plain else "")


def describe_value(value, depth: int = 0) -> str:
    """Plain values and tuples by their repr, callables by :func:`describe_callable`, classes
    by name, modules and tensors by a digest, other objects by their type and plain
    attributes (lists and dicts only by their type: state that changes, such as counters;
    a setting belongs in the config)."""
    if value is None or isinstance(value, bool | int | float | str | torch.dtype):
        return repr(value)
    if isinstance(value, tuple):
        return "(" + ", ".join(describe_value(v, depth + 1) for v in value) + ")"
    if isinstance(value, nn.Module):
        return model_digest(value)
    if isinstance(value, torch.Tensor):
        return tensor_digest([value])
    if isinstance(value, list | dict | set):
        return f"builtins.{type(value).__name__}"
    if callable(value):
        return describe_callable(value, depth + 1)
    return _describe_object(value, depth)


def model_digest(model: nn.Module) -> str:
    """A digest of a model as it is now: its structure (``repr``) and every parameter and
    buffer, persistent or not (masks, partitions, orders), with its values."""
    digest = hashlib.sha256(repr(model).encode())
    tensors = [t for _, t in model.named_parameters()] + [t for _, t in model.named_buffers()]
    return f"{type(model).__name__}:{tensor_digest(tensors, digest)}"


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
    want, got = architecture(model), state["architecture"]
    if want != got:
        diff = [k for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)][:4]
        raise CheckpointMismatch(
            f"checkpoint {path} holds another architecture (differs in {', '.join(diff)}). {fix}"
        )
    if state["config_hash"] != config_hash(config):
        raise CheckpointMismatch(
            f"checkpoint {path} was trained with another configuration "
            f"({describe_mismatch(state['config'], config)}). {fix}"
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
