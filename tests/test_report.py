import json

import pytest

from nbutils.report import report


def test_report_writes_json_and_renders(tmp_path, monkeypatch):
    monkeypatch.setenv("NBUTILS_PROFILE", "smoke")
    r = report(
        "07",
        {
            "FD": {"value": 3.25, "unit": "", "paper": 2.58, "source": "Liu 2022"},
            "steps": 4,
            "broken": float("nan"),
        },
        out=tmp_path,
    )
    saved = json.loads((tmp_path / "report_07.json").read_text())
    assert saved["profile"] == "smoke" and saved["chapter"] == "07"
    assert saved["metrics"]["FD"]["value"] == 3.25 and saved["metrics"]["FD"]["paper"] == 2.58
    assert saved["metrics"]["steps"]["value"] == 4
    assert saved["metrics"]["broken"]["value"] is None  # NaN is not valid JSON
    assert "Liu 2022" in r._repr_html_() and "3.25" in repr(r)


def test_report_uses_the_environment_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("NBUTILS_REPORT_DIR", str(tmp_path))
    report("01", {"x": 1.0})
    assert (tmp_path / "report_01.json").exists()


@pytest.mark.parametrize(
    ("chapter", "metrics", "message"),
    [
        ("1", {"x": 1}, "two digits"),
        ("01", {"x": {"val": 1}}, "'value'"),
        ("01", {"x": {"value": 1, "unit": "s", "paper_value": 2}}, "unknown fields"),
    ],
)
def test_report_rejects_bad_input(chapter, metrics, message):
    with pytest.raises(ValueError, match=message):
        report(chapter, metrics)
