"""The notebooks as committed, and the table of contents.

Notebooks are committed without outputs (the book build and the tests execute them), use no
shell or ``%`` magics, install the package on Colab from the repository named in
``_config.yml``, show progress with ``tqdm.auto``; every note and notebook is in ``_toc.yml``
and every entry there exists.
"""

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
NOTES = sorted((ROOT / "notes").glob("*.md"))

MAGIC = re.compile(r"^\s*[!%]")
GITHUB_URL = re.compile(r"https?://github\.com/[^\s\"'@#{}]+")
TQDM_IMPORT = re.compile(
    r"^\s*(?:from\s+(tqdm[\w.]*)\s+import|import\s+(tqdm[\w.]*))", re.MULTILINE
)


def _config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def _normal_url(url: str) -> str:
    return url.strip().removesuffix("/").removesuffix(".git")


def _cells(path: Path, kind: str | None = None) -> list[dict]:
    cells = json.loads(path.read_text())["cells"]
    return [c for c in cells if kind is None or c["cell_type"] == kind]


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _toc_files(entries: list[dict]) -> list[str]:
    found = []
    for entry in entries:
        if "file" in entry:
            found.append(entry["file"])
        found += _toc_files(entry.get("sections", []) + entry.get("chapters", []))
        for part in entry.get("parts", []):
            found += _toc_files(part.get("chapters", []))
    return found


def _toc() -> dict:
    return yaml.safe_load((ROOT / "_toc.yml").read_text())


def _listed() -> list[str]:
    """Every file named in _toc.yml (without suffix), root first."""
    toc = _toc()
    return [toc["root"]] + _toc_files(toc.get("parts", []) + toc.get("chapters", []))


def _ids(paths):
    return [p.name for p in paths]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    dirty = [
        i
        for i, cell in enumerate(nb["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count"))
    ]
    assert not dirty, (
        f"{path.name}: code cells {dirty} have outputs or execution counts; clear them "
        "(Jupyter: Edit > Clear Outputs of All Cells) before committing"
    )
    assert "widgets" not in nb.get("metadata", {}), (
        f"{path.name}: notebook metadata holds saved widget state; clear outputs before committing"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_no_shell_or_magic_lines(path):
    bad = [
        f"cell {i}: {line.strip()}"
        for i, cell in enumerate(_cells(path))
        if cell["cell_type"] == "code"
        for line in _source(cell).splitlines()
        if MAGIC.match(line)
    ]
    assert not bad, (
        f"{path.name}: shell or magic lines (the notebooks must run as plain Python, e.g. "
        f"under `python -m nbutils.run`; use subprocess in the Colab set-up cell): {bad}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_colab_setup_installs_this_repository(path):
    setup = "\n".join(_source(c) for c in _cells(path, "code") if "google.colab" in _source(c))
    assert setup, f"{path.name}: no Colab set-up cell (a code cell that checks for google.colab)"
    expected = _normal_url(_config()["repository"]["url"])
    urls = {_normal_url(u) for u in GITHUB_URL.findall(setup)}
    assert urls == {expected} and "pip" in setup and "git+" in setup, (
        f"{path.name}: the Colab set-up cell should pip-install git+{expected} "
        f"(repository.url in _config.yml); it names {sorted(urls) or 'no GitHub URL'}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_progress_bars_use_tqdm_auto(path):
    modules = {a or b for c in _cells(path, "code") for a, b in TQDM_IMPORT.findall(_source(c))}
    wrong = sorted(m for m in modules if m != "tqdm.auto")
    assert not wrong, (
        f"{path.name}: imports {wrong}; use `from tqdm.auto import tqdm` (plain tqdm writes a "
        "line per update into the rendered page)"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_kernel_is_python3(path):
    spec = json.loads(path.read_text()).get("metadata", {}).get("kernelspec", {})
    assert spec.get("name", "python3") == "python3", (
        f"{path.name}: kernelspec {spec.get('name')!r}; use 'python3' so the build and nbval "
        "run it with the environment's own Python"
    )


def test_every_note_and_notebook_is_in_the_toc():
    on_disk = {p.relative_to(ROOT).with_suffix("").as_posix() for p in NOTEBOOKS + NOTES}
    listed = set(_listed())
    assert not on_disk - listed, f"not in _toc.yml: {sorted(on_disk - listed)}"


def test_every_toc_entry_exists():
    missing = [
        name
        for name in _listed()
        if not any((ROOT / f"{name}{suffix}").exists() for suffix in (".md", ".ipynb"))
    ]
    assert not missing, f"_toc.yml lists files that do not exist: {missing}"


def test_each_chapter_pairs_its_note_with_its_notebook():
    toc = _toc()
    for part in toc.get("parts", []):
        for chapter in part["chapters"]:
            files = [chapter["file"]] + _toc_files(chapter.get("sections", []))
            numbers = {Path(f).name.split("_")[0] for f in files}
            kinds = sorted(Path(f).parent.name for f in files)
            assert len(numbers) == 1 and kinds == ["book", "notes"], (
                f"chapter {chapter['file']}: expected notes/NN_*.md + book/NN_*.ipynb, got {files}"
            )


def test_bibliography_exists():
    for bib in _config().get("bibtex_bibfiles", []):
        assert (ROOT / bib).is_file(), f"_config.yml names {bib}, which does not exist"
