"""The import graph keeps the layering of README "Architecture": no import from a lower layer
to a higher one, no import cycle among the project's modules, and no project import inside a
function except in the command-line modules (where it keeps `--help` fast).

The graph comes from the source (the AST), not from running it, and counts every import:
top-level ones, ones inside functions, and ones under `if TYPE_CHECKING:` (a type named from a
higher layer is still a dependency on it; such imports must obey the layers like any other). A
string naming a project module (the lazy-attribute maps of the package facades) counts as an
import too. Importing `a.b.c` also runs the `a` and `a.b` package `__init__`s; those implicit
edges are not counted: a package facade may re-export what it contains.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
# Installed name -> source folder (pyproject's package-dir).
SOURCES = {"meet_milvus": "meet_milvus", "meet_milvus_loaders": "loaders",
           "meet_milvus_training": "training"}  # fmt: skip

# Lowest first. A module belongs to the first layer with a prefix matching it (a prefix matches
# the module itself and everything under it); it may import its own layer and lower ones.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("meet_milvus.errors", "meet_milvus.inputs", "meet_milvus.config",
              "meet_milvus.progress", "meet_milvus.evaluation", "meet_milvus.files",
              "meet_milvus.batching")),
    ("model", ("meet_milvus.model",)),
    ("milvus access", ("meet_milvus.server", "meet_milvus.gallery_layout",
                       "meet_milvus.gallery_log", "meet_milvus.gallery_rows", "meet_milvus.pool",
                       "meet_milvus.milvus_arrays", "meet_milvus.tier", "meet_milvus.tier_write",
                       "meet_milvus.reader")),
    ("search", ("meet_milvus.results", "meet_milvus.rerank", "meet_milvus.search_config",
                "meet_milvus.cascade",
                "meet_milvus.searcher", "meet_milvus.writer", "meet_milvus.milvus_eval",
                "meet_milvus.sheet",
                "meet_milvus.charts", "meet_milvus.web")),
    ("loaders", ("meet_milvus_loaders",)),
    ("cli", ("meet_milvus.context", "meet_milvus.commands", "meet_milvus.cli",
             "meet_milvus.__main__")),
    ("training", ("meet_milvus_training",)),
]  # fmt: skip
# The package facade `meet_milvus` (MeetSearcher, Settings, MeetError) sits with the searcher.
FACADES = {"meet_milvus": "search"}
# Command-line modules: the only ones that may import project modules inside functions.
CLI_MODULES = ("meet_milvus.cli", "meet_milvus.commands", "meet_milvus_training.cli")


def project_modules() -> dict[str, Path]:
    out = {}
    for name, folder in SOURCES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((name, *parts))] = path
    return out


MODULES = project_modules()


def layer_of(module: str) -> int:
    if module in FACADES:
        return [n for n, _ in LAYERS].index(FACADES[module])
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"module {module} is in no layer: add it to LAYERS")


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    """(target module, line, where) of each project import in one module."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.module, self.is_package = module, is_package
        self.found: list[tuple[str, int, str]] = []
        self.where = ["top"]

    def _targets(self, node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        base = node.module or ""
        if node.level:
            package = self.module.split(".")
            if not self.is_package:
                package = package[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join(package + ([node.module] if node.module else []))
        # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]

    def _add(self, node: ast.Import | ast.ImportFrom) -> None:
        for target in self._targets(node):
            while target and target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]  # `import a.b.name`: the module part
            if target in MODULES:
                self.found.append((target, node.lineno, self.where[-1]))

    visit_Import = visit_ImportFrom = _add

    def _scoped(self, node: ast.AST, where: str) -> None:
        self.where.append(where)
        self.generic_visit(node)
        self.where.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._scoped(node, "function")

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if _type_checking(node):
            self._scoped(node, "TYPE_CHECKING" if self.where[-1] == "top" else self.where[-1])
        else:
            self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and node.value in MODULES and node.value != self.module:
            self.found.append((node.value, node.lineno, "lazy"))


def import_graph() -> dict[str, list[tuple[str, int, str]]]:
    graph = {}
    for module, path in MODULES.items():
        visitor = _Imports(module, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(), str(path)))
        graph[module] = visitor.found
    return graph


GRAPH = import_graph()


def cycles(graph: dict[str, list[tuple[str, int, str]]]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _, _ in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or any(t == v for t, _, _ in graph[v]):
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_import_from_a_lower_layer_to_a_higher_one():
    names = [n for n, _ in LAYERS]
    upward = [
        f"{MODULES[m].relative_to(ROOT)}:{line}: {m} ({names[layer_of(m)]}) imports {t} "
        f"({names[layer_of(t)]}, {where})"
        for m, edges in GRAPH.items()
        for t, line, where in edges
        if layer_of(t) > layer_of(m)
    ]
    assert upward == []


def test_no_import_cycle():
    assert cycles(GRAPH) == []


def test_project_imports_inside_functions_only_in_command_line_modules():
    inside = [
        f"{MODULES[m].relative_to(ROOT)}:{line}: {m} imports {t} inside a function"
        for m, edges in GRAPH.items()
        for t, line, where in edges
        if where == "function" and not m.startswith(CLI_MODULES)
    ]
    assert inside == []


def test_serving_never_imports_training_or_loaders():
    """What `from meet_milvus import MeetSearcher` can reach, transitively."""
    seen, todo = set(), ["meet_milvus", "meet_milvus.searcher", "meet_milvus.web.app"]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += [t for t, _, _ in GRAPH[m]]
    assert "meet_milvus.model.checkpoint" in seen  # the walk does reach the model
    assert sorted(m for m in seen if not m.startswith("meet_milvus.")) == ["meet_milvus"]


def test_the_checker_sees_upward_type_checking_and_function_imports():
    """The walker itself: imports in TYPE_CHECKING blocks and in functions are edges."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from meet_milvus_training.config import TrainConfig\n"
        "def f():\n    from meet_milvus_loaders import precomp\n"
        "X = 'meet_milvus.searcher'\n"
    )
    visitor = _Imports("meet_milvus.evaluation", False)
    visitor.visit(ast.parse(source))
    assert visitor.found == [
        ("meet_milvus_training.config", 3, "TYPE_CHECKING"),
        ("meet_milvus_loaders.precomp", 5, "function"),
        ("meet_milvus.searcher", 6, "lazy"),
    ]
    graph = {"a": [("b", 1, "top")], "b": [("c", 1, "function")], "c": [("a", 1, "top")]}
    assert cycles(graph) == [["a", "b", "c"]]


def test_pyproject_installs_every_package_under_its_namespace():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    packages = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    assert set(setuptools["packages"]) == packages
    assert setuptools["package-dir"] == {k: v for k, v in SOURCES.items() if k != v}
    scripts = project["project"]["scripts"]
    assert scripts == {"meet-milvus": "meet_milvus.cli:main",
                       "meet-train": "meet_milvus_training.cli:main"}  # fmt: skip


def test_serving_works_without_the_trainer():
    """With `meet_milvus_training`, the loaders and tensorboard unimportable (as without the
    `train` extra), the searcher, the model reader, the web app and the CLI still import. In a
    fresh interpreter, so this process's modules stay as they are."""
    code = (
        "import sys\n"
        "for name in ('meet_milvus_training', 'meet_milvus_loaders', 'tensorboard',\n"
        "             'torch.utils.tensorboard'):\n"
        "    sys.modules[name] = None  # import raises ImportError\n"
        "from meet_milvus import MeetSearcher\n"
        "import meet_milvus.model.checkpoint, meet_milvus.web.app, meet_milvus.cli\n"
        "print(MeetSearcher.__module__)\n"
        "try:\n"
        "    import meet_milvus_training.trainer\n"
        "except ImportError:\n"
        "    print('training blocked')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["meet_milvus.searcher", "training blocked"]
