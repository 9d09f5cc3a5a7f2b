"""No import cycles among the project's own modules. Imports inside functions count too: deferring an import to
call time hides a cycle from Python's import machinery, not from the design."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("payments_site", "payments", "channels", "reconciliation")


def project_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name → file, for every module of ``packages`` but migrations and tests."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if "migrations" in parts or "tests" in parts:
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module → the project modules it imports, anywhere in its body."""
    modules = project_modules(root, packages)

    def resolve(name: str) -> str | None:
        # "payments.models.Order" is the module payments.models; a name outside the project resolves to None.
        while name:
            if name in modules:
                return name
            name = name.rpartition(".")[0]
        return None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                # `from pkg import name` runs pkg's __init__, and imports pkg.name when that is a module.
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            else:
                continue
            for target in targets:
                found = resolve(target)
                if found is None or found == module:
                    continue
                # A submodule that imports its own package's __init__ is not a cycle: the package is already
                # being imported when its submodule runs.
                if modules[found].name == "__init__.py" and module.startswith(found + "."):
                    continue
                graph[module].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def describe(graph: dict[str, set[str]], component: list[str]) -> str:
    members = set(component)
    edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a] & members)]
    return f"cycle among {', '.join(component)}:\n    " + "\n    ".join(edges)


def test_no_import_cycles() -> None:
    graph = import_graph(ROOT, PACKAGES)
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(describe(graph, c) for c in found)


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_detector_finds_a_cycle_through_a_function_level_relative_import(tmp_path: Path) -> None:
    write(tmp_path, {
        "shop/__init__.py": "",
        "shop/orders.py": "from shop import billing\n",
        "shop/billing.py": "def charge():\n    from .orders import Order\n",
        "shop/tests/test_orders.py": "from shop import orders\n",  # tests are not part of the graph
        "shop/migrations/0001_initial.py": "from shop import orders\n",
    })
    graph = import_graph(tmp_path, ("shop",))
    assert set(graph) == {"shop", "shop.orders", "shop.billing"}
    assert cycles(graph) == [["shop.billing", "shop.orders"]]


def test_a_submodule_importing_its_package_is_not_a_cycle(tmp_path: Path) -> None:
    write(tmp_path, {
        "shop/__init__.py": "from shop.orders import Order\nVERSION = 1\n",
        "shop/orders.py": "from shop import VERSION\nimport json\n",
    })
    graph = import_graph(tmp_path, ("shop",))
    assert graph == {"shop": {"shop.orders"}, "shop.orders": set()}
    assert cycles(graph) == []
