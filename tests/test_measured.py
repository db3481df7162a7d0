"""Numbers that cannot drift: every measured number the notes quote comes from results/*.json
through the `measured` role or the `results-table` directive, every reference resolves, and the
README's table is exactly what the results files generate."""

import json
import re
from pathlib import Path

import pytest

from nbutils import measured

ROOT = Path(__file__).resolve().parents[1]
NOTES = sorted((ROOT / "notes").glob("*.md"))
ROLE = re.compile(r"\{measured\}`([^`]+)`")
TABLE = re.compile(r"```\{results-table\}\s*(\d\d)\n(.*?)```", re.DOTALL)


NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))


def _markdown(path: Path) -> str:
    """A note's text, or the markdown cells of a notebook (the exercises' answers quote there)."""
    if path.suffix != ".ipynb":
        return path.read_text()
    cells = json.loads(path.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def references():
    for note in NOTES:
        for ref in ROLE.findall(note.read_text()):
            yield pytest.param(ref, id=f"{note.name}:{ref}")
    for notebook in NOTEBOOKS:
        for _, ref in measured.NOTEBOOK_NUMBER.findall(_markdown(notebook)):
            yield pytest.param(ref, id=f"{notebook.name}:{ref}")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_the_numbers_in_notebooks_are_those_of_the_results_files(notebook):
    stale = measured.stale_notebook_numbers(ROOT, notebook)
    assert not stale, (
        f"{notebook.name}: numbers differ from results/ (found, expected, source): {stale}; "
        "run `python -m nbutils.results --readme`"
    )


def test_fill_notebook_rewrites_only_the_marked_numbers(tmp_path):
    (tmp_path / "results").mkdir()
    data = {"profile": "cpu", "chapters": {"01": {"metrics": {"nll": {"value": 81.234}}}}}
    (tmp_path / "results" / "cpu.json").write_text(json.dumps(data))
    cell = {"cell_type": "markdown", "metadata": {}, "source": ["It scores (80<!-- measured: "
            "cpu/01/nll|.1f -->) nats,\n", "not 80.\n"]}  # fmt: skip
    path = tmp_path / "n.ipynb"
    path.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4}))
    assert measured.stale_notebook_numbers(tmp_path, path) == [("80", "81.2", "cpu/01/nll|.1f")]
    assert measured.fill_notebook(tmp_path, path)
    text = "".join(json.loads(path.read_text())["cells"][0]["source"])
    assert text == "It scores (81.2<!-- measured: cpu/01/nll|.1f -->) nats,\nnot 80.\n"
    assert not measured.stale_notebook_numbers(tmp_path, path)
    assert not measured.fill_notebook(tmp_path, path), "a second fill changes nothing"


@pytest.mark.parametrize("ref", list(references()))
def test_every_measured_reference_resolves(ref):
    assert measured.measured(ROOT, ref)


def test_every_results_table_names_metrics_that_exist():
    tables = [(n, m) for note in NOTES for n, m in TABLE.findall(note.read_text())]
    assert tables, "the notes should show their measured numbers in results tables"
    for chapter, body in tables:
        names = [line.strip() for line in body.splitlines() if line.strip()]
        header, rows = measured.table_rows(ROOT, chapter, names)
        assert len(rows) == len(names) and header[1:3] == ["`cpu`", "`gpu`"]


def test_the_readme_table_is_generated_from_the_results_files():
    text = (ROOT / "README.md").read_text()
    start = text.index(measured.README_BEGIN) + len(measured.README_BEGIN) + 1
    block = text[start : text.index(measured.README_END)].strip()
    headlines = json.loads((ROOT / "results" / "headlines.json").read_text())
    assert block == measured.readme_table(ROOT, headlines), (
        "README's results table differs from results/*.json: run `python -m nbutils.results "
        "--readme`"
    )


def test_lookups_render_and_unknown_names_list_what_exists(tmp_path):
    (tmp_path / "results").mkdir()
    entry = {"wall_seconds": 12.5, "metrics": {"nll": {"value": 81.234, "unit": "nats"}}}
    data = {"profile": "gpu", "chapters": {"01": entry}}
    (tmp_path / "results" / "gpu.json").write_text(json.dumps(data))
    assert measured.measured(tmp_path, "gpu/01/nll") == "81.23"
    assert measured.measured(tmp_path, "gpu/01/nll|.1f") == "81.2"
    assert measured.measured(tmp_path, "gpu/01/@wall_seconds|.0f") == "12"
    with pytest.raises(measured.MissingResult, match="no metric 'nlll'; it has: nll"):
        measured.measured(tmp_path, "gpu/01/nlll")
    with pytest.raises(measured.MissingResult, match="no chapter '02'"):
        measured.measured(tmp_path, "gpu/02/nll")
    with pytest.raises(measured.MissingResult, match="make results PROFILE=cpu"):
        measured.measured(tmp_path, "cpu/01/nll")
    with pytest.raises(measured.MissingResult, match="profile/chapter/metric"):
        measured.measured(tmp_path, "gpu-01-nll")
    assert measured.render(1234567) == "1,234,567" and measured.render(None) == "n/a"


def test_no_note_quotes_the_measured_paragraphs_by_hand():
    """The old hand-typed result paragraphs ("What we measured in the `gpu` profile ...,
    commit ...") must not come back: numbers go through the results files."""
    for note in NOTES:
        text = note.read_text()
        assert "What we measured in the `gpu` profile" not in text, note.name
        assert not re.search(r"commit `[0-9a-f]{7}", text), f"{note.name} names a commit"


def test_roles_stay_where_they_render():
    """A `|` format inside a role would split a Markdown table row, and notebooks are read in
    Jupyter and Colab too, where a role shows as raw text."""
    for note in NOTES:
        for line in note.read_text().splitlines():
            if line.lstrip().startswith("|"):
                bad = [ref for ref in ROLE.findall(line) if "|" in ref]
                assert not bad, f"{note.name}: a format spec inside a table row: {bad}"
    for notebook in sorted((ROOT / "book").glob("*.ipynb")):
        assert "{measured}" not in notebook.read_text(), f"{notebook.name} uses the role"


def test_a_marker_that_follows_no_number_is_refused(tmp_path):
    (tmp_path / "results").mkdir()
    data = {"profile": "cpu", "chapters": {"01": {"metrics": {"nll": {"value": 81.234}}}}}
    (tmp_path / "results" / "cpu.json").write_text(json.dumps(data))
    for text in (
        "about **81.2**<!-- measured: cpu/01/nll|.1f -->",
        "81.2 <!-- measured: cpu/01/nll -->",
    ):
        cell = {"cell_type": "markdown", "metadata": {}, "source": [text]}
        path = tmp_path / "n.ipynb"
        path.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4}))
        with pytest.raises(measured.MissingResult, match="must follow a number directly"):
            measured.stale_notebook_numbers(tmp_path, path)


def _banner_times(notebook: Path) -> dict[str, str]:
    """The ``expected`` times a notebook's ``banner(...)`` call states, per profile."""
    import ast

    cells = json.loads(notebook.read_text())["cells"]
    for cell in cells:
        if cell["cell_type"] != "code" or "banner(" not in "".join(cell["source"]):
            continue
        for node in ast.walk(ast.parse("".join(cell["source"]))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "banner":
                argument = node.args[0] if node.args else node.keywords[0].value
                return ast.literal_eval(argument)
    raise AssertionError(f"{notebook.name} has no banner(...) call")


def _minutes(text: str) -> float | None:
    """The first time in a banner text ("about 5 minutes", "at most 9 min", "30 s"), in minutes."""
    match = re.search(r"(\d+(?:\.\d+)?)\s*(min|s\b|seconds?)", text)
    if match is None:
        return None
    value = float(match.group(1))
    return value if match.group(2) == "min" else value / 60


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_banner_times_agree_with_the_measured_runs(notebook):
    """A notebook's announced time per profile is within 1.3x of its last measured run, and
    a profile never measured says so ("not measured" or "estimated")."""
    chapter = notebook.name[:2]
    for profile, text in _banner_times(notebook).items():
        if profile == "smoke":
            continue
        runs = json.loads((ROOT / "results" / f"{profile}.json").read_text())["chapters"]
        run = runs.get(chapter)
        if run is None or run.get("status") != "ok":
            assert "not measured" in text or "estimated" in text, (
                f"{notebook.name}: the {profile} banner says {text!r} but results/{profile}.json "
                "has no run of this chapter"
            )
            continue
        claimed, measured_min = _minutes(text), run["wall_seconds"] / 60
        if claimed is None or "a few seconds" in text:
            assert measured_min < 0.5, f"{notebook.name}: {text!r} vs {measured_min:.1f} min"
            continue
        assert 1 / 1.3 <= measured_min / claimed <= 1.3, (
            f"{notebook.name}: the {profile} banner says {text!r}, the last run took "
            f"{measured_min:.1f} min (results/{profile}.json)"
        )
