"""The architecture's rules, checked on the source (README "How a study flows").

- a stage imports only itself and the stages before it in the data flow;
- no import cycles between packages;
- the project's own modules are imported plainly: no ``except ImportError`` around them,
  no ``importlib.import_module("aenode...")`` by name;
- only ``aenode/store/db.py`` talks to SQLite (every store goes through its adapter).
"""

from __future__ import annotations

import ast
from pathlib import Path

import aenode

ROOT = Path(aenode.__file__).parent

# Rank of each top-level part of the package, in data-flow order.  A module may import
# parts of the same or a lower rank.
RANK = {
    "__init__": 0, "config": 0, "logs": 0,
    "store": 1,
    "phantom": 2, "peers": 2, "receive": 2,
    "select": 3, "load": 4, "infer": 5, "evaluate": 5.5, "report": 6, "deliver": 7, "alert": 8, "surveil": 8.5,
    "export": 8.5, "web": 9,
    "node": 10, "backfill": 10.5,
    "cli": 11, "demo": 11, "__main__": 12,
}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


PACKAGES: set[str] = set()


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        if path.name == "__init__.py":
            PACKAGES.add(name)
        out[name] = ast.parse(path.read_text(), filename=str(path))
    return out


def _imports(tree: ast.Module, module: str) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("aenode")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the module's package
                package = module.split(".") if module in PACKAGES else module.split(".")[:-1]
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("aenode"):
                found.append(target)
                found += [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
    return found


MODULES = _modules()


def test_every_part_has_a_rank():
    parts = {_part(m) for m in MODULES}
    assert parts <= set(RANK), f"give these a rank in the data flow: {sorted(parts - set(RANK))}"


def test_no_stage_imports_a_later_one():
    backward = []
    for module, tree in MODULES.items():
        mine = _part(module)
        for target in _imports(tree, module):
            theirs = _part(target)
            if theirs != mine and RANK[theirs] > RANK[mine]:
                backward.append(f"{module} imports {target}")
    assert not backward, "imports against the data flow:\n" + "\n".join(sorted(set(backward)))


def test_no_import_cycles_between_packages():
    graph: dict[str, set[str]] = {}
    for module, tree in MODULES.items():
        for target in _imports(tree, module):
            if _part(target) != _part(module):
                graph.setdefault(_part(module), set()).add(_part(target))
    seen: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if seen.get(nxt) == 1:
                cycle.extend(path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt])
            elif nxt not in seen:
                visit(nxt, path + [node])
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node, [])
    assert not cycle, f"package cycle: {' -> '.join(cycle)}"


def test_own_modules_are_imported_plainly():
    problems = []
    for module, tree in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Try):
                catches_import_error = any(
                    isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                    or isinstance(h.type, ast.Tuple) and any(
                        isinstance(e, ast.Name) and e.id in ("ImportError", "ModuleNotFoundError") for e in h.type.elts)
                    for h in node.handlers)
                guarded = [t for stmt in node.body for t in _imports(ast.Module(body=[stmt], type_ignores=[]), module)]
                if catches_import_error and guarded:
                    problems.append(f"{module}: except ImportError around {guarded}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "import_module" and node.args
                    and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("aenode")):
                problems.append(f"{module}: imports {node.args[0].value} by name")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("aenode.") \
                    and ":" in node.value and node.value.split(":")[0] in MODULES:
                problems.append(f"{module}: names {node.value} as a string to import")
        uses_importlib = any(isinstance(n, (ast.Import, ast.ImportFrom)) and (
            any(a.name == "importlib" for a in n.names) if isinstance(n, ast.Import) else n.module == "importlib")
            for n in ast.walk(tree))
        names = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        if uses_importlib and names & set(MODULES):
            problems.append(f"{module}: imports {sorted(names & set(MODULES))} by name (importlib)")
    assert not problems, "\n".join(problems)


def test_only_the_database_adapter_talks_to_sqlite():
    users = [m for m, tree in MODULES.items()
             if m != "aenode.store.db" and any(
                 isinstance(n, (ast.Import, ast.ImportFrom)) and (
                     any(a.name == "sqlite3" for a in n.names) if isinstance(n, ast.Import) else n.module == "sqlite3")
                 for n in ast.walk(tree))]
    assert not users, f"modules that import sqlite3 instead of using aenode.store.db: {users}"


def test_log_events_are_snake_case_names():
    """One naming style for log events (``noun_verb``), so they can be searched and counted."""
    import re

    methods = {"debug", "info", "warning", "error", "exception", "critical"}
    bad = []
    for module, tree in MODULES.items():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in methods
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("log", "logger")
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
                    and not re.fullmatch(r"[a-z][a-z0-9_]*", node.args[0].value)):
                bad.append(f"{module}:{node.lineno}: {node.args[0].value!r}")
    assert not bad, "log events that are not snake_case names:\n" + "\n".join(bad)
