"""The dependency direction of DESIGN.md, checked on the source (every import, lazy ones included; the
``if __name__ == "__main__":`` block of a module is its command line and not counted): ``utils/`` imports
neither ``models/`` nor ``data/``, ``models/`` never imports ``data/`` (and the reverse), nothing imports an
entry point, and the format module imports none of the modules built on it."""
import ast
from pathlib import Path
from typing import Dict, List, Set

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("utils", "models", "data")
ENTRY_POINTS = ("train", "reconstruct", "evaluate")


def _is_main_guard(node: ast.stmt) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and isinstance(node.test.left, ast.Name)
            and node.test.left.id == "__name__")


def _imports(path: Path) -> Set[str]:
    """Absolute module names ``path`` imports anywhere outside its ``__main__`` block."""
    names: Set[str] = set()
    for top in (n for n in ast.parse(path.read_text()).body if not _is_main_guard(n)):
        for node in ast.walk(top):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _graph() -> Dict[str, Set[str]]:
    modules = {(pkg if f.name == "__init__.py" else f"{pkg}.{f.stem}"): f
               for pkg in PACKAGES for f in sorted((REPO / pkg).glob("*.py"))}
    return {name: {m for m in _imports(f) if m in modules or m.split(".")[0] in ENTRY_POINTS} - {name}
            for name, f in modules.items()}


def _cycles(graph: Dict[str, Set[str]]) -> List[Set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    out: List[Set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_layers_import_downwards_only():
    forbidden = {"utils": ("models", "data", *ENTRY_POINTS), "models": ("data", *ENTRY_POINTS),
                 "data": ("models", *ENTRY_POINTS)}
    bad = [f"{mod} imports {dep}" for mod, deps in _graph().items() for dep in sorted(deps)
           if dep.split(".")[0] in forbidden[mod.split(".")[0]]]
    assert not bad, bad


def test_format_module_imports_nothing_built_on_it():
    graph = _graph()
    assert not graph["data.formats"] & {"data.convert", "data.volumes", "data.cli"}
    for cycle in _cycles(graph):
        assert not cycle & {"data.convert", "data.volumes", "data.cli", "utils.artifacts", "models.artifacts"}, cycle


def test_the_checker_sees_lazy_imports(tmp_path):
    """The checks above would catch an import inside a function (the kind that used to hide the cycles)."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from models import build_model\n\nif __name__ == '__main__':\n    import data.cli\n")
    assert _imports(src) == {"models", "models.build_model"}
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [{"a", "b"}]
