"""The package's layers (README "Layout"): no import circle inside riscv_ft/, at most a few
imports from a lower layer up to a higher one, and no long module without a reason at its top.

The import graph is read from the source (ast), every import counted, those inside functions
too: a lazy import still ties two modules together.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "riscv_ft"

# Bottom to top, in the order data flows. A module belongs to the layer of its longest prefix
# here (`riscv_ft.evaluate.__main__` is an entry point, the rest of `riscv_ft.evaluate` is
# evaluation). `riscv_ft` alone is the package root (__version__, the MLX environment); its lazy
# `from riscv_ft import Assistant` is one of the upward imports below.
LAYERS: list[tuple[str, list[str]]] = [
    ("base", ["riscv_ft", "riscv_ft.config", "riscv_ft.runtime", "riscv_ft.device", "riscv_ft.distributed",
              "riscv_ft.plots"]),
    ("RISC-V", ["riscv_ft.rv"]),
    ("model", ["riscv_ft.sources", "riscv_ft.model", "riscv_ft.fused_lora", "riscv_ft.packed_forward"]),
    ("data", ["riscv_ft.data"]),
    ("running a model", ["riscv_ft.inference", "riscv_ft.answer_cache", "riscv_ft.memory", "riscv_ft.memory_plan",
                         "riscv_ft.checkpoint"]),
    ("training", ["riscv_ft.trainer"]),
    ("evaluation", ["riscv_ft.evaluate"]),
    ("reinforcement", ["riscv_ft.grpo"]),
    ("tracking", ["riscv_ft.tracking"]),
    ("one run", ["riscv_ft.experiment", "riscv_ft.assistant", "riscv_ft.mlflow_model"]),
    ("entry points", ["riscv_ft.train", "riscv_ft.sweep", "riscv_ft.compare", "riscv_ft.cli", "riscv_ft.generate",
                      "riscv_ft.export", "riscv_ft.score", "riscv_ft.doctor", "riscv_ft.evaluate.__main__"]),
]
MAX_UPWARD = 3

# A module over LONG lines starts with this line, saying why it stays one file.
LONG = 450
MARKER = "# One module on purpose:"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, dict[str, int]]:
    """module -> {imported riscv_ft module: line of the (last) import}, from every import statement."""
    paths = {module_name(p, package): p for p in sorted(package.rglob("*.py"))}

    def known(name: str) -> str | None:  # the module a dotted name lives in (a name inside it dropped)
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, int]] = {}
    for name, path in paths.items():
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str | None] = []
            if isinstance(node, ast.Import):
                targets = [known(a.name) for a in node.names if a.name.split(".")[0] == "riscv_ft"]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the package that holds this module
                    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source.split(".")[0] == "riscv_ft":
                    # `from riscv_ft.sources import gguf` imports the module riscv_ft.sources.gguf
                    targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in paths else known(source)
                               for a in node.names]
            for target in targets:
                if target and target != name:
                    edges[target] = node.lineno
        graph[name] = edges
    return graph


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def layer_of(module: str) -> int:
    best, best_len = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix != "riscv_ft" and module.startswith(prefix + "."))
            if matches and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    return best


def upward_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    return [f"{a} ({LAYERS[layer_of(a)][0]}) -> {b} ({LAYERS[layer_of(b)][0]}), line {line}"
            for a in sorted(graph) for b, line in sorted(graph[a].items()) if layer_of(b) > layer_of(a)]


def describe_circle(graph: dict[str, dict[str, int]], component: list[str]) -> str:
    return "\n".join(f"    {a} -> {b} (line {line})" for a in component
                     for b, line in sorted(graph[a].items()) if b in component)


def test_no_import_circle_inside_the_package():
    graph = import_graph()
    assert len(graph) > 40 and "riscv_ft.data.pipeline" in graph["riscv_ft.trainer"]  # the graph was read
    found = circles(graph)
    assert not found, "import circles inside riscv_ft/:\n" + "\n".join(
        "modules in one circle: " + ", ".join(c) + "\n" + describe_circle(graph, c) for c in found)


def test_every_module_has_a_layer_and_few_imports_go_up():
    graph = import_graph()
    unplaced = sorted(m for m in graph if layer_of(m) < 0)
    assert not unplaced, f"modules in no layer of LAYERS: {unplaced}"
    upward = upward_imports(graph)
    print("upward imports:\n" + "\n".join(upward))
    assert len(upward) <= MAX_UPWARD, f"{len(upward)} upward imports (at most {MAX_UPWARD}):\n" + "\n".join(upward)


def test_long_modules_say_why_they_stay_one_file():
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).as_posix()
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) > LONG and not lines[0].startswith(MARKER):
            unexplained.append(f"{relative} ({len(lines)} lines)")
    assert not unexplained, (f"modules over {LONG} lines whose first line is not '{MARKER} <why>':\n"
                             + "\n".join(unexplained))


def test_the_graph_finds_a_circle_and_an_upward_import(tmp_path):
    """The checks above can fail: a two-module circle in a scratch package is found, with its lines."""
    package = tmp_path / "riscv_ft"
    (package / "rv").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "rv" / "__init__.py").write_text("")
    (package / "rv" / "a.py").write_text("from riscv_ft.rv import b\n")
    (package / "rv" / "b.py").write_text("def f():\n    from .a import x\n")
    (package / "config.py").write_text("import riscv_ft.rv.a\n")
    graph = import_graph(package)
    assert circles(graph) == [["riscv_ft.rv.a", "riscv_ft.rv.b"]]
    assert "riscv_ft.rv.b -> riscv_ft.rv.a (line 2)" in describe_circle(graph, ["riscv_ft.rv.a", "riscv_ft.rv.b"])
    assert upward_imports(graph) == ["riscv_ft.config (base) -> riscv_ft.rv.a (RISC-V), line 1"]
