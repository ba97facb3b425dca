"""The package's shape: a few modules at the top, sub-packages by concern, no import circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_TOP_MODULES = 10


def imports_of(path: Path, package: str | None) -> set[str]:
    """Return the modules `path` imports at run time (a `TYPE_CHECKING` block's are not)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def graph(directory: Path, prefix: str) -> dict[str, set[str]]:
    """Map each module under directory (named with prefix) to the ones of it that it imports."""
    modules: dict[str, Path] = {}
    for path in directory.rglob("*.py"):
        if ".venv" in path.parts:
            continue
        parts = path.relative_to(directory).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(p for p in (prefix, *parts) if p)] = path
    return {
        name: {m for m in imports_of(path, prefix) if m in modules and m != name}
        for name, path in modules.items()
    }


def cycle_in(edges: dict[str, set[str]]) -> list[str] | None:
    """Return one import circle as a path of module names, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


@pytest.mark.parametrize(
    ("directory", "prefix"),
    [(ROOT / "scorer", "scorer"), (ROOT / "config", "config"), (ROOT / "bench", "")],
)
def test_no_module_imports_itself_round_a_circle(directory: Path, prefix: str) -> None:
    assert cycle_in(graph(directory, prefix)) is None


def test_the_circle_finder_finds_one() -> None:
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_in({"a": {"b"}, "b": set()}) is None


def test_the_package_keeps_a_few_modules_at_its_top_and_documents_each_sub_package() -> None:
    top = [p for p in (ROOT / "scorer").glob("*.py") if p.name != "__init__.py"]
    assert len(top) <= MAX_TOP_MODULES, sorted(p.name for p in top)
    for package in (ROOT / "scorer").iterdir():
        if package.is_dir() and package.name != "__pycache__":
            doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
            assert doc and "import" in doc, f"{package.name}/__init__.py says what it may import"


BENCH_SHARE = 0.6  # the measuring kit stays smaller than what it measures


def python_lines(directory: Path) -> int:
    """Count the lines of the Python files under directory, virtual environments left out."""
    paths = (p for p in directory.rglob("*.py") if not any(".venv" in q for q in p.parts))
    return sum(len(p.read_text().splitlines()) for p in paths)


def test_the_bench_stays_at_most_six_tenths_of_the_package() -> None:
    bench, package = python_lines(ROOT / "bench"), python_lines(ROOT / "scorer")
    assert bench <= BENCH_SHARE * package, f"bench/ {bench} lines, scorer/ {package}"
