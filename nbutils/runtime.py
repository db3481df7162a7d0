"""Run profiles, seeding, device choice, timing and cache folders for the notebooks.

A notebook chooses its sizes once, in a config cell, with :func:`pick`::

    steps = pick(smoke=50, cpu=3_000, gpu=40_000)

The profile comes from the environment variable ``NBUTILS_PROFILE`` (``smoke``, ``cpu`` or
``gpu``); when it is unset, ``gpu`` is used where CUDA is available and ``cpu`` elsewhere.
"""

from __future__ import annotations

import os
import platform
import random
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import torch

PROFILES = ("smoke", "cpu", "gpu")
PROFILE_ENV = "NBUTILS_PROFILE"
DEVICE_ENV = "NBUTILS_DEVICE"
DATA_ENV = "NBUTILS_DATA"
SUBNORMALS_ENV = "NBUTILS_SUBNORMALS"
CKPT_ENV = "NBUTILS_CKPT"

#: What each profile is for and what it is budgeted to cost per notebook.
BUDGETS = {
    "smoke": "about 1 minute on 2 CPU cores: every code path runs, sanity asserts hold",
    "cpu": "about 4 minutes on 2 CPU cores: recognisable results",
    "gpu": "about 5 minutes on one H100: the chapter's target numbers",
}


def profile() -> str:
    """The active run profile: ``NBUTILS_PROFILE`` or, when unset, ``gpu``/``cpu`` by CUDA.

    Raises:
        ValueError: if ``NBUTILS_PROFILE`` holds anything but one of :data:`PROFILES`.
    """
    value = os.environ.get(PROFILE_ENV, "").strip()
    if not value:
        return "gpu" if torch.cuda.is_available() else "cpu"
    if value not in PROFILES:
        raise ValueError(
            f"{PROFILE_ENV}={value!r} is not a run profile; expected one of {', '.join(PROFILES)}"
        )
    return value


def pick(*, smoke, cpu, gpu):
    """Return the argument named after the active profile.

    Example:
        >>> import os
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"NBUTILS_PROFILE": "smoke"}):
        ...     pick(smoke=10, cpu=1_000, gpu=50_000)
        10
    """
    return {"smoke": smoke, "cpu": cpu, "gpu": gpu}[profile()]


def device() -> torch.device:
    """The device notebooks put their models on: ``NBUTILS_DEVICE`` if set, else CUDA if present."""
    wanted = os.environ.get(DEVICE_ENV, "").strip()
    if wanted:
        try:
            return torch.device(wanted)
        except RuntimeError as err:
            raise ValueError(
                f"{DEVICE_ENV}={wanted!r} is not a torch device; expected e.g. cpu, cuda, cuda:1"
            ) from err
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16_supported(where) -> bool:
    """Whether ``where`` (a device) runs bfloat16 natively: every CPU, and CUDA GPUs of compute
    capability 8.0 or newer (A100, H100; not the T4 that Colab usually lends)."""
    where = torch.device(where)
    if where.type != "cuda":
        return True
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before 2.4 has no such argument and does not emulate
        return torch.cuda.is_bf16_supported()


def autocast_dtype(requested: torch.dtype | None, where) -> torch.dtype | None:
    """The autocast dtype to use on ``where``: ``requested``, or None (float32) with a warning
    when bfloat16 is requested on a GPU without native bfloat16 (emulated bf16 is slower than
    float32, and float16 would need a gradient scaler)."""
    if requested is torch.bfloat16 and not bf16_supported(where):
        warnings.warn(
            f"{torch.device(where)} has no native bfloat16; training in float32 instead of "
            "bfloat16 autocast (expect it to be slower than the measured times)",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return requested


def synchronize(where=None) -> None:
    """Wait for queued CUDA work on ``where`` (a device; default: CUDA if present); no-op on CPU."""
    where = torch.device(where) if where is not None else device()
    if where.type == "cuda":
        torch.cuda.synchronize(where)


class Timer:
    """Wall time of a block, waiting for the GPU at both ends so that queued kernels count.

    Example:
        >>> with Timer("cpu") as timer:
        ...     _ = sum(range(1000))
        >>> timer.seconds >= 0
        True
    """

    def __init__(self, where=None):
        self.where, self.seconds = where, 0.0

    def __enter__(self) -> Timer:
        synchronize(self.where)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.where)
        self.seconds = time.perf_counter() - self._start


def timed(fn, where=None):
    """Run ``fn()`` and return ``(its result, wall seconds)``, synchronising CUDA around it."""
    with Timer(where) as timer:
        out = fn()
    return out, timer.seconds


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a CPU generator seeded the same way.

    Args:
        seed: a non-negative integer.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (notebooks may use the legacy global RNG)
    torch.manual_seed(seed)  # also seeds every CUDA device
    flush_subnormals()
    return torch.Generator().manual_seed(seed)


def flush_subnormals(flush: bool | None = None) -> bool:
    """Treat subnormal floats as zero in CPU arithmetic (``torch.set_flush_denormal``).

    Numbers below about 1.2e-38 in float32 (weights and gradients that decay towards zero,
    Adam's second moments) are *subnormal*, and most CPUs compute with them tens of times
    more slowly. Flushing them to zero changes results only at that scale and keeps the step
    time of a long run flat. :func:`seed_everything` calls this, so every notebook flushes;
    ``NBUTILS_SUBNORMALS=keep`` (or ``flush=False``) opts out. GPUs are not affected.

    Returns:
        Whether flushing is now on (False also where the CPU cannot do it).
    """
    if flush is None:
        setting = os.environ.get(SUBNORMALS_ENV, "flush")
        if setting not in ("flush", "keep"):
            raise ValueError(f"{SUBNORMALS_ENV} must be 'flush' or 'keep', got {setting!r}")
        flush = setting == "flush"
    supported = torch.set_flush_denormal(bool(flush))
    return bool(flush) and supported


def cache_dir() -> Path:
    """The cache folder: ``$NBUTILS_DATA`` or ``$XDG_CACHE_HOME/nbutils`` (``~/.cache/nbutils``)."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nbutils"


def checkpoint_root() -> Path:
    """Where :func:`nbutils.train.load_or_train` keeps checkpoints: ``$NBUTILS_CKPT`` or
    ``<cache folder>/checkpoints``."""
    root = os.environ.get(CKPT_ENV)
    return Path(root).expanduser() if root else cache_dir() / "checkpoints"


def machine() -> dict:
    """A short description of this machine: platform, CPU count, GPU name, torch version."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "gpu": gpu,
        "torch": str(torch.__version__),
    }


def git_commit(path: str | os.PathLike = ".") -> str | None:
    """The commit of the checkout that holds ``path`` (with ``+dirty`` if it has changes).

    ``NBUTILS_COMMIT`` overrides it, for copies of the tree that travel without ``.git``.
    """
    if os.environ.get("NBUTILS_COMMIT"):
        return os.environ["NBUTILS_COMMIT"]
    try:
        run = dict(cwd=Path(path), capture_output=True, text=True, timeout=10)
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], **run).stdout.strip()
        # the whole checkout counts (not only the folder of `path`), except results/, which is
        # what a results run writes
        status = ["git", "status", "--porcelain", "--untracked-files=no", "--", ":/", ":!/results"]
        dirty = subprocess.run(status, **run)
    except (OSError, subprocess.SubprocessError):
        return None
    if not sha:
        return None
    return sha + ("+dirty" if dirty.stdout.strip() else "")


def banner(expected: dict[str, str] | None = None) -> str:
    """Describe the run for the top of a notebook: profile, device, torch, expected time.

    Args:
        expected: profile -> expected wall time of this notebook, e.g. ``{"cpu": "4 min"}``.
    """
    name = profile()
    lines = [
        f"profile : {name} ({BUDGETS[name]})",
        f"device  : {device()}" + (f" ({machine()['gpu']})" if torch.cuda.is_available() else ""),
        f"torch   : {torch.__version__}, {torch.get_num_threads()} CPU threads",
    ]
    if expected and name in expected:
        lines.append(f"expected: {expected[name]} for the whole notebook in this profile")
        here = device()
        if name == "gpu" and here.type == "cuda" and not bf16_supported(here):
            lines.append(
                "          (that is for an H100/H200; this GPU has no native bfloat16, as on "
                "Colab's T4, so expect several times longer: an estimate, not measured)"
            )
    text = "\n".join(lines)
    print(text)
    return text
