"""Measured numbers in the prose, read from ``results/<profile>.json`` so that a note, the README
and the results files cannot disagree.

In a note (the book loads this module as a Sphinx extension, see ``_config.yml``):

* the role ``{measured}`gpu/01/NADE: test NLL``` prints that metric's value, formatted as in
  the results tables (``.4g``), or with a format after a bar: ``{measured}`gpu/01/NADE: test
  NLL|.2f```; ``@wall_seconds`` (or another field of a chapter's entry) instead of a metric name
  prints that field;
* the directive ``{results-table}`` with a chapter number as argument and the metric names as
  its content (one per line) renders a table of those metrics in every profile, beside the
  paper's number.

An unknown profile, chapter or metric is a build warning (an error under ``-W``) that lists
what exists. :func:`readme_table` renders the README's chapter table from the same files.

Notebooks are read in Jupyter and Colab too, where a role would show as raw text, so their
markdown carries the number itself followed by an invisible comment naming its source,
``0.147<!-- measured: exercises:cpu/00.1/FD floor, 1,000 images|.3f -->``;
:func:`fill_notebook` rewrites those numbers from the results files and
:func:`stale_notebook_numbers` lists any that differ (a test keeps the list empty).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

PROFILE_ORDER = ("cpu", "gpu")


class MissingResult(LookupError):
    """A reference names a profile, chapter or metric that the results files do not hold."""


@lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> dict:
    return json.loads(Path(path).read_text())


def load_results(root: Path, profile: str) -> dict:
    """``results/<profile>.json`` under ``root`` (cached until the file changes); a profile
    ``folder:name`` reads ``results/folder/name.json`` (e.g. ``earlier:gpu_02_6f5ad72``)."""
    path = Path(root) / "results" / (profile.replace(":", "/") + ".json")
    if not path.exists():
        how = {"bench": "make bench", "exercises": "python -m nbutils.exercises"}.get(
            profile.split(":")[0].split("-")[0], f"make results PROFILE={profile}"
        )
        raise MissingResult(f"no results file {path} (run `{how}`)")
    return _load(str(path), path.stat().st_mtime_ns)


def lookup(root: Path, ref: str):
    """The value behind ``profile/chapter/metric`` (or ``profile/chapter/@field``)."""
    parts = ref.strip().split("/", 2)
    if len(parts) != 3:
        raise MissingResult(f"expected profile/chapter/metric, got {ref!r}")
    profile, chapter, name = (p.strip() for p in parts)
    data = load_results(root, profile)
    chapters = data["chapters"] if "chapters" in data else {chapter: data}  # one-run files
    if chapter not in chapters:
        raise MissingResult(f"{profile} results have no chapter {chapter!r} ({sorted(chapters)})")
    entry = chapters[chapter]
    if name.startswith("@"):  # a field of the entry, dotted for nested ones
        value = entry
        for key in name[1:].split("."):
            if not isinstance(value, dict) or key not in value:
                raise MissingResult(f"{profile}/{chapter} has no field {name[1:]!r}")
            value = value[key]
        return value
    if name not in entry["metrics"]:
        known = "; ".join(entry["metrics"])
        raise MissingResult(f"{profile}/{chapter} has no metric {name!r}; it has: {known}")
    return entry["metrics"][name]["value"]


def render(value, spec: str = "") -> str:
    """A value as text: floats with ``spec`` (default: 4 significant digits, but all digits
    before the point and one after it from 1000 on, e.g. 1985.8), ints with commas."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, int) and not spec:
        return f"{value:,}"
    if not spec and abs(value) >= 1000:
        return f"{value:,.1f}"
    return format(value, spec or ".4g")


def measured(root: Path, text: str) -> str:
    """The text a ``{measured}`` role shows for ``ref|spec``."""
    ref, _, spec = text.partition("|")
    return render(lookup(root, ref), spec.strip())


def joined(values: dict[str, object]) -> str:
    """One text for a field that may differ between profiles: ``88.4 (cpu) / 89.59 (gpu)``."""
    present = {p: v for p, v in values.items() if v not in (None, "")}
    texts = {p: render(v) for p, v in present.items()}
    if len(set(texts.values())) <= 1:
        return next(iter(texts.values()), "")
    return " / ".join(f"{t} ({p})" for p, t in texts.items())


def table_rows(root: Path, chapter: str, metrics: list[str], profiles=PROFILE_ORDER):
    """Header and rows of a results table: metric, one column per profile, unit, paper, source
    (a unit or paper that differs between profiles, e.g. another model size, shows both)."""
    header = ["metric", *(f"`{p}`" for p in profiles), "unit", "paper", "source"]
    rows = []
    for name in metrics:
        found = {}
        for profile in profiles:
            try:
                found[profile] = load_results(root, profile)["chapters"][chapter]["metrics"][name]
            except (MissingResult, KeyError):
                continue
        if not found:
            raise MissingResult(f"no profile has metric {name!r} of chapter {chapter}")
        values = [render(found[p]["value"]) if p in found else "not run" for p in profiles]
        fields = [joined({p: e.get(key) for p, e in found.items()}) for key in ("unit", "paper")]
        source = joined({p: e.get("source") for p, e in found.items()})
        rows.append([name, *values, *fields, source])
    return header, rows


#: A number in a notebook's markdown and the reference it is generated from (see the module
#: doc): digits with an optional sign, thousands commas, point, exponent and per cent sign.
NOTEBOOK_NUMBER = re.compile(r"(-?(?:\d[\d,]*)?\.?\d+(?:e[-+]?\d+)?%?|\?)<!-- measured: (.+?) -->")
MARKER = "<!-- measured:"


def _markdown_cells(notebook: dict):
    return [c for c in notebook["cells"] if c["cell_type"] == "markdown"]


def stale_notebook_numbers(root: Path, path: Path) -> list[tuple[str, str, str]]:
    """(number found, number the results give, reference) for every marked number of the
    notebook ``path`` that differs from the results files."""
    stale = []
    for cell in _markdown_cells(json.loads(Path(path).read_text())):
        text = "".join(cell["source"])
        matches = NOTEBOOK_NUMBER.findall(text)
        if len(matches) != text.count(MARKER):  # a marker without a number before it
            raise MissingResult(
                f"{path}: a '{MARKER} ...' comment must follow a number directly (no space), "
                f"in: {text[:80]!r}"
            )
        for found, ref in matches:
            expected = measured(root, ref)
            if found != expected:
                stale.append((found, expected, ref))
    return stale


def fill_notebook(root: Path, path: Path) -> bool:
    """Rewrite every marked number in the notebook's markdown from the results files; return
    whether the file changed."""
    path = Path(path)
    text = path.read_text()
    notebook = json.loads(text)
    for cell in _markdown_cells(notebook):
        source = "".join(cell["source"])
        filled = NOTEBOOK_NUMBER.sub(
            lambda m: f"{measured(root, m.group(2))}<!-- measured: {m.group(2)} -->", source
        )
        cell["source"] = filled.splitlines(keepends=True)
    new = json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"
    if new == text:
        return False
    path.write_text(new)
    return True


README_BEGIN = "<!-- results table: generated by `python -m nbutils.results --readme` -->"
README_END = "<!-- end of the generated results table -->"


def update_readme(root: Path) -> bool:
    """Rewrite the block between the README's markers from ``results/headlines.json``;
    return whether the file changed."""
    readme = Path(root) / "README.md"
    text = readme.read_text()
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        raise MissingResult(f"{readme} lacks the markers {README_BEGIN!r} ... {README_END!r}")
    headlines = json.loads((Path(root) / "results" / "headlines.json").read_text())
    block = f"{README_BEGIN}\n{readme_table(root, headlines)}\n"
    new = text[:start] + block + text[end:]
    readme.write_text(new)
    return new != text


def readme_table(root: Path, headlines: dict[str, dict]) -> str:
    """The README's chapter table (Markdown) from the results files and a headline list.

    Args:
        headlines: chapter -> {"title": ..., "metrics": [names]} (``results/headlines.json``).
    """
    lines = [
        "| # | chapter | metric | `cpu` | `gpu` | unit | paper |",
        "|---|---|---|---|---|---|---|",
    ]
    for chapter, spec in sorted(headlines.items()):
        _, rows = table_rows(root, chapter, spec["metrics"])
        for i, row in enumerate(rows):
            first = [chapter, spec["title"]] if i == 0 else ["", ""]
            cells = [*first, *row[:-1]]  # the source column stays in results/*.md
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- Sphinx


def setup(app):
    """Register the ``measured`` role and the ``results-table`` directive."""
    from docutils import nodes
    from sphinx.util.docutils import SphinxDirective

    def root_of(env) -> Path:
        return Path(env.srcdir)

    def depend(env) -> None:
        """Rebuild a page that quotes results whenever a results file changes."""
        for path in sorted((root_of(env) / "results").rglob("*.json")):
            env.note_dependency(str(path))

    def role(name, rawtext, text, lineno, inliner, options=None, content=None):
        env = inliner.document.settings.env
        depend(env)
        try:
            return [nodes.Text(measured(root_of(env), text))], []
        except MissingResult as err:
            message = inliner.reporter.warning(f"measured: {err}", line=lineno)
            return [inliner.problematic(rawtext, rawtext, message)], [message]

    class ResultsTable(SphinxDirective):
        required_arguments = 1
        has_content = True

        def run(self):
            depend(self.env)
            names = [line.strip() for line in self.content if line.strip()]
            try:
                header, rows = table_rows(root_of(self.env), self.arguments[0], names)
            except MissingResult as err:
                return [self.state.document.reporter.warning(f"results-table: {err}")]
            return [_docutils_table(nodes, header, rows)]

    app.add_role("measured", role)
    app.add_directive("results-table", ResultsTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def _docutils_table(nodes, header: list[str], rows: list[list[str]]):
    table = nodes.table(classes=["results-table"])
    group = nodes.tgroup(cols=len(header))
    table += group
    for _ in header:
        group += nodes.colspec(colwidth=1)

    def row(cells):
        out = nodes.row()
        for cell in cells:
            entry = nodes.entry()
            entry += nodes.paragraph(text=cell.strip("`"))
            out += entry
        return out

    head, body = nodes.thead(), nodes.tbody()
    head += row(header)
    for cells in rows:
        body += row(cells)
    group += head
    group += body
    return table
