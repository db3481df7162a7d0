"""The headless runner on tiny notebooks written by the test itself."""

import json
import subprocess
import sys

import pytest

from nbutils.run import NotebookError, code_cells, run_notebook


def _notebook(path, *cells, markdown="# title"):
    nb = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {},
        "cells": [{"cell_type": "markdown", "metadata": {}, "source": markdown}]
        + [
            {
                "cell_type": "code",
                "metadata": {},
                "execution_count": None,
                "outputs": [],
                "source": c,
            }
            for c in cells
        ],
    }
    path.write_text(json.dumps(nb))
    return path


def test_runner_executes_cells_saves_figures_reports_and_timings(tmp_path):
    nb = _notebook(
        tmp_path / "tiny.ipynb",
        "from nbutils.runtime import pick, profile\nn = pick(smoke=3, cpu=30, gpu=300)",
        "from nbutils import plot\nfig, ax = plot.subplots()\nax.plot([0, n], [0, 1])",
        "from nbutils.report import report\nreport('05', {'n': n, 'profile': profile()})",
        "class Shown:\n    def _repr_html_(self):\n        return '<b>hi</b>'\n"
        "    def __repr__(self):\n        return 'Shown()'\ndisplay(Shown())\nn * 2",
    )
    out = tmp_path / "out"
    summary = run_notebook(nb, out, profile="smoke")
    assert summary["error"] is None and len(summary["cells"]) == 4
    assert (out / "cell01_fig1.png").stat().st_size > 1000
    report = json.loads((out / "report_05.json").read_text())
    assert report["metrics"]["n"]["value"] == 3 and report["profile"] == "smoke"
    assert (out / "cell03_out1.html").read_text() == "<b>hi</b>"
    timings = json.loads((out / "timings.json").read_text())
    assert [c["cell"] for c in timings["cells"]] == [0, 1, 2, 3]
    assert all(c["seconds"] >= 0 for c in timings["cells"])


def test_runner_stops_at_the_failing_cell(tmp_path):
    nb = _notebook(tmp_path / "bad.ipynb", "x = 1", "raise RuntimeError('boom')", "y = 2")
    summary = run_notebook(nb, tmp_path / "out", profile="smoke")
    assert summary["error"] == "cell 1: RuntimeError: boom"
    assert len(summary["cells"]) == 2


def test_runner_rejects_magics(tmp_path):
    nb = _notebook(tmp_path / "magic.ipynb", "x = 1", "if True:\n    !pip install foo")
    with pytest.raises(NotebookError, match="magic"):
        code_cells(nb)


def test_command_line_exit_codes(tmp_path):
    good = _notebook(tmp_path / "good.ipynb", "print('hello')")
    bad = _notebook(tmp_path / "bad.ipynb", "1 / 0")
    run = [sys.executable, "-m", "nbutils.run"]
    ok = subprocess.run(
        [*run, str(good), "--profile", "smoke", "--out", str(tmp_path / "a")],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and "hello" in ok.stdout
    fail = subprocess.run(
        [*run, str(bad), "--profile", "smoke", "--out", str(tmp_path / "b")],
        capture_output=True,
        text=True,
    )
    assert fail.returncode == 1 and "ZeroDivisionError" in fail.stderr
    unknown = subprocess.run([*run, str(good), "--profile", "fast"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr


def test_runner_needs_no_jupyter(tmp_path):
    """As on a GPU machine: IPython, ipywidgets and Jupyter are not importable."""
    nb = _notebook(
        tmp_path / "plain.ipynb",
        "from tqdm.auto import tqdm\nfrom nbutils import plot\n"
        "total = sum(i for i in tqdm(range(5)))\nplot.frame_slider([[[0.0, 1.0]]], ['only'])",
    )
    blocker = (
        "import sys\n"
        "for name in ('IPython', 'ipywidgets', 'ipykernel', 'jupyter_client', 'nbformat'):\n"
        "    sys.modules[name] = None  # importing them now fails\n"
        "from nbutils.run import main\n"
        f"sys.exit(main([{str(nb)!r}, '--profile', 'smoke', '--out', {str(tmp_path / 'o')!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o" / "cell00_out1.html").exists()
