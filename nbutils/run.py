"""Run a notebook headless, with no Jupyter: ``python -m nbutils.run NOTEBOOK [options]``.

Code cells run in order in one namespace, in the notebook's folder, with matplotlib on the
non-interactive Agg backend. After each cell every open figure is saved to the output folder
(``cellNN_figK.png``) and closed; the value of a cell's last expression, and anything passed
to ``display(...)``, is printed as text and, if it has an HTML form, saved as
``cellNN_outK.html``. ``report(...)`` writes its JSON there too (``NBUTILS_REPORT_DIR``).
``timings.json`` records the wall time of every cell. This is how notebooks run on a GPU
machine that has no Jupyter installed.

Options:
    --profile {smoke,cpu,gpu}   run profile (default: the environment's, see nbutils.runtime)
    --out DIR                   where figures, outputs, report and timings go (default runs/NAME)
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
import traceback
from pathlib import Path

from nbutils.runtime import PROFILES


class NotebookError(RuntimeError):
    """The notebook cannot be run headless (unreadable, or it uses IPython magics)."""


def code_cells(path: Path) -> list[str]:
    """The sources of a notebook's code cells, in order; rejects shell and % magics."""
    try:
        notebook = json.loads(Path(path).read_text())
        cells = notebook["cells"]
    except (OSError, ValueError, KeyError) as err:
        raise NotebookError(f"{path} is not a readable .ipynb notebook ({err})") from err
    sources = []
    for index, cell in enumerate(c for c in cells if c.get("cell_type") == "code"):
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        for line in source.splitlines():
            if line.lstrip().startswith(("!", "%")):
                raise NotebookError(
                    f"code cell {index} of {path} uses an IPython magic ({line.strip()!r}); "
                    "the headless runner runs plain Python only"
                )
        sources.append(source)
    return sources


class _Outputs:
    """Saves what a cell shows: figures, HTML representations, text."""

    def __init__(self, folder: Path):
        self.folder, self.cell, self.count = folder, 0, 0

    def display(self, *objects) -> None:
        for obj in objects:
            self.count += 1
            if hasattr(obj, "_repr_html_"):
                name = f"cell{self.cell:02d}_out{self.count}.html"
                (self.folder / name).write_text(obj._repr_html_())
            print(repr(obj) if not isinstance(obj, str) else obj)

    def save_figures(self) -> list[str]:
        import matplotlib.pyplot as plt

        names = []
        for k, number in enumerate(plt.get_fignums(), start=1):
            name = f"cell{self.cell:02d}_fig{k}.png"
            plt.figure(number).savefig(self.folder / name, dpi=90, bbox_inches="tight")
            names.append(name)
        plt.close("all")
        return names


def _execute(source: str, namespace: dict, outputs: _Outputs, filename: str) -> None:
    """Run a cell; show its last expression's value as Jupyter would (unless it ends in ';')."""
    tree = ast.parse(source, filename=filename)
    last = tree.body[-1] if tree.body else None
    shows_last = isinstance(last, ast.Expr) and not source.rstrip().endswith(";")
    if shows_last:
        tree.body = tree.body[:-1]
    exec(compile(tree, filename, "exec"), namespace)  # noqa: S102 (running the user's notebook)
    if shows_last:
        value = eval(compile(ast.Expression(last.value), filename, "eval"), namespace)  # noqa: S307
        if value is not None:
            outputs.display(value)


def run_notebook(
    path: str | os.PathLike,
    out: str | os.PathLike,
    profile: str | None = None,
    sources: list[str] | None = None,
) -> dict:
    """Run every code cell of ``path``; write figures, outputs and timings under ``out``.

    ``sources`` replaces the notebook's code cells (still run in its folder): how
    :mod:`nbutils.exercises` runs an edited copy.

    Returns:
        ``{"notebook", "profile", "cells": [{"cell", "seconds", "figures"}], "seconds", "error"}``.
    """
    path, out = Path(path).resolve(), Path(out).resolve()
    if profile is not None:
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
        os.environ["NBUTILS_PROFILE"] = profile
    os.environ["MPLBACKEND"] = "Agg"
    os.environ["NBUTILS_REPORT_DIR"] = str(out)
    out.mkdir(parents=True, exist_ok=True)
    sources = code_cells(path) if sources is None else sources
    import matplotlib

    matplotlib.use("Agg")
    outputs = _Outputs(out)
    namespace = {"__name__": "__main__", "display": outputs.display}
    summary = {
        "notebook": str(path),
        "profile": os.environ.get("NBUTILS_PROFILE"),
        "cells": [],
        "seconds": 0.0,
        "error": None,
    }
    cwd, started = os.getcwd(), time.perf_counter()
    os.chdir(path.parent)
    sys.path.insert(0, str(path.parent))
    try:
        for index, source in enumerate(sources):
            outputs.cell, outputs.count = index, 0
            print(f"--- cell {index + 1}/{len(sources)}", file=sys.stderr, flush=True)
            tick = time.perf_counter()
            try:
                _execute(source, namespace, outputs, f"<{path.name} cell {index}>")
            except BaseException as err:  # report, then stop like Jupyter's "run all"
                summary["error"] = f"cell {index}: {type(err).__name__}: {err}"
                traceback.print_exc()
                break
            finally:
                figures = outputs.save_figures()
                seconds = round(time.perf_counter() - tick, 3)
                summary["cells"].append({"cell": index, "seconds": seconds, "figures": figures})
    finally:
        os.chdir(cwd)
        sys.path.remove(str(path.parent))
        summary["seconds"] = round(time.perf_counter() - started, 3)
        (out / "timings.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nbutils.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--profile", choices=PROFILES)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    out = args.out or Path("runs") / args.notebook.stem
    try:
        summary = run_notebook(args.notebook, out, args.profile)
    except NotebookError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    status = "FAILED " + summary["error"] if summary["error"] else "ok"
    print(
        f"{args.notebook}: {status} in {summary['seconds']:.1f} s; outputs in {out}",
        file=sys.stderr,
    )
    return 1 if summary["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
