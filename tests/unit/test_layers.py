"""The dependency rule docs/architecture.md states ("Layers, as rules"), checked on every
module's imports.

Layers, lowest first: domain < storage < integrations (adapters) < services (long-running
work) < handlers < the wiring (the modules directly in calls_server/: app factory, CLI,
settings, error rendering). A module may import
from its own layer and the layers below it, never from one above. Error rendering imports
the domain only. The request path (calls_server/request_path/) stands beside the layers
with a boundary of its own: it imports the domain and itself only, and only the wiring
imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
PACKAGE = "calls_server"
LAYERS = ("domain", "storage", "integrations", "services", "handlers", "wiring")
# What the request path may import, and who may import it (`allowed_for`).
REQUEST_PATH = "request_path"
# Modules held to a stricter rule than their layer's: what they may import from.
NARROWER = {"calls_server.errors": {"domain"}}


def layer_of(module: str) -> str | None:
    """The layer a `calls_server...` module belongs to (None for modules of other projects)."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    if len(parts) > 1 and parts[1] in (*LAYERS, REQUEST_PATH):
        return parts[1]
    return "wiring"


def allowed_for(module: str, layer: str) -> set[str]:
    """The layers `module` (of `layer`) may import from."""
    if module in NARROWER:
        return NARROWER[module]
    if layer == REQUEST_PATH:
        return {"domain", REQUEST_PATH}
    below = set(LAYERS[: LAYERS.index(layer) + 1])
    return below | {REQUEST_PATH} if layer == "wiring" else below


def imported_modules(source: str, module: str) -> set[str]:
    """The absolute names of the modules `source` (the text of `module`) imports."""
    found: set[str] = set()
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                found.add(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                found.add(node.module)
    return found


def violations(source: str, module: str) -> list[str]:
    """Every import of `module` that points against the dependency rule."""
    own = layer_of(module)
    assert own is not None
    allowed = allowed_for(module, own)
    wrong = []
    for target in sorted(imported_modules(source, module)):
        layer = layer_of(target)
        if layer is not None and target != PACKAGE and layer not in allowed:
            wrong.append(f"{module} ({own}) imports {target} ({layer})")
    return wrong


def project_modules() -> dict[str, Path]:
    """Every module of the package, by name, read from the real files of each layer."""
    modules = {f"{PACKAGE}.{path.stem}": path for path in (REPOSITORY / PACKAGE).glob("*.py")}
    for folder, layer in [
        *((REPOSITORY / layer, layer) for layer in LAYERS[:-1]),
        (REPOSITORY / PACKAGE / REQUEST_PATH, REQUEST_PATH),
    ]:
        for path in folder.rglob("*.py"):  # subpackages too (storage/postgres/)
            inner = path.relative_to(folder).with_suffix("").parts
            name = ".".join((PACKAGE, layer, *inner)).removesuffix(".__init__")
            modules[name] = path
    return modules


def test_every_layer_of_the_package_is_checked():
    layers = {layer_of(name) for name in project_modules()}

    assert layers == {*LAYERS, REQUEST_PATH}


@pytest.mark.parametrize("module", sorted(project_modules()))
def test_imports_point_down_the_layers_only(module):
    source = project_modules()[module].read_text(encoding="utf-8")

    assert violations(source, module) == []


def test_the_check_flags_an_import_against_the_rule():
    source = "from calls_server.settings import Settings\nfrom calls_server.domain import calls\n"

    found = violations(source, "calls_server.handlers.calls")

    assert found == [
        "calls_server.handlers.calls (handlers) imports calls_server.settings (wiring)"
    ]


def test_the_check_flags_error_rendering_reaching_into_handlers():
    source = "from calls_server.handlers.security import BOTH_HEADERS\n"

    assert violations(source, "calls_server.errors") == [
        "calls_server.errors (wiring) imports calls_server.handlers.security (handlers)"
    ]


def test_the_check_resolves_relative_imports():
    source = "from ..integrations import dialer\n"

    assert violations(source, "calls_server.storage.embedded") == [
        "calls_server.storage.embedded (storage) imports calls_server.integrations (integrations)"
    ]


def test_the_request_path_may_not_import_the_app():
    source = "from calls_server.settings import Settings\nfrom calls_server.domain import errors\n"

    assert violations(source, "calls_server.request_path.api") == [
        "calls_server.request_path.api (request_path) imports calls_server.settings (wiring)"
    ]


def test_only_the_wiring_may_import_the_request_path():
    source = "from calls_server.request_path.keys import OPERATION\n"

    assert violations(source, "calls_server.handlers.calls") == [
        "calls_server.handlers.calls (handlers) imports calls_server.request_path.keys"
        " (request_path)"
    ]
    assert violations(source, "calls_server.metrics") == []


def module_imports(module: str, modules: dict[str, Path]) -> set[str]:
    """The project modules `module` imports when it is loaded (its top-level imports; those
    inside functions run later and cannot make a circle at load). `from package import
    name` counts `package.name` when that is a module."""
    tree = ast.parse(modules[module].read_text(encoding="utf-8"))
    package = module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the module's package
                above = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{above}.{base}" if base else above
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return (found & set(modules)) - {module}


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The circles of `graph` (its strongly connected parts of more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            part = [stack.pop()]
            while part[-1] != module:
                part.append(stack.pop())
            if len(part) > 1:
                circles.append(sorted(part))

    for module in graph:
        if module not in index:
            visit(module)
    return circles


def test_no_module_imports_itself_through_others():
    modules = project_modules()
    graph = {module: module_imports(module, modules) for module in modules}

    assert import_circles(graph) == []


def test_the_circle_check_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}

    assert import_circles(graph) == [["a", "b", "c"]]
