"""The house rules that keep the code readable, checked on its source.

- Data flows one way, and imports point down only: data and storage, then training, the space,
  the study, the export, the report, and on top the Python face and the command line.
- No import circle between modules.
- Only ``study/record.py`` reads study and trial attributes by key.
- The export and the report read an export's config through ``ExportConfig`` (no
  ``config[...]``) and never reach into the runner or the objective.
- The library never imports click.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Source folder -> the package it installs as.
PACKAGES = {"search": "maskopt.search", "storage": "maskopt.storage", "maskopt": "maskopt"}
# Lower rank first: a module may import modules of its own rank or lower.
LAYERS = [
    ("maskopt.errors", 0),
    ("maskopt.files", 0),
    ("maskopt.storage", 1),
    ("maskopt.search.data", 1),
    ("maskopt.search.train", 2),
    ("maskopt.search.space", 3),
    ("maskopt.search.study", 4),
    ("maskopt.search.export", 5),
    ("maskopt.search.report", 6),
    ("maskopt.search", 7),  # the package's own __init__: calling it runs maskopt.api.search
    ("maskopt", 7),  # the Python face, the command line
]
# maskopt.search is both the package and, called, maskopt.api.search (see search/__init__.py): the
# one upward import, made on call.
ALLOWED_UPWARD = {("maskopt.search", "maskopt.api")}


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


MODULES = modules()


def layer(module: str) -> int:
    for prefix, rank in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return rank
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def imports_of(name: str, path: Path) -> set[str]:
    """The maskopt modules ``name`` imports, anywhere in the file (inside functions too), but for
    imports under ``if TYPE_CHECKING:``, which never run."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t == "maskopt" or t.startswith("maskopt.")}
    return {t for t in found if t != name}


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def test_imports_point_down_only():
    upward = sorted(f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
                    for m, targets in GRAPH.items() for t in targets
                    if layer(t) > layer(m) and (m, t) not in ALLOWED_UPWARD)
    assert upward == []


def test_no_import_circles():
    # Only imports a module makes of modules it does not contain (a package's __init__ re-exporting
    # its own modules is not a circle).
    def edges(m):
        return {t for t in GRAPH[m] if t in MODULES and not t.startswith(m + ".") and not m.startswith(t + ".")}

    cycles, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(edges(m)):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(MODULES):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def sources(folder: str):
    return [(path, path.read_text()) for path in sorted((ROOT / folder).rglob("*.py"))]


@pytest.mark.parametrize("attribute", ["user_attrs", "system_attrs"])
def test_only_the_record_reads_stored_attributes(attribute):
    readers = [str(path.relative_to(ROOT)) for folder in PACKAGES for path, text in sources(folder)
               if f".{attribute}" in text and path != ROOT / "search" / "study" / "record.py"]
    assert readers == []


def test_export_and_report_read_configs_through_their_record():
    offenders = []
    for folder in ("search/export", "search/report"):
        for path, text in sources(folder):
            for needle in ("config[", "study.runner", "study.objective", "study import runner", "study import objective"):
                if needle in text:
                    offenders.append(f"{path.relative_to(ROOT)}: {needle}")
    assert offenders == []


def test_the_library_never_imports_click():
    offenders = [str(path.relative_to(ROOT)) for folder in ("search", "storage") for path, text in sources(folder)
                 if "import click" in text or "from click" in text]
    offenders += [str(p.relative_to(ROOT)) for p, text in sources("maskopt")
                  if ("import click" in text or "from click" in text) and "commands" not in p.parts
                  and p.name != "cli.py"]
    assert offenders == []
