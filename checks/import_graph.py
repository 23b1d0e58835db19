"""The package's import graph: cycles between modules and between subpackages (module-level and deferred
imports both count: a deferred import is a dependency all the same). Exits 1 on a cycle.

    .venv/bin/python checks/import_graph.py [--tree]
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("lottery"):
            base = node.module
            for alias in node.names:  # `from lottery.x import y` where y is a module counts as y
                candidate = f"{base}.{alias.name}"
                out.add(candidate if candidate in modules else base)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("lottery"))
    return out


def group(module: str) -> str:
    """A subpackage (lottery.training), or the top-level module itself (lottery.config)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def main() -> int:
    paths = {module_name(p): p for p in (SRC / "lottery").rglob("*.py")}
    modules = set(paths)
    graph = {m: {i for i in imports(p, modules) if i in modules and i != m} for m, p in paths.items()}
    # A package's __init__ re-exporting its modules is not a dependency of those modules on it.
    module_cycles = [c for c in cycles({m: {i for i in deps if not m.startswith(i + ".")} for m, deps in graph.items()})]
    groups: dict[str, set[str]] = {}
    for m, deps in graph.items():
        if m in ("lottery", "lottery.__main__"):
            continue  # the package's face and entry point import everything
        groups.setdefault(group(m), set()).update(group(d) for d in deps if group(d) != group(m) and d != "lottery")
    group_cycles = cycles(groups)
    for c in module_cycles:
        print("module cycle:", " -> ".join(c))
    for c in group_cycles:
        print("subpackage cycle:", " -> ".join(c))
    if "--tree" in sys.argv:
        for g in sorted(groups):
            print(f"{g}: {', '.join(sorted(x.removeprefix('lottery.') for x in groups[g]))}")
    print(f"{len(modules)} modules, {len(module_cycles)} module cycles, {len(group_cycles)} subpackage cycles")
    return 1 if module_cycles or group_cycles else 0


if __name__ == "__main__":
    sys.exit(main())
