"""The package's rooms, checked on its source: no import cycles, model families that never
import one another, shared pieces that import no family, matplotlib only in plot.py (and the
headless runner, which picks its backend), short modules, and subpackage faces that only
re-export."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "nbutils"
MAX_LINES = 400

#: Model families: a module of one never imports a module of another. Chapter 01's three
#: modules are one family; each later chapter adds its own.
FAMILIES = {
    "autoregressive": {
        "nbutils.autoregressive",
        "nbutils.made",
        "nbutils.pixelcnn",
        "nbutils.joint",
    },
    "flows": {"nbutils.flows"},
    "rectified": {"nbutils.rectified"},
    "score": {"nbutils.score"},
    "sde": {"nbutils.sde"},
    "ode": {"nbutils.ode"},
    "latent": {"nbutils.latent"},
    "contrastive": {"nbutils.contrastive", "nbutils.cpc"},
}
#: Shared pieces (what families build on) and tools (evaluation, plots, running): neither
#: imports a family.
SHARED = {
    "nbutils",
    "nbutils.runtime",
    "nbutils.tensors",
    "nbutils.checkpoint",
    "nbutils.keepers",
    "nbutils.train",
    "nbutils.data",
    "nbutils.nn",
    "nbutils.paths",
    "nbutils.analytic",
    "nbutils.samplers",
    "nbutils.likelihood",
    "nbutils.trained",
    "nbutils.langevin",
    "nbutils.metrics",
    "nbutils.probe",
}
TOOLS = {
    "nbutils.classifier",
    "nbutils.plot",
    "nbutils.report",
    "nbutils.run",
    "nbutils.results",
    "nbutils.measured",
    "nbutils.exercises",
    "nbutils.repository",
    "nbutils.compare",
    "nbutils.pytest_defaults",
}
#: The harness measures every family side by side, so it alone may import them all; nothing
#: in the package imports it.
HARNESS = {"nbutils.bench"}
MATPLOTLIB_ALLOWED = {"nbutils.plot", "nbutils.run"}  # run.py only selects the Agg backend


def module_name(path: Path) -> str:
    parts = ["nbutils", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _absolute(node: ast.ImportFrom, name: str) -> str:
    """The absolute module of ``from .x import y`` inside module ``name``."""
    if node.level == 0:
        return node.module or ""
    package = name if MODULES[name].name == "__init__.py" else name.rsplit(".", 1)[0]
    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
    return f"{base}.{node.module}" if node.module else base


def imported(name: str) -> set[str]:
    """Every module named by an import anywhere in the module (functions included; relative
    imports made absolute)."""
    tree = ast.parse(MODULES[name].read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            node.module = _absolute(node, name)
            found.add(node.module)
            for alias in node.names:  # `from nbutils import plot` names a module
                if f"{node.module}.{alias.name}" in MODULES:
                    found.add(f"{node.module}.{alias.name}")
    return found


def internal(name: str) -> set[str]:
    return {m for m in imported(name) if m in MODULES and m != name}


def room(name: str) -> str:
    """The family, 'shared' or 'tools' that a module belongs to (by its top-level name)."""
    top = ".".join(name.split(".")[:2])
    for family, members in FAMILIES.items():
        if top in members:
            return family
    if top in SHARED:
        return "shared"
    if top in TOOLS or name in TOOLS:
        return "tools"
    if name in HARNESS:
        return "harness"
    return "unknown"


def test_every_module_has_a_room():
    unknown = sorted(m for m in MODULES if room(m) == "unknown")
    assert not unknown, (
        f"modules {unknown} are in no family, SHARED or TOOLS list of tests/test_layout.py; "
        "add each new module where it belongs"
    )


def test_no_import_cycles():
    graph = {m: internal(m) for m in MODULES}
    state, path = {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = path[path.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_families_never_import_each_other_and_shared_code_imports_no_family():
    wrong = []
    for module in MODULES:
        mine = room(module)
        for other in internal(module):
            theirs = room(other)
            if theirs == "harness" or (theirs in FAMILIES and theirs != mine != "harness"):
                wrong.append(f"{module} ({mine}) imports {other} ({theirs})")
    assert not wrong, "shared pieces go down into nn/, paths, analytic, samplers:\n" + "\n".join(
        wrong
    )


def test_only_plot_imports_matplotlib():
    users = {m for m in MODULES if any(i.split(".")[0] == "matplotlib" for i in imported(m))}
    assert users <= MATPLOTLIB_ALLOWED, (
        f"matplotlib imported by {sorted(users - MATPLOTLIB_ALLOWED)}"
    )


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_are_short(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it (guide: {MAX_LINES})"


@pytest.mark.parametrize(
    "name", sorted(m for m, p in MODULES.items() if p.name == "__init__.py" and m != "nbutils")
)
def test_subpackage_faces_only_re_export(name):
    tree = ast.parse(MODULES[name].read_text())
    body = tree.body[1:] if ast.get_docstring(tree) else tree.body
    other = [
        type(node).__name__
        for node in body
        if not isinstance(node, ast.Import | ast.ImportFrom)
        and not (isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["__all__"])
    ]
    assert not other, f"{name}/__init__.py should only import and list __all__; it has {other}"
    names = {a.asname or a.name for n in body if isinstance(n, ast.ImportFrom) for a in n.names}
    listed = next(
        (ast.literal_eval(n.value) for n in body if isinstance(n, ast.Assign)), sorted(names)
    )
    assert sorted(listed) == sorted(names), f"{name}: __all__ differs from what it imports"
