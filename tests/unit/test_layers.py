"""The project's import structure (README, "Layout"): layers import one way, and no module imports
itself through others. Read from the source with ``ast`` (every import, also inside functions), so
a cycle cannot hide behind a function-local import."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("benchmark", "methods", "datasets", "reports")

# What each layer may import (besides itself), bottom to top.
ALLOWED = {
    "benchmark.core": set(),
    "benchmark.contract": {"benchmark.core"},
    "benchmark.config": {"benchmark.core"},
    "datasets": {"benchmark.core"},
    "methods": {"benchmark.core", "benchmark.contract"},
    "reports": {"benchmark.core", "benchmark.config"},
    "benchmark.engine": {"benchmark.core", "benchmark.contract", "benchmark.config", "datasets"},
    "benchmark.launch": {"benchmark.core", "benchmark.contract", "benchmark.config", "datasets", "benchmark.engine"},
    "benchmark.cli": {"benchmark.core", "benchmark.contract", "benchmark.config", "datasets", "reports",
                      "benchmark.engine", "benchmark.launch"},
    "benchmark.perf": {"benchmark.core", "benchmark.contract", "benchmark.config", "datasets", "benchmark.engine",
                       "benchmark.launch", "benchmark.cli"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports() -> dict[str, set[str]]:
    """module -> the project modules it imports (``from a import b`` counts ``a.b`` when it is a module)."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                           for a in node.names]
            else:
                continue
            found.update(t for t in targets if t.split(".")[0] in PACKAGES and t != name)
        graph[name] = {t for t in found if t in files}
    return graph


def layer_of(module: str) -> str:
    return max((layer for layer in ALLOWED if module == layer or module.startswith(layer + ".")), key=len,
               default=module)


def test_every_module_belongs_to_a_layer():
    stray = [m for m in project_imports() if layer_of(m) not in ALLOWED and m not in PACKAGES + ("benchmark",)]
    assert not stray, f"modules outside every layer: {stray}"


def test_layers_import_one_way():
    wrong = sorted(f"{m} -> {t}" for m, targets in project_imports().items() for t in targets
                   if layer_of(m) in ALLOWED and layer_of(t) != layer_of(m)
                   and layer_of(t) not in ALLOWED[layer_of(m)])
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_import_cycles():
    graph = project_imports()
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):                                   # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_methods_never_reach_the_process_group():
    """Methods see other ranks only through the contract (harness-owned tables, global-batch helpers)."""
    graph = project_imports()
    leaks = sorted(f"{m} -> {t}" for m, targets in graph.items() if m.startswith("methods")
                   for t in targets if t.startswith("benchmark.core.process_group") or t.startswith("benchmark.engine"))
    assert not leaks, leaks
