"""The repository address lives in _config.yml; `python -m nbutils.repository set URL` moves
every copy of it (the notebooks' Colab cells) in one step, and leaves the rest untouched."""

import json
import shutil
from pathlib import Path

import pytest

from nbutils import repository

ROOT = Path(__file__).resolve().parents[1]


def _copy_book(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    shutil.copytree(ROOT / "book", tmp_path / "book", ignore=shutil.ignore_patterns("*.toml"))
    return tmp_path


def test_set_address_moves_every_copy(tmp_path):
    root = _copy_book(tmp_path)
    old, new = repository.address(root), "https://github.com/someone-else/my-book"
    assert old == repository.address()  # the repository's own config
    before = {p.name: json.loads(p.read_text()) for p in (root / "book").glob("*.ipynb")}
    changed = repository.set_address(new + ".git", root)
    assert repository.address(root) == new
    assert {p.name for p in changed} == {"_config.yml", *before}
    for path in (root / "book").glob("*.ipynb"):
        after = json.loads(path.read_text())
        text = json.dumps(after)
        assert new in text and old not in text, path.name
        unchanged = [c for c, d in zip(before[path.name]["cells"], after["cells"], strict=True)
                     if "google.colab" not in "".join(c["source"])]  # fmt: skip
        assert all(c in after["cells"] for c in unchanged)  # only the set-up cells moved
    assert repository.set_address(new, root) == []  # idempotent


def test_set_address_refuses_what_is_not_a_github_repository(tmp_path):
    root = _copy_book(tmp_path)
    for bad in ("github.com/a/b", "https://gitlab.com/a/b", "https://github.com/a"):
        with pytest.raises(ValueError, match="expected a GitHub address"):
            repository.set_address(bad, root)
    assert repository.address(root) == repository.address()  # nothing was written
