"""The house rules, read from the source: no import cycle in src/ (imports inside functions
included), src/ and bench/ never import a script, no script imports another one."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in ROOT.glob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every module of ours `path` imports, anywhere in the file (functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from src import cli` imports the submodule src.cli
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in known}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in (ROOT / "src").rglob("*.py")}
    return {name: _imports(path, set(files)) - {name} for name, path in files.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_in_src():
    graph = _graph()
    assert "src.cli" in graph and graph["src.cli"], "the parser found no imports: the check would prove nothing"
    assert _find_cycle(graph) is None, " -> ".join(_find_cycle(graph))


def test_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_library_never_imports_the_cli_layer_or_a_script():
    scripts = set(SCRIPTS)
    for path in [*(ROOT / "src").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]:
        imported = _imports(path, scripts | {"src.cli"})
        if path == ROOT / "src" / "cli.py":
            continue
        assert not imported, f"{path.relative_to(ROOT)} imports {sorted(imported)}"


def test_no_script_imports_another_script():
    scripts = set(SCRIPTS)
    for name in sorted(scripts):
        imported = _imports(ROOT / f"{name}.py", scripts) - {name}
        assert not imported, f"{name}.py imports {sorted(imported)}"


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_is_at_most_250_lines(name):
    """A script is its parser, main(argv) and re-exports; anything longer is library code in the wrong place."""
    lines = len((ROOT / f"{name}.py").read_text().splitlines())
    assert lines <= 250, f"{name}.py has {lines} lines: move its library code into src/"


def test_leaves_import_nothing_of_ours():
    known = set(_graph())
    assert _imports(ROOT / "src" / "errors.py", known) == set()
    assert _imports(ROOT / "src" / "device.py", known) <= {"src.errors"}
    assert _imports(ROOT / "src" / "machine.py", known) == set()
