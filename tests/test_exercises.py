"""The exercises' measured answers: every exercise in book/exercises.toml still fits its
notebook, each notebook's "Try it yourself" list matches the file, every answer is recorded,
and the runner refuses what does not fit."""

import ast
import json
import re
from pathlib import Path

import pytest

from nbutils import exercises
from nbutils.exercises import Exercise, ExerciseError, edited_cells, load_exercises, save_answer
from nbutils.run import code_cells

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
ALL = load_exercises(BOOK / "exercises.toml")


def _sets_answer(source: str) -> bool:
    tree = ast.parse(source)
    return any(
        isinstance(node, ast.Assign)
        and any(getattr(t, "id", None) == "answer" for t in node.targets)
        for node in tree.body
    )


@pytest.mark.parametrize("key", list(ALL))
def test_every_exercise_fits_its_notebook(key):
    exercise = ALL[key]
    notebook = exercises.notebook_of(BOOK, exercise.chapter)
    cells = edited_cells(exercise, code_cells(notebook))  # raises if an edit does not fit
    original = code_cells(notebook)
    assert len(cells) <= len(original) + 1
    for old, new in exercise.edits:
        assert old != new, f"{key}: an edit that changes nothing"
    assert _sets_answer(exercise.measure), f"{key}: measure must assign `answer`"


def _listed_exercises(notebook: Path) -> list[int]:
    """Numbers of the exercises listed after the notebook's "Try it yourself" heading."""
    cells = json.loads(notebook.read_text())["cells"]
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    section = text[text.index("## Try it yourself") :]
    return [int(n) for n in re.findall(r"^(\d+)\. \*\*", section, flags=re.MULTILINE)]


@pytest.mark.parametrize("notebook", sorted(BOOK.glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.stem)
def test_each_listed_exercise_is_measured_and_answered(notebook):
    chapter = notebook.name[:2]
    listed = _listed_exercises(notebook)
    keys = sorted(int(k.split(".")[1]) for k in ALL if k.startswith(chapter + "."))
    assert listed == keys, f"{notebook.name} lists exercises {listed}, exercises.toml has {keys}"
    results = json.loads((ROOT / "results" / "exercises" / "cpu.json").read_text())["chapters"]
    cells = json.loads(notebook.read_text())["cells"]
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    for number in keys:
        key = f"{chapter}.{number}"
        assert results[key]["status"] == "ok" and results[key]["metrics"], key
        assert f"exercises:cpu/{key}/" in text, f"{notebook.name}: no measured answer for {key}"
    assert text.count("{dropdown}") >= len(keys), f"{notebook.name}: answers must be collapsed"


def _exercise(**kw):
    base = dict(key="00.9", title="t", edits=(), until="b = 2", measure="answer = {'b': b}")
    return Exercise(**{**base, **kw})


def test_edits_are_made_and_the_rest_is_cut():
    cells = ["a = 1", "b = 2", "c = 3"]
    out = edited_cells(_exercise(edits=(("a = 1", "a = 5"),)), cells)
    assert out[:2] == ["a = 5", "b = 2"] and len(out) == 3
    assert out[2].startswith("answer = {'b': b}") and "save_answer(answer)" in out[2]
    assert cells[0] == "a = 1", "the original cells must not change"


@pytest.mark.parametrize(
    ("cells", "kw", "message"),
    [
        (["a = 1", "b = 2"], dict(edits=(("x = 0", "x = 1"),)), "found 0 times"),
        (["a = 1; a = 1", "b = 2"], dict(edits=(("a = 1", "a = 2"),)), "found 2 times"),
        (["a = 1"], {}, "found in 0"),
        (["b = 2", "b = 2"], {}, "found in 2"),
    ],
)
def test_an_exercise_that_does_not_fit_is_refused(cells, kw, message):
    with pytest.raises(ExerciseError, match=message):
        edited_cells(_exercise(**kw), cells)


GOOD = '[[exercise]]\nkey = "02.1"\ntitle = "x"\nuntil = "y"\nmeasure = "z"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[exercise]]\nkey = "02.1"\ntitle = "x"\nuntil = "y"\n', "lacks measure"),
        ('[[exercise]]\nkey = "2.1"\ntitle = "x"\nuntil = "y"\nmeasure = "z"\n', "like '02.3'"),
        (GOOD * 2, "twice"),
        ("[[exercise]\n", "cannot read"),
        (GOOD + 'edits = [["a"]]\n', "pair"),
    ],
)
def test_a_bad_exercises_file_is_refused(tmp_path, text, message):
    path = tmp_path / "exercises.toml"
    path.write_text(text)
    with pytest.raises(ExerciseError, match=message):
        load_exercises(path)


def test_answers_are_saved_as_plain_numbers(tmp_path):
    import torch

    metrics = save_answer({"x": torch.tensor(1.5), "n": 3, "s": "a / b"}, tmp_path)
    assert metrics == {"x": {"value": 1.5}, "n": {"value": 3}, "s": {"value": "a / b"}}
    assert json.loads((tmp_path / "answer.json").read_text()) == metrics
    with pytest.raises(ValueError, match="finite number"):
        save_answer({"x": float("nan")}, tmp_path)
    with pytest.raises(ValueError, match="finite number"):
        save_answer({"x": [1, 2]}, tmp_path)
    with pytest.raises(TypeError, match="non-empty dict"):
        save_answer({}, tmp_path)


def test_one_exercise_runs_end_to_end_and_is_recorded(tmp_path):
    """Chapter 01's exercise 4 needs only the imports cell: the runner's whole path, in seconds."""
    results = tmp_path / "results"
    code = exercises.main(
        [
            "--profile",
            "smoke",
            "--only",
            "01.4",
            "--book",
            str(BOOK),
            "--results",
            str(results),
            "--runs",
            str(tmp_path / "runs"),
        ]  # fmt: skip
    )
    assert code == 0
    entry = json.loads((results / "exercises" / "smoke.json").read_text())["chapters"]["01.4"]
    assert entry["status"] == "ok", (tmp_path / "runs" / "smoke" / "01.4" / "log.txt").read_text()
    honest = entry["metrics"]["sum of p over the 16 images, causal mask"]["value"]
    broken = entry["metrics"]["sum of p over the 16 images, centre visible"]["value"]
    assert abs(honest - 1) < 1e-9 and abs(broken - 1) > 1e-3
