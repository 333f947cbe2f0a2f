"""The rooms and their layers (README "Architecture", ../shared/DESIGN.md "Rooms") stay true.

Every module's imports are read from its source, including imports inside functions and under
``TYPE_CHECKING``; an import that goes up a layer, sideways where the layer forbids it, or
closes a cycle between modules fails here with the offending line named.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.factories import REPO

# Bottom to top. A room may import its own modules and every room of a lower layer; within a
# layer only the pairs in SIDEWAYS (the toolchain chooses calibrations by measured mAP; the
# scale-out roles serve through the server's app, hub and metrics).
TYPES = "pipeline.types"
LAYERS: list[set[str]] = [
    {TYPES},
    {"models", "trackers", "analytics"},  # each imports only the types
    {"pipeline"},  # the path of a frame, and the wiring
    {"evaluation", "toolchain", "server", "cluster"},
    {"benchmarks"},
    {"cli"},  # the one entry point: may import everything
]
SIDEWAYS = {"toolchain": {"evaluation"}, "cluster": {"server"}}  # cluster reuses the server
ALLOWED: dict[str, set[str]] = {
    room: set().union(*LAYERS[:i]) | SIDEWAYS.get(room, set())
    for i, layer in enumerate(LAYERS)
    for room in layer
}
ROOMS = [r for r in ALLOWED if r != TYPES]


def _room(module: str) -> str | None:
    if module == TYPES or module.startswith(TYPES + "."):
        return TYPES
    top = module.split(".")[0]
    return top if top in ALLOWED else None


def _modules() -> dict[str, Path]:
    found = {}
    for room in ROOMS:
        for path in sorted((REPO / room).rglob("*.py")) if (REPO / room).is_dir() else []:
            rel = path.relative_to(REPO).with_suffix("")
            name = ".".join(rel.parts).removesuffix(".__init__")
            found[name] = path
    return found


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    out = []
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parent = module.split(".")[: -node.level]
                base = ".".join([*parent, base] if base else parent)
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def test_every_room_exists_and_is_a_package() -> None:
    for room in ("pipeline", "models", "trackers", "evaluation", "toolchain", "server", "cluster",
                 "cli"):  # fmt: skip
        assert (REPO / room / "__init__.py").is_file(), room


def test_imports_follow_the_layers() -> None:
    modules = _modules()
    assert len(modules) > 40
    bad = []
    for name, path in modules.items():
        src_room = _room(name)
        assert src_room is not None
        for line, target in _imports(path, name):
            dst_room = _room(target)
            if dst_room is None or dst_room == src_room:
                continue  # the standard library, a third-party package, or its own room
            if dst_room not in ALLOWED[src_room]:
                bad.append(
                    f"{path.relative_to(REPO)}:{line} imports {target} ({src_room} -> {dst_room})"
                )
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    """Each cycle found by a depth-first walk, as ``a -> b -> a``."""
    seen: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        seen[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if seen.get(dep) == 1:
                cycles.append(" -> ".join([*stack[stack.index(dep) :], dep]))
            elif dep not in seen:
                visit(dep)
        stack.pop()
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node)
    return cycles


def test_no_import_cycles_between_modules() -> None:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for _, target in _imports(path, name):
            # "from pipeline import config" names the module pipeline.config; "from x import f"
            # names the module x: keep the longest prefix that is one of ours.
            parts = target.split(".")
            for i in range(len(parts), 0, -1):
                candidate = ".".join(parts[:i])
                if candidate in modules and candidate != name:
                    deps.add(candidate)
                    break
        graph[name] = {d for d in deps if not name.startswith(d + ".") and d != name}
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_catches_a_violation(tmp_path: Path) -> None:
    """The walk sees imports inside functions (a checker that cannot fail is no checker)."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from server.app import create_app\n")
    assert (2, "server.app") in _imports(src, "models.m")
    assert _room("server.app") not in ALLOWED["models"]


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a -> b -> c -> a"]
    assert _cycles({"a": {"b"}, "b": set()}) == []
