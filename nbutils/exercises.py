"""Measured answers to the notebooks' exercises: ``python -m nbutils.exercises``.

    python -m nbutils.exercises --profile cpu [--only 02.3,07.1] [--list]

Each exercise at the end of a notebook is written down in ``book/exercises.toml`` as what a
reader would do: exact edits of the notebook's code (``edits``: pairs of old and new text,
each old text found exactly once), the code cell after which the rest of the notebook no
longer matters (``until``: text from that cell), and a few lines that read off the outcome
(``measure``, which must set a dict ``answer`` of name -> number or text). The runner applies
the edits to a copy of the code cells, runs them headless (:mod:`nbutils.run`) in a fresh
process with the profile asked for, and records the answer in
``results/exercises/<profile>.json``. Each notebook's collapsed answers carry those numbers,
each followed by a comment naming its source (``5.611<!-- measured: exercises:cpu/02.1/test
bits/dim|.3f -->``, see :mod:`nbutils.measured`), which ``python -m nbutils.results
--readme`` rewrites and a test checks: an answer is a measurement, never a guess.

Edits are made one after another, each on the cells as the previous edits left them.

All exercises of one call share one checkpoint folder, so a model that an edit leaves
unchanged is trained once and reused (the checkpoint key is the configuration's hash, see
:func:`nbutils.train.load_or_train`); a model that an edit changes trains afresh.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from nbutils.checkpoint import atomic_write
from nbutils.run import code_cells
from nbutils.runtime import PROFILES, git_commit, machine

ANSWER_FILE = "answer.json"


class ExerciseError(ValueError):
    """An exercise does not fit its notebook (an edit or ``until`` text not found once)."""


@dataclass(frozen=True)
class Exercise:
    """One exercise: ``key`` is "chapter.number", e.g. "02.3"."""

    key: str
    title: str
    edits: tuple[tuple[str, str], ...]
    until: str
    measure: str

    @property
    def chapter(self) -> str:
        return self.key.split(".")[0]


def load_exercises(path: str | os.PathLike) -> dict[str, Exercise]:
    """The exercises of ``book/exercises.toml``, by key, checked for the fields they need."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ExerciseError(f"cannot read the exercises file {path}: {err}") from err
    found = {}
    for number, item in enumerate(data.get("exercise", []), start=1):
        missing = {"key", "title", "until", "measure"} - set(item)
        if missing:
            raise ExerciseError(f"exercise {number} of {path} lacks {', '.join(sorted(missing))}")
        key = item["key"]
        chapter, _, index = key.partition(".")
        if not (len(chapter) == 2 and chapter.isdigit() and index.isdigit()):
            raise ExerciseError(f"exercise key must look like '02.3', got {key!r} in {path}")
        if key in found:
            raise ExerciseError(f"exercise {key} appears twice in {path}")
        edits = item.get("edits", [])
        if not all(
            isinstance(e, list) and len(e) == 2 and all(isinstance(t, str) for t in e)
            for e in edits
        ):
            raise ExerciseError(f"exercise {key}: every edit must be a pair of texts [old, new]")
        found[key] = Exercise(key, item["title"], tuple(map(tuple, edits)), item["until"],
                              item["measure"])  # fmt: skip
    return found


def edited_cells(exercise: Exercise, sources: list[str]) -> list[str]:
    """The code cells with the exercise's edits made, cut after the ``until`` cell, and the
    ``measure`` code appended as one more cell.

    Raises:
        ExerciseError: an old text occurs zero or several times in all cells together, or the
            ``until`` text is not in exactly one cell.
    """
    cells = list(sources)
    for old, new in exercise.edits:
        hits = [i for i, cell in enumerate(cells) for _ in range(cell.count(old))]
        if len(hits) != 1:
            raise ExerciseError(
                f"exercise {exercise.key}: the text to edit must occur once in the notebook's "
                f"code, found {len(hits)} times: {old[:60]!r}"
            )
        cells[hits[0]] = cells[hits[0]].replace(old, new)
    last = [i for i, cell in enumerate(cells) if exercise.until in cell]
    if len(last) != 1:
        raise ExerciseError(
            f"exercise {exercise.key}: the 'until' text must be in one code cell, "
            f"found in {len(last)}: {exercise.until[:60]!r}"
        )
    save = "\nfrom nbutils.exercises import save_answer\n\nsave_answer(answer)\n"
    return [*cells[: last[0] + 1], exercise.measure + save]


def save_answer(answer: dict, folder: str | os.PathLike | None = None) -> dict:
    """Write ``answer`` (name -> number, 0-d tensor or text) as JSON metrics into ``folder``
    (default ``$NBUTILS_REPORT_DIR``); return the metrics."""
    if not isinstance(answer, dict) or not answer:
        raise TypeError(f"answer must be a non-empty dict name -> value, got {answer!r}")
    metrics = {}
    for name, value in answer.items():
        if hasattr(value, "item"):
            value = value.item()
        if not isinstance(value, (int, float, str)) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            raise ValueError(f"answer {name!r} must be a finite number or text, got {value!r}")
        metrics[str(name)] = {"value": value}
    folder = Path(folder or os.environ.get("NBUTILS_REPORT_DIR", "."))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ANSWER_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def notebook_of(book: Path, chapter: str) -> Path:
    found = sorted(book.glob(f"{chapter}_*.ipynb"))
    if len(found) != 1:
        raise ExerciseError(f"expected one notebook {chapter}_*.ipynb in {book}, found {found}")
    return found[0]


def run_exercise(exercise: Exercise, book: Path, profile: str, runs: Path) -> dict:
    """Run one exercise in a fresh process; return its results entry."""
    notebook = notebook_of(book, exercise.chapter)
    cells = edited_cells(exercise, code_cells(notebook))
    out = runs / profile / exercise.key
    out.mkdir(parents=True, exist_ok=True)
    (out / ANSWER_FILE).unlink(missing_ok=True)
    (out / "cells.json").write_text(json.dumps(cells, indent=1) + "\n")
    env = {**os.environ, "NBUTILS_CKPT": str((runs / profile / "checkpoints").resolve())}
    cmd = [sys.executable, "-m", "nbutils.exercises", "--run-cells", str(out / "cells.json"),
           "--notebook", str(notebook), "--profile", profile, "--out", str(out)]  # fmt: skip
    started = time.perf_counter()
    with open(out / "log.txt", "wb") as log:
        code = subprocess.call(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    answer = out / ANSWER_FILE
    return {
        "title": exercise.title,
        "notebook": notebook.as_posix(),
        "status": "ok" if code == 0 and answer.exists() else "failed",
        "wall_seconds": round(time.perf_counter() - started, 1),
        "commit": git_commit(book),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "metrics": json.loads(answer.read_text()) if answer.exists() else {},
    }


def merge_entry(path: Path, profile: str, key: str, entry: dict) -> None:
    """Put one exercise's entry into ``results/exercises/<profile>.json`` (others kept)."""
    data = json.loads(path.read_text()) if path.exists() else {"profile": profile, "chapters": {}}
    data["chapters"][key] = entry
    data["chapters"] = dict(sorted(data["chapters"].items()))
    text = (json.dumps(data, indent=2) + "\n").encode()
    atomic_write(path, lambda f: f.write(text))  # a killed run never leaves half a file


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nbutils.exercises", description=__doc__)
    parser.add_argument("--profile", choices=PROFILES, default="cpu")
    parser.add_argument("--only", help="comma-separated keys, e.g. 02.3,07.1 (default: all)")
    parser.add_argument("--list", action="store_true", help="list the exercises and stop")
    parser.add_argument("--book", type=Path, default=Path("book"))
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--runs", type=Path, default=Path("runs/exercises"))
    parser.add_argument("--run-cells", type=Path, help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--notebook", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_cells:
        from nbutils.run import run_notebook

        cells = json.loads(args.run_cells.read_text())
        summary = run_notebook(args.notebook, args.out, args.profile, sources=cells)
        return 1 if summary["error"] else 0
    exercises = load_exercises(args.book / "exercises.toml")
    keys = args.only.split(",") if args.only else list(exercises)
    unknown = [k for k in keys if k not in exercises]
    if unknown:
        raise SystemExit(f"unknown exercise(s) {', '.join(unknown)}; known: {', '.join(exercises)}")
    for key in keys:
        print(f"{key}  {exercises[key].title}")
        if args.list:
            continue
        entry = run_exercise(exercises[key], args.book, args.profile, args.runs)
        if entry["status"] != "ok":  # keep what an earlier run measured
            print(f"    FAILED after {entry['wall_seconds']:.0f} s; see "
                  f"{args.runs / args.profile / key / 'log.txt'}")  # fmt: skip
            continue
        merge_entry(args.results / "exercises" / f"{args.profile}.json", args.profile, key, entry)
        print(f"    {entry['status']} in {entry['wall_seconds']:.0f} s: "
              + "; ".join(f"{n} = {m['value']}" for n, m in entry["metrics"].items()))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
