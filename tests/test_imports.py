"""No import circle between the project's files: the graph of every `import` and `from ... import` line (those
inside functions, the lazy ones, included) is acyclic."""

import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Where the project's code finds its modules: the repository root; tests/ and benchmarks/ for the test helpers and
# the benchmark scripts that tests import by their bare names (videos, loader_speed, ...).
SEARCH = (ROOT, ROOT / "tests", ROOT / "benchmarks")


def module_file(name: str, roots: tuple[Path, ...]) -> Path | None:
    """The file a dotted module name resolves to (a.b.c: a/b/c.py or a/b/c/__init__.py), or None when it is not
    the project's (a package from the virtualenv, the standard library)."""
    for root in roots:
        base = root.joinpath(*name.split("."))
        for f in (base.with_suffix(".py"), base / "__init__.py"):
            if f.is_file():
                return f.resolve()
    return None


def imported_files(path: Path, roots: tuple[Path, ...]) -> set[Path]:
    """The project files that `path` imports anywhere in it. `from a.b import c` names the module a.b.c when there
    is one (a submodule), else a.b; `import a.b.c` names a.b.c (running it runs the parent packages' __init__ first,
    but those do not import their submodules back)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if module_file(f"{node.module}.{a.name}", roots) else node.module
                     for a in node.names]
        for name in names:
            f = module_file(name, roots)
            if f is not None and f != path.resolve():
                out.add(f)
    return out


def find_cycle(graph: dict[Path, set[Path]]) -> list[Path] | None:
    """One import circle of `graph` (file -> the files it imports) as [a, b, ..., a], or None."""
    state: dict[Path, int] = {}  # 1: on the current path, 2: done
    stack: list[Path] = []

    def visit(f: Path) -> list[Path] | None:
        state[f] = 1
        stack.append(f)
        for g in sorted(graph.get(f, ())):
            if state.get(g) == 1:
                return stack[stack.index(g):] + [g]
            if g not in state and (cycle := visit(g)):
                return cycle
        stack.pop()
        state[f] = 2
        return None

    for f in sorted(graph):
        if f not in state and (cycle := visit(f)):
            return cycle
    return None


def project_files() -> list[Path]:
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    return [(ROOT / f).resolve() for f in tracked if (ROOT / f).is_file()]


def test_no_import_circle_between_files():
    graph = {f: imported_files(f, SEARCH) for f in project_files()}
    edges = {(f.relative_to(ROOT).as_posix(), g.relative_to(ROOT).as_posix()) for f, gs in graph.items() for g in gs}
    # the graph is the real one: lazy imports inside functions, submodules named by `from package import module`
    assert ("pipeline/__init__.py", "pipeline/backends/dali.py") in edges
    assert ("model/zoo.py", "model/densenet.py") in edges and ("model/zoo.py", "model/__init__.py") not in edges
    assert ("tests/test_loader_speed.py", "benchmarks/loader_speed.py") in edges and len(edges) > 250
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(f.relative_to(ROOT).as_posix() for f in cycle)


def test_the_check_finds_a_circle_through_a_lazy_import(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg import b\n")
    (tmp_path / "pkg" / "b.py").write_text("import os\n\n\ndef f():\n    import pkg.c\n")
    (tmp_path / "pkg" / "c.py").write_text("from pkg.a import something\n")
    files = sorted((tmp_path / "pkg").glob("*.py"))
    graph = {f.resolve(): imported_files(f, (tmp_path,)) for f in files}
    assert [f.name for f in find_cycle(graph)] == ["a.py", "b.py", "c.py", "a.py"]
    (tmp_path / "pkg" / "c.py").write_text("import pkg\n")  # the package's __init__, which imports nothing back
    graph = {f.resolve(): imported_files(f, (tmp_path,)) for f in files}
    assert find_cycle(graph) is None
