"""Chapter 10's tables, read from the results files: every family on one likelihood table, one
sample-quality table, one cost table, and the runs behind them.

Nothing here trains or measures. Each row names the chapter and the metric that a chapter's
notebook reported (``results/<profile>.json``, written by ``make results``); a metric that a
profile does not hold is ``None`` and shows as "missing", never as a value from another run or
another profile::

    >>> results = {"cpu": {"chapters": {"02": {"metrics": {"NICE, MNIST: test bits/dim":
    ...     {"value": 4.42, "unit": "bits/dim", "paper": 4.36}}}}}}
    >>> metric(results, "cpu", "02", "NICE, MNIST: test bits/dim")
    4.42
    >>> metric(results, "gpu", "02", "NICE, MNIST: test bits/dim") is None
    True
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from nbutils.measured import MissingResult, joined, load_results

PROFILES = ("cpu", "gpu")
MISSING = "missing"


def find_root(start: Path | None = None) -> Path:
    """The repository whose ``results/`` the tables read: ``NBUTILS_ROOT`` if set, else the
    first folder at or above ``start`` (default: the working directory) that holds
    ``results/headlines.json``."""
    if os.environ.get("NBUTILS_ROOT"):
        return Path(os.environ["NBUTILS_ROOT"])
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "results" / "headlines.json").exists():
            return folder
    raise FileNotFoundError(
        f"no results/headlines.json at or above {here}: chapter 10 reads the results files of "
        "a clone of the book's repository (git clone it, or set NBUTILS_ROOT to one)"
    )


def load(root: Path, profiles=PROFILES) -> dict[str, dict]:
    """``results/<profile>.json`` under ``root`` for each profile that has one."""
    found = {}
    for name in profiles:
        try:
            found[name] = load_results(Path(root), name)
        except MissingResult:  # a profile never run: its numbers show as missing
            continue
    return found


def entry(results: dict, profile: str, chapter: str, name: str) -> dict | None:
    """The metric's whole entry (value, unit, paper, ...), or None where it was not measured."""
    chapter_entry = results.get(profile, {}).get("chapters", {}).get(chapter)
    if not chapter_entry or chapter_entry.get("status", "ok") != "ok":
        return None
    return chapter_entry.get("metrics", {}).get(name)


def metric(results: dict, profile: str, chapter: str, name: str | None):
    """The metric's value in that profile, or None (also for ``name=None``)."""
    found = entry(results, profile, chapter, name) if name else None
    return None if found is None else found.get("value")


def show(value, fmt: str = ".4g") -> str:
    """A value for a table: formatted, or "missing"."""
    if value is None:
        return MISSING
    return format(value, fmt) if isinstance(value, int | float) else str(value)


# ------------------------------------------------------------------------------ likelihoods


@dataclass(frozen=True)
class LikelihoodRow:
    """One model on the likelihood table: where its number is, and its cost's metrics."""

    data: str  # "binarized, nats" or "8-bit, bits/dim"
    model: str
    chapter: str
    metric: str
    params: str | None = None
    train_time: str | None = None


LIKELIHOODS = (
    LikelihoodRow("binarized, nats", "FVSBN", "01", "FVSBN: test NLL", None, "FVSBN: train time"),
    LikelihoodRow("binarized, nats", "NADE", "01", "NADE: test NLL", None, "NADE: train time"),
    LikelihoodRow("binarized, nats", "MADE", "01", "MADE: test NLL", None, "MADE: train time"),
    LikelihoodRow(
        "binarized, nats",
        "MADE ensemble",
        "01",
        "MADE ensemble: test NLL",
        None,
        "MADE ensemble: train time",
    ),  # fmt: skip
    LikelihoodRow(
        "binarized, nats", "PixelCNN", "01", "PixelCNN: test NLL", None, "PixelCNN: train time"
    ),  # fmt: skip
    LikelihoodRow(
        "8-bit, bits/dim",
        "PixelCNN-256",
        "01",
        "PixelCNN-256, 8-bit MNIST: test bits/dim",
        None,
        "PixelCNN-256: train time",
    ),  # fmt: skip
    LikelihoodRow(
        "8-bit, bits/dim",
        "NICE",
        "02",
        "NICE, MNIST: test bits/dim",
        "NICE, MNIST: parameters",
        "NICE, MNIST: training time",
    ),  # fmt: skip
    LikelihoodRow(
        "8-bit, bits/dim",
        "multiscale flow, uniform deq.",
        "03",
        "multiscale flow, uniform dequantization: test bits/dim",
        "multiscale flow: parameters",
        "multiscale flow, uniform: training time",
    ),  # fmt: skip
    LikelihoodRow(
        "8-bit, bits/dim",
        "multiscale flow, variational deq.",
        "03",
        "multiscale flow, variational dequantization: test bits/dim",
        "multiscale flow: parameters",
        "multiscale flow, variational: training time",
    ),  # fmt: skip
    LikelihoodRow("8-bit, bits/dim", "PF-ODE (VP diffusion)", "06", "PF-ODE, MNIST: test bits/dim"),
    LikelihoodRow(
        "8-bit, bits/dim", "RF-ODE (rectified flow)", "06", "RF-ODE, MNIST: test bits/dim"
    ),
)


def likelihood_table(results: dict, profiles=PROFILES) -> list[dict]:
    """One dict per row: model, data, chapter, unit, paper (one text, both profiles' when their
    references differ), and per profile value / paper / params / train seconds (None where
    missing)."""
    rows = []
    for row in LIKELIHOODS:
        out = {"data": row.data, "model": row.model, "chapter": row.chapter, "unit": None}
        for profile in profiles:
            found = entry(results, profile, row.chapter, row.metric) or {}
            out["unit"] = out["unit"] or found.get("unit")
            out[f"{profile} paper"] = found.get("paper")  # each run cites its own reference
            out[profile] = found.get("value")
            out[f"{profile} params"] = metric(results, profile, row.chapter, row.params)
            if out[f"{profile} params"] is None:  # chapter 01 notes them: "101,136 params"
                noted = re.search(r"([\d,]+) params", found.get("note") or "")
                out[f"{profile} params"] = int(noted.group(1).replace(",", "")) if noted else None
            out[f"{profile} train s"] = _seconds(
                metric(results, profile, row.chapter, row.train_time)
            )
        out["paper"] = joined(
            {p: out[f"{p} paper"] for p in profiles}
        )  # "88.4 (cpu) / 89.59 (gpu)"
        rows.append(out)
    return rows


def _seconds(value) -> float | None:
    """A training time in s; "92 / 30 / 24"-style stage lists are summed."""
    if isinstance(value, str):
        parts = [float(p) for p in re.findall(r"[\d.]+", value)]
        return sum(parts) if parts else None
    return value


# --------------------------------------------------------------------------- sample quality


@dataclass(frozen=True)
class SamplerRow:
    """One sampler's Frechet distance and its network evaluations per sample (NFE).

    ``nfe`` is a number; or a metric's name, whose value is the NFE (RK45 chooses its own
    steps); or ``"note"``: the "NFE n" that the entry's own note records (NCSN's noise levels
    times its steps per level, which depend on the profile). ``conditional``: the samples were
    drawn given their class labels (chapter 08, labels 0-9 in equal shares), which is an easier
    task than unconditional sampling, so such rows are kept off the unconditional frontier.
    """

    family: str
    sampler: str
    chapter: str
    metric: str
    nfe: float | str
    conditional: bool = False


def _fd_rows() -> tuple[SamplerRow, ...]:
    rows = [SamplerRow("score (NCSN)", f"annealed Langevin, {k} steps per level", "04",
                       f"NCSN, MNIST: FD, {k} steps per level", "note")
            for k in (1, 2, 4)]  # fmt: skip
    for name in ("EM 25 steps", "EM 100 steps", "PC 50 steps", "DDPM 25 steps", "DDPM 100 steps"):
        rows.append(
            SamplerRow("diffusion SDE (VP)", name, "05", f"VP-SDE, MNIST: FD, {name}", "note")
        )
    for name in ("DDIM", "ODE Euler", "SDE Euler-Maruyama"):
        family = "diffusion SDE (VP)" if name.startswith("SDE") else "diffusion ODE (VP)"
        for k in (10, 20, 50):
            rows.append(SamplerRow(family, f"{name} {k}", "06", f"FD, {name} {k}", "note"))
    rows.append(SamplerRow("diffusion ODE (VP)", "ODE RK45", "06", "FD, ODE RK45 0.001", "note"))
    for name, nfe in (("1-rectified, 1 step", 1), ("1-rectified, 100 steps", 100),
                      ("2-rectified, 1 step", 1), ("2-rectified, 100 steps", 100),
                      ("2-rectified + distillation, 1 step", 1)):  # fmt: skip
        rows.append(SamplerRow("rectified flow", name, "07", name, nfe))
    for density in ("uniform", "logit-normal(0, 1)", "mode(1.29)", "cosmap"):
        for k in (5, 10, 50):
            rows.append(SamplerRow("latent RF (SD3), class-conditional",
                                   f"MM-DiT, {density} times, {k} steps", "08",
                                   f"{density}: FD at {k} steps", k, True))  # fmt: skip
    rows.append(SamplerRow("latent RF (SD3), class-conditional", "DiT one stream, 50 steps", "08",
                           "DiT, one stream (latent): FD at 50 steps", 50, True))  # fmt: skip
    rows.append(SamplerRow("rectified flow, class-conditional", "U-Net on pixels, 50 steps", "08",
                           "U-Net, chapter 07 (pixels): FD at 50 steps", 50, True))  # fmt: skip
    return tuple(rows)


SAMPLERS = _fd_rows()
FLOOR = "MNIST FD floor (real training images)"


def _nfe(results: dict, profile: str, row: SamplerRow, found: dict):
    if row.nfe == "note":
        recorded = re.search(r"NFE (\d+)", found.get("note") or "")
        return int(recorded.group(1)) if recorded else None
    if isinstance(row.nfe, str):
        return metric(results, profile, row.chapter, row.nfe)
    return row.nfe if found else None


def sample_table(results: dict, profile: str) -> list[dict]:
    """One dict per sampler: family, sampler, chapter, fd, nfe, n (samples), floor (at that n)
    "s per 1k" (sampling seconds per 1,000 samples, where the chapter timed it) and
    "conditional" (drawn given class labels)."""
    rows = []
    for row in SAMPLERS:
        found = entry(results, profile, row.chapter, row.metric) or {}
        unit = found.get("unit") or ""
        n = re.search(r"([\d,]+) samples", unit)
        rows.append({
            "family": row.family, "sampler": row.sampler, "chapter": row.chapter,
            "fd": found.get("value"), "nfe": _nfe(results, profile, row, found),
            "n": int(n.group(1).replace(",", "")) if n else None,
            "floor": metric(results, profile, row.chapter, FLOOR),
        })  # fmt: skip
        rows[-1]["s per 1k"] = _seconds_per_1k(found.get("note"), rows[-1]["n"])
        rows[-1]["conditional"] = row.conditional
    return rows


def _seconds_per_1k(note: str | None, n: int | None) -> float | None:
    """Sampling seconds per 1,000 samples, from a note "..., 15.3 s per batch of 400" (or
    "..., 2.2 s", the time of the whole set of ``n`` samples); None where no time is noted."""
    timed = re.search(r"([\d.]+) s\b(?: per batch of ([\d,]+))?", note or "")
    if timed is None:
        return None
    count = int(timed.group(2).replace(",", "")) if timed.group(2) else n
    return None if not count else float(timed.group(1)) / count * 1_000


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    """Which points no other point beats in both coordinates (lower is better in each).

    A point is on the frontier unless another is at most as large in both and smaller in one.
    """
    return [not any(a <= x and b <= y and (a < x or b < y) for a, b in points) for x, y in points]


# ------------------------------------------------------------------------------------ costs

COSTS = (  # (model, chapter, images/s metric, training-time metric)
    ("FVSBN", "01", None, "FVSBN: train time"),
    ("NADE", "01", None, "NADE: train time"),
    ("MADE", "01", None, "MADE: train time"),
    ("PixelCNN (binarized)", "01", None, "PixelCNN: train time"),
    ("PixelCNN-256", "01", "PixelCNN-256: training images/s", "PixelCNN-256: train time"),
    ("NICE", "02", "NICE, MNIST: training images/s", "NICE, MNIST: training time"),
    ("multiscale flow, uniform deq.", "03", "multiscale flow, uniform: training images/s",
     "multiscale flow, uniform: training time"),
    ("multiscale flow, variational deq.", "03", "multiscale flow, variational: training images/s",
     "multiscale flow, variational: training time"),
    ("NCSN", "04", "NCSN, MNIST: training images/s", "NCSN, MNIST: training time"),
    ("VP-SDE U-Net", "05", "VP-SDE, MNIST: training images/s", "VP-SDE, MNIST: training time"),
    ("rectified flow U-Net (time: stages 1-3)", "07", "1-rectified flow: training images/s",
     "training time, stages 1 / 2 / 3"),
    ("MM-DiT (latent)", "08", "MM-DiT (latent): training images/s", None),
    ("DiT, one stream (latent)", "08", "DiT, one stream (latent): training images/s", None),
    ("U-Net (pixels), chapter 08", "08", "U-Net, chapter 07 (pixels): training images/s", None),
    ("CPC", "09", "CPC training images/s", None),
)  # fmt: skip


def cost_table(results: dict, profiles=PROFILES) -> list[dict]:
    """Training throughput and time per model, per profile (None where missing)."""
    rows = []
    for model, chapter, rate, seconds in COSTS:
        row = {"model": model, "chapter": chapter}
        for profile in profiles:
            row[f"{profile} images/s"] = metric(results, profile, chapter, rate)
            row[f"{profile} train s"] = _seconds(metric(results, profile, chapter, seconds))
        rows.append(row)
    return rows


def provenance(results: dict, profiles=PROFILES) -> list[dict]:
    """Which run each chapter's numbers come from: commit, date, wall time, per profile."""
    chapters = sorted({c for r in results.values() for c in r.get("chapters", {})})
    rows = []
    for chapter in chapters:
        row = {"chapter": chapter}
        for profile in profiles:
            found = results.get(profile, {}).get("chapters", {}).get(chapter) or {}
            row[f"{profile} commit"] = found.get("commit")
            row[f"{profile} date"] = (found.get("date") or "")[:10] or None
            row[f"{profile} wall s"] = found.get("wall_seconds")
        rows.append(row)
    return rows
