"""No import cycles between the domain packages of microfactory (a parse of the sources).

A domain package is a directory under microfactory/ (accounts, bookings, jobs, ...). An edge
A → B means some module of A imports something of B, anywhere in the module (a lazy import
inside a function still couples the packages). The runtime package sits above the domains
and is the only one that imports drivers/.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "microfactory"
ABOVE_THE_DOMAINS = frozenset({"runtime"})  # orchestration layers: may import every domain
# Modules outside the runtime that read pure data from drivers/, never a driver or a device:
DRIVER_DATA_READERS = {
    "files.py": "drivers.base.clean_lines: the one definition of a G-code program's lines",
    "analysis/gcode.py": "drivers.planner: the one motion planner (pure), shared with the sims",
    "machines/schemas.py": "DRIVER_NAMES and the simulators' option names, to validate settings",
}


def _imports(path: Path) -> set[str]:
    """Return the absolute module names a file imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "microfactory" and (ROOT / parts[1]).is_dir():
        return parts[1]
    return None


def domain_graph() -> dict[str, set[str]]:
    """Return package → packages it imports (domains and layers, not top-level modules)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if len(rel.parts) < 2:
            continue  # top-level modules (app, db, errors, ...) are shared plumbing
        source = rel.parts[0]
        graph[source]
        for module in _imports(path):
            target = _package_of(module)
            if target and target != source:
                graph[source].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Return one path for every strongly connected group of two or more packages."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_graph_sees_real_imports() -> None:
    graph = domain_graph()
    assert "accounts" in graph["jobs"]  # jobs are owned by users: the parse finds it


def test_no_import_cycles_between_domain_packages() -> None:
    graph = domain_graph()
    cycles = _cycles(graph)
    detail = "; ".join(
        " ↔ ".join(group)
        + " ("
        + ", ".join(f"{a}→{b}" for a in group for b in sorted(graph[a]) if b in group)
        + ")"
        for group in cycles
    )
    assert not cycles, f"import cycles between domain packages: {detail}"


def test_only_the_runtime_imports_drivers() -> None:
    offenders = sorted(
        str(path.relative_to(ROOT))
        for path in ROOT.rglob("*.py")
        if path.relative_to(ROOT).parts[0] not in ABOVE_THE_DOMAINS
        and path.relative_to(ROOT).as_posix() not in DRIVER_DATA_READERS
        and any(m == "drivers" or m.startswith("drivers.") for m in _imports(path))
    )
    assert offenders == []


def test_domains_do_not_import_the_runtime() -> None:
    graph = domain_graph()
    importers = sorted(p for p, targets in graph.items() if "runtime" in targets and p != "runtime")
    assert importers == []


def test_the_models_module_imports_models_only() -> None:
    imported = _imports(ROOT / "models.py")
    assert "microfactory.scheduler" not in imported
