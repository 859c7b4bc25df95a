"""The import rules of the design, checked on every `make test`.

The layers are import-linter contracts in pyproject.toml. No contract sees a
cycle between modules of one layer, so cycles are found here with grimp, the
graph library import-linter is built on. Both checks also run on a small
package made to break them: a check that has gone blind fails too.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grimp

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# What a Django request arrives through; the core works on neutral events only.
REQUEST_MODULES = ("django.http", "django.core.handlers", "rest_framework", "channels.generic")


def linter_options(root: Path) -> dict[str, Any]:
    with (root / "pyproject.toml").open("rb") as file:
        options: dict[str, Any] = tomllib.load(file)["tool"]["importlinter"]
    return options


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """The contracts in root's pyproject.toml, checked by the CLI `make lint` runs."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )


@contextmanager
def on_path(root: Path) -> Iterator[None]:
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))


def import_graph(root: Path) -> grimp.ImportGraph:
    """The graph lint-imports checks: the same packages, the same imports counted."""
    options = linter_options(root)
    with on_path(root):
        return grimp.build_graph(
            *options["root_packages"],
            exclude_type_checking_imports=options.get("exclude_type_checking_imports", False),
            cache_dir=None,
        )


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """The groups of two or more modules that each import every other, through the rest."""
    groups, placed = [], set()
    for module in sorted(graph.modules):
        if module in placed:
            continue
        group = {module} | (
            graph.find_upstream_modules(module) & graph.find_downstream_modules(module)
        )
        placed |= group
        if len(group) > 1:
            groups.append(sorted(group))
    return groups


def shortest_cycle(graph: grimp.ImportGraph, group: list[str]) -> list[str]:
    """A shortest way from the group's first module back to itself."""
    start = group[0]
    chains = [
        graph.find_shortest_chain(importer=imported, imported=start) or ()
        for imported in graph.find_modules_directly_imported_by(start)
        if imported in group
    ]
    return [start, *min((chain for chain in chains if chain), key=len)]


def describe_import(graph: grimp.ImportGraph, importer: str, imported: str) -> str:
    details = graph.get_import_details(importer=importer, imported=imported)
    lines = ", ".join(f"l.{detail['line_number']}" for detail in details)
    return f"{importer} -> {imported} ({lines})"


def import_cycles(graph: grimp.ImportGraph) -> list[str]:
    """Each cycle group: its shortest cycle, then every import between its modules."""
    report = []
    for group in strongly_connected(graph):
        imports = [
            describe_import(graph, importer, imported)
            for importer in group
            for imported in sorted(graph.find_modules_directly_imported_by(importer))
            if imported in group
        ]
        report.append(
            f"import cycle {' -> '.join(shortest_cycle(graph, group))}; imports among "
            f"its {len(group)} modules:\n  " + "\n  ".join(imports)
        )
    return report


def test_the_import_contracts_hold() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_import_cycles() -> None:
    cycles = import_cycles(import_graph(ROOT))
    assert not cycles, "\n".join(cycles)


def test_the_core_never_sees_a_django_request() -> None:
    found = []
    for path in sorted((ROOT / "streaming" / "core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            found += [
                f"{path.relative_to(ROOT)}:{node.lineno} imports {name}"
                for name in names
                if name.startswith(REQUEST_MODULES)
            ]
    assert not found, "\n".join(found)


def write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_the_checks_see_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    """A throwaway package, checked with this project's linter options, breaks both rules.

    The upward import is type-checking only and the cycle closes in a function: the
    two kinds the project's own violations were, so neither may slip through.
    """
    options = {
        key: value
        for key, value in linter_options(ROOT).items()
        if key not in ("root_packages", "contracts")
    }
    write_package(
        tmp_path,
        {
            "pyproject.toml": "[tool.importlinter]\n"
            'root_packages = ["toyshop"]\n'
            + "".join(f"{key} = {json.dumps(value)}\n" for key, value in options.items())
            + '[[tool.importlinter.contracts]]\nname = "toy layers"\ntype = "layers"\n'
            'layers = ["toyshop.top", "toyshop.middle", "toyshop.bottom"]\n',
            "toyshop/__init__.py": "",
            "toyshop/top.py": "from toyshop import bottom\n",
            "toyshop/middle.py": "",
            "toyshop/bottom.py": """\
                from typing import TYPE_CHECKING

                if TYPE_CHECKING:
                    from toyshop import middle
            """,
            "toyshop/ping.py": "from toyshop import pong\n",
            "toyshop/pong.py": """\
                def serve():
                    from toyshop import ping
            """,
        },
    )

    linted = lint_imports(tmp_path)
    assert linted.returncode == 1
    assert "toyshop.bottom -> toyshop.middle (l.4)" in linted.stdout, linted.stdout
    assert import_cycles(import_graph(tmp_path)) == [
        "import cycle toyshop.ping -> toyshop.pong -> toyshop.ping; imports among its 2 modules:\n"
        "  toyshop.ping -> toyshop.pong (l.1)\n"
        "  toyshop.pong -> toyshop.ping (l.2)"
    ]

    # Without the two imports, the same checks pass: they failed for those alone.
    write_package(tmp_path, {"toyshop/bottom.py": "", "toyshop/pong.py": ""})
    linted = lint_imports(tmp_path)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert import_cycles(import_graph(tmp_path)) == []
