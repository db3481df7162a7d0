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


def test_archive_packs_results_and_every_run_output_and_merges_back(tmp_path, monkeypatch):
    import tarfile

    monkeypatch.chdir(tmp_path)
    (tmp_path / "book").mkdir()
    _notebook(
        tmp_path / "book" / "03_a.ipynb",
        "import matplotlib.pyplot as plt\n"
        "from nbutils.report import report\n"
        "print('hello from the notebook')\n"
        "plt.plot([1, 2])\n"
        "report('03', {'nll': {'value': 81.5, 'unit': 'nats'}})",
    )
    archive = tmp_path / "out" / "smoke.tar.gz"
    assert results.main(["--profile", "smoke", "--archive", str(archive)]) == 0
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        log = tar.extractfile("runs/smoke/03/log.txt").read().decode()
    assert {"results/smoke.json", "results/smoke.md", "runs/smoke/03/report_03.json"} <= names
    assert "runs/smoke/03/cell00_fig1.png" in names and "runs/smoke/03/timings.json" in names
    assert not any("checkpoints" in n for n in names)
    assert "hello from the notebook" in log

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert results.main(["--profile", "smoke", "--merge", str(archive)]) == 0
    merged = json.loads((elsewhere / "results" / "smoke.json").read_text())
    assert merged["chapters"]["03"]["metrics"]["nll"]["value"] == 81.5
    with pytest.raises(SystemExit, match="no results/cpu.json"):
        results.main(["--profile", "cpu", "--merge", str(archive)])


def test_compare_finds_changed_numbers_and_skips_times(tmp_path, capsys):
    def entry(nll, seconds):
        metrics = {"nll": {"value": nll, "unit": "nats"}, "time": {"value": seconds, "unit": "s"}}
        return {"profile": "smoke", "chapters": {"01": {"metrics": metrics}}}

    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps(entry(90.0, 1.0)))
    b.write_text(json.dumps(entry(90.0, 7.0)))
    c.write_text(json.dumps(entry(90.5, 1.0)))
    assert results.main(["--compare", str(a), str(b)]) == 0
    assert "identical: 2 metrics" in capsys.readouterr().out
    assert results.main(["--compare", str(a), str(c)]) == 1
    assert "01 'nll': 90.0 != 90.5" in capsys.readouterr().out
    assert results.compare({"chapters": {}}, entry(1.0, 1.0)) == ["chapter 01: only in the second"]


def test_shared_checkpoints_let_a_later_chapter_load_an_earlier_ones(tmp_path, monkeypatch):
    """With --checkpoints DIR the chapters run in the order given, in that one folder, kept
    across runs; the entries say so. Without it each chapter starts from an empty folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "book").mkdir()
    _notebook(
        tmp_path / "book" / "05_a.ipynb",
        "from nbutils.runtime import checkpoint_root\n"
        "checkpoint_root().mkdir(parents=True, exist_ok=True)\n"
        "(checkpoint_root() / 'model.pt').write_text('trained')\n"
        "from nbutils.report import report\n"
        "report('05', {'y': {'value': 2.0}})",
    )
    _notebook(
        tmp_path / "book" / "06_b.ipynb",
        "from nbutils.report import report\n"
        "from nbutils.runtime import checkpoint_root\n"
        "assert (checkpoint_root() / 'model.pt').read_text() == 'trained'\n"
        "report('06', {'x': {'value': 1.0}})",
    )
    assert results.main(["--profile", "smoke", "--chapters", "05,06"]) == 1  # 06 finds nothing
    shared = ["--checkpoints", "runs/shared"]
    assert results.main(["--profile", "smoke", "--chapters", "06,05", *shared]) == 1  # in order
    assert results.main(["--profile", "smoke", "--chapters", "06", *shared]) == 0  # kept
    saved = json.loads((tmp_path / "results" / "smoke.json").read_text())["chapters"]
    assert saved["06"]["metrics"]["x"]["value"] == 1.0
    assert "shared folder shared/" in saved["06"]["note"]
    (tmp_path / "runs" / "smoke" / "kept").mkdir()
    (tmp_path / "runs" / "smoke" / "kept" / "model.pt").write_text("weights")
    archive = tmp_path / "out.tar.gz"
    assert results.main(["--profile", "smoke", "--chapters", "05", "--archive", str(archive)]) == 0
    import tarfile

    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert not any("checkpoints" in name or name.endswith(".pt") for name in names), names
