"""Layers point down only, checked on the import graph of the package's source.

``nic → dispatch → stack → socket_api → tls/l7`` reads top to bottom in ARCHITECTURE.md; here
it is a rule per layer about which modules it may never reach, following imports transitively.
The graph is built with ``ast`` from every module's source, so it holds every import a module
can execute: at the top, inside functions (lazy imports), and under ``if TYPE_CHECKING:`` (a
type-only import of a layer above is still a dependency on it: the ``Stack`` front end that
``socket_api`` used to name for its annotations is exactly what this forbids).

Importing ``a.b.c`` runs the ``__init__`` of ``a.b`` first, so a module also depends on its
parent packages, except the root ``trio_yastack``, whose ``__init__`` imports nothing when it
runs (its public names are loaded lazily, by ``__getattr__``); an explicit
``from trio_yastack import X`` is still an edge to it, and through it to ``_open_stack``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = "trio_yastack"
PACKAGE = Path(__file__).resolve().parents[1] / ROOT

#: everything above the sans-IO stack (and the journey package, before and after its move)
_ABOVE_STACK = (
    "trio_yastack.nic",
    "trio_yastack.dispatch",
    "trio_yastack.socket_api",
    "trio_yastack.tls",
    "trio_yastack.l7",
    "trio_yastack.journey",
    "trio_yastack._journey",
    "trio_yastack._control",
    "trio_yastack._control_client",
    "trio_yastack._filter",
    "trio_yastack._open_stack",
    "trio_yastack._cli",
    "trio_yastack._demo",
    "trio_yastack.__main__",
)
_FRONT_AND_ABOVE = (
    "trio_yastack._open_stack",
    "trio_yastack.tls",
    "trio_yastack.l7",
    "trio_yastack.journey",
    "trio_yastack._journey",
    "trio_yastack._control",
    "trio_yastack._control_client",
    "trio_yastack._filter",
    "trio_yastack._cli",
    "trio_yastack._demo",
    "trio_yastack.__main__",
)

#: layer -> what none of its modules may reach (a name covers its submodules); ``ROOT`` itself
#: is forbidden to every layer under the front end, since it re-exports ``_open_stack``
RULES: dict[str, tuple[str, ...]] = {
    "trio_yastack.stack": (ROOT, *_ABOVE_STACK),
    "trio_yastack.socket_api": (ROOT, "trio_yastack.nic", "trio_yastack.dispatch", *_FRONT_AND_ABOVE),
    "trio_yastack.dispatch": (ROOT, "trio_yastack.socket_api", *_FRONT_AND_ABOVE),
    "trio_yastack.nic": (ROOT, "trio_yastack.dispatch", "trio_yastack.socket_api", *_FRONT_AND_ABOVE),
    # nothing below l7 imports l7
    "trio_yastack._open_stack": ("trio_yastack.l7",),
    "trio_yastack.tls": ("trio_yastack.l7",),
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Every module of the package at ``root`` -> the package's modules it imports anywhere in
    its source (relative imports resolved; ``from pkg import name`` counts ``pkg.name`` when that
    is a module, else ``pkg``), plus the parent packages those imports run (not the root)."""
    files = {module_name(path, root): path for path in root.rglob("*.py")}
    packages = {name for name, path in files.items() if path.name == "__init__.py"}
    top = root.name
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        here = name if name in packages else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    source = node.module or ""
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    targets.add(submodule if submodule in files else source)
        edges: set[str] = set()
        for target in targets:
            if target != top and not target.startswith(top + "."):
                continue  # the standard library and third parties
            edges.add(target)
            parts = target.split(".")
            edges.update(".".join(parts[:i]) for i in range(2, len(parts)))  # parents, not the root
        edges.discard(name)
        graph[name] = {edge for edge in edges if edge in files}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, list[str]]:
    """Every module ``start`` reaches -> one import chain that gets there."""
    paths = {start: [start]}
    todo = [start]
    while todo:
        current = todo.pop()
        for target in sorted(graph.get(current, ())):
            if target not in paths:
                paths[target] = [*paths[current], target]
                todo.append(target)
    return paths


def covered(name: str, prefixes: Iterable[str]) -> bool:
    """``name`` is one of ``prefixes`` or inside one; a top-level name (the root package) covers
    only itself, since everything is inside it."""
    return any(name == prefix or ("." in prefix and name.startswith(prefix + ".")) for prefix in prefixes)


def violations(graph: dict[str, set[str]], layer: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for module in sorted(graph):
        if not covered(module, [layer]):
            continue
        for target, chain in reachable(graph, module).items():
            if target != module and covered(target, forbidden) and not covered(target, [layer]):
                found.append(" -> ".join(chain))
    return found


GRAPH = import_graph(PACKAGE)


#: rules the code does not keep yet: each fails today (strict xfail), and passes once fixed
KNOWN_VIOLATIONS: dict[str, str] = {}


@pytest.mark.parametrize(
    "layer",
    [
        pytest.param(layer, marks=pytest.mark.xfail(strict=True, reason=KNOWN_VIOLATIONS[layer]))
        if layer in KNOWN_VIOLATIONS
        else layer
        for layer in sorted(RULES)
    ],
)
def test_layer_never_reaches_the_layers_above(layer: str) -> None:
    assert any(covered(module, [layer]) for module in GRAPH), f"no module is in {layer}"
    assert violations(GRAPH, layer, RULES[layer]) == []


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The checker itself: a made-up package whose low layer reaches the top in each of the ways
    that matter (a relative import, a lazy one in a function, a ``TYPE_CHECKING`` one, and one
    through a module of a third layer) is caught, chain and all; the root package is not an
    implicit parent."""
    root = tmp_path / "pkg"
    for package in ("", "low", "mid", "top"):
        (root / package).mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").write_text("")
    (root / "__init__.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .top import x\n"
    )
    (root / "top" / "x.py").write_text("")
    (root / "low" / "a.py").write_text("from ..top import x\n")
    (root / "low" / "b.py").write_text("def f():\n    import pkg.top.x\n")
    (root / "low" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.top.x import y\n"
    )
    (root / "low" / "d.py").write_text("from pkg.mid import m\n")
    (root / "low" / "e.py").write_text("from . import a\nimport os\n")
    (root / "mid" / "m.py").write_text("from pkg.top import x\n")
    (root / "low" / "clean.py").write_text("import json\nfrom pkg.mid import __name__ as _n\n")
    graph = import_graph(root)
    assert graph["pkg.low.a"] == {"pkg.top", "pkg.top.x"}
    assert graph["pkg.low.e"] == {"pkg.low.a", "pkg.low"}
    found = violations(graph, "pkg.low", ("pkg.top",))
    for module in ("a", "b", "c", "d", "e"):
        assert any(chain.startswith(f"pkg.low.{module} -> ") for chain in found), (module, found)
    assert any(chain.startswith("pkg.low.d -> pkg.mid.m -> pkg.top") for chain in found), found
    assert not any(chain.startswith("pkg.low.clean ") for chain in found)
    assert "pkg" not in graph["pkg.low.b"]  # the root is not a parent edge
