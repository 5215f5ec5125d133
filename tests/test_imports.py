"""The package's import graph: layers import downwards only, and no modules import each other in a loop.

Every `import` / `from ... import` in every module counts, at module level and inside functions
(a lazy import is still a dependency). `from vlmbias.audit import metrics` is an edge to the
submodule `vlmbias.audit.metrics`; `from vlmbias import VlmbiasError` an edge to `vlmbias`.
The root package's PEP 562 `__getattr__` (the lazy `from vlmbias import metrics` entry point)
runs only on attribute access, after the package is loaded, and is left out.
"""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(tree: ast.Module, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The vlmbias modules a module's source imports (module- and function-level)."""
    out = set()
    skip = {id(n) for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "__getattr__"
            for n in ast.walk(f)}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                pkg = name.split(".") if is_package else name.split(".")[:-1]
                pkg = pkg[:len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in modules else base)
    return {m for m in out if m == "vlmbias" or m.startswith("vlmbias.")}


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    files = {module_name(p, src): p for p in (src / "vlmbias").rglob("*.py")}
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        deps = imports_of(tree, name, path.name == "__init__.py", set(files))
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def offenders(graph, lower: str, upper: tuple[str, ...]) -> list[str]:
    """'a -> b' for every module under package `lower` that imports a module under one of `upper`."""
    def under(m, pkg):
        return m == pkg or m.startswith(pkg + ".")
    return sorted(f"{m} -> {d}" for m, deps in graph.items() if under(m, lower)
                  for d in deps if any(under(d, u) for u in upper))


GRAPH = import_graph()


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "vlmbias"
    (pkg / "audit").mkdir(parents=True)
    (pkg / "__init__.py").write_text("class VlmbiasError(Exception): pass\n"
                                     "def __getattr__(name):\n    from vlmbias.audit import b\n")
    (pkg / "audit" / "__init__.py").write_text("")
    (pkg / "audit" / "a.py").write_text("from vlmbias import VlmbiasError\n\ndef f():\n    from . import b\n")
    (pkg / "audit" / "b.py").write_text("import numpy\nfrom vlmbias.audit.a import f\n")
    g = import_graph(tmp_path)
    assert g["vlmbias.audit.a"] == {"vlmbias", "vlmbias.audit.b"}
    assert g["vlmbias.audit.b"] == {"vlmbias.audit.a"}
    assert g["vlmbias"] == set()  # the lazy __getattr__ is left out
    assert cycles(g) == [["vlmbias.audit.a", "vlmbias.audit.b"]]
    assert offenders(g, "vlmbias.audit", ("vlmbias.audit.b",)) == ["vlmbias.audit.a -> vlmbias.audit.b"]


def test_the_real_graph_is_read():
    # known edges, so that a parser that found nothing could not pass the rules below
    assert "vlmbias.encoders.models" in GRAPH["vlmbias.audit.embed"]
    assert "vlmbias.encoders.prompt_array" in GRAPH["vlmbias.encoders.models"]  # function-level
    assert "vlmbias.audit.metrics" in GRAPH["vlmbias.audit.coverage"]  # `from vlmbias.audit import metrics`


def test_no_import_cycles():
    assert cycles(GRAPH) == []


@pytest.mark.parametrize("lower, upper", [
    ("vlmbias.encoders", ("vlmbias.audit", "vlmbias.mitigate", "vlmbias.world", "vlmbias.cli", "vlmbias.plots",
                          "vlmbias.report", "vlmbias.experiments", "vlmbias.config")),
    ("vlmbias.audit", ("vlmbias.mitigate", "vlmbias.world", "vlmbias.cli")),
    ("vlmbias.mitigate", ("vlmbias.world", "vlmbias.cli")),
    ("vlmbias.io", ("vlmbias.audit", "vlmbias.mitigate", "vlmbias.world", "vlmbias.encoders")),
    ("vlmbias.imagegate", ("vlmbias.audit", "vlmbias.mitigate", "vlmbias.world", "vlmbias.encoders")),
])
def test_layers_import_downwards_only(lower, upper):
    assert offenders(GRAPH, lower, upper) == []


def test_audit_and_mitigate_never_read_the_worlds_private_files():
    """The calibration world feeds the audit and the methods through ordinary dataset entries only."""
    for package in ("audit", "mitigate"):
        for path in sorted((SRC / "vlmbias" / package).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            for private in ("corpus.parquet", "concepts.csv"):
                assert private not in text, f"{path.relative_to(SRC)} names the world's {private}"
