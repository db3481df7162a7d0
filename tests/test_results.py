"""`make results` on a tiny book written by the test itself."""

import json

import pytest

from nbutils import results


def _notebook(path, source):
    nb = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {},
        "cells": [
            {
                "cell_type": "code",
                "metadata": {},
                "execution_count": None,
                "outputs": [],
                "source": source,
            }
        ],
    }
    path.write_text(json.dumps(nb))


def test_results_run_notebooks_and_merge(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    book = tmp_path / "book"
    book.mkdir()
    _notebook(
        book / "03_a.ipynb",
        "from nbutils.report import report\n"
        "report('03', {'nll': {'value': 81.5, 'unit': 'nats', 'paper': 81.3}})",
    )
    _notebook(book / "04_b.ipynb", "raise ValueError('broken chapter')")
    assert results.main(["--profile", "smoke", "--chapters", "3", "--note", "shared GPU"]) == 0
    saved = json.loads((tmp_path / "results" / "smoke.json").read_text())
    entry = saved["chapters"]["03"]
    assert entry["status"] == "ok" and entry["metrics"]["nll"]["value"] == 81.5
    assert entry["wall_seconds"] > 0 and entry["machine"]["torch"]
    assert entry["note"] == "shared GPU"
    table = (tmp_path / "results" / "smoke.md").read_text()
    assert "| nll | 81.5 | nats | 81.3 |  |  |" in table and "Note: shared GPU" in table

    assert results.main(["--profile", "smoke", "--chapters", "04"]) == 1  # a failure is loud
    saved = json.loads((tmp_path / "results" / "smoke.json").read_text())
    assert saved["chapters"]["03"]["metrics"]  # other chapters are kept
    assert saved["chapters"]["04"]["status"] == "failed"

    other = tmp_path / "elsewhere.json"
    other.write_text(
        json.dumps({"profile": "smoke", "chapters": {"05": {**entry, "notebook": "x"}}})
    )
    assert results.main(["--profile", "smoke", "--merge", str(other)]) == 0
    saved = json.loads((tmp_path / "results" / "smoke.json").read_text())
    assert sorted(saved["chapters"]) == ["03", "04", "05"]
    with pytest.raises(SystemExit, match="not 'cpu'"):
        results.main(["--profile", "cpu", "--merge", str(other)])


def test_unknown_chapter_is_an_error(tmp_path):
    (tmp_path / "book").mkdir()
    with pytest.raises(SystemExit, match="no notebook for chapter"):
        results.main(["--profile", "smoke", "--book", str(tmp_path / "book"), "--chapters", "09"])
