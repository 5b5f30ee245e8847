"""Imports run one way (DESIGN.md, "Layers"): no import cycle inside the package, and no module imports a layer
above its own (library code never imports a stage runner, a trainer or the top), and the two trainers never import
each other.

Every ``import`` and ``from ... import`` of every module is read with `ast`, at module level and inside functions
alike (a lazy import that closes a loop is still a loop, it only fails later), without importing anything.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# where each installed package's files live (pyproject.toml's package-dir mapping)
PACKAGE_DIRS = {"genrec": ROOT / "genrec", "genrec.tokenizer": ROOT / "tokenizer", "genrec.rewards": ROOT / "rewards"}

# DESIGN.md's layers, top first; a module belongs to the first entry that names it or its package. A module may
# import its own layer and the layers below, never one above.
LAYERS = [
    ("top", ["genrec.cli", "genrec.pipeline", "genrec.serving", "genrec.client"]),
    ("trainers", ["genrec.sft", "genrec.grpo"]),
    ("shared by trainers", ["genrec.training", "genrec.recommender", "genrec.baselines", "genrec.evaluate"]),
    ("model and results", ["genrec.modeling", "genrec.describe", "genrec.checkpoint", "genrec.evaluation",
                           "genrec.report", "genrec.plots"]),
    # interests.schema is the format of interests.jsonl, which the artifacts reader reads: it sits with artifacts
    # genrec.sources: the raw-data loaders genrec.data dispatches to (and the record checks data shares with them)
    ("stages", ["genrec.data", "genrec.sources", "genrec.encoders", "genrec.tokenizer", "genrec.calibrate",
                "genrec.interests"]),
    ("run files, decoding, rewards", ["genrec.artifacts", "genrec.interests.schema", "genrec.decoding",
                                      "genrec.rewards"]),
    ("bottom", ["genrec.io", "genrec.sid", "genrec.tasks", "genrec.precision", "genrec.head", "genrec.synthetic",
                "genrec.config", "genrec.content", "genrec.explain", "genrec"]),
]
TRAINERS = ("genrec.sft", "genrec.grpo")


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (tokenizer/ and rewards/ under genrec.)."""
    out = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join((package, *parts))
            if name.split(".")[1:2] in (["tokenizer"], ["rewards"]) and package == "genrec":
                continue  # a checkout never has these, but an editable install's links might
            out[name] = path
    return out


MODULES = module_files()


def _target(name: str) -> str | None:
    """The package module that importing `name` runs last: itself, or its nearest enclosing module."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path) -> list[tuple[str, int]]:
    """(imported package module, line) for every import statement of a file, in functions too."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y, from . import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from pkg import sub` imports the submodule pkg.sub; `from mod import name` imports mod
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            target = _target(name) if name.split(".")[0] == "genrec" else None
            if target and target != module and (target, node.lineno) not in found:
                found.append((target, node.lineno))
    return found


GRAPH = {m: imports_of(m, p) for m, p in MODULES.items()}


def where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(ROOT)}:{line}"


def find_cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[tuple[str, int]]]:
    """One cycle per strongly connected group of modules (Tarjan), as [(module, line of its import of the next)]."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):  # the package has ~100 modules: recursion depth is no concern
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _ in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, group) for group in groups]


def _cycle_in(graph, group: set[str]) -> list[tuple[str, int]]:
    """A shortest cycle through the group's first module, by breadth-first search inside the group."""
    start = min(group)
    previous = {start: None}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w, line in graph[v]:
                if w == start:
                    path = [(v, line)]
                    while previous[path[-1][0]] is not None:
                        path.append(previous[path[-1][0]])
                    return path[::-1]
                if w in group and w not in previous:
                    previous[w] = (v, line)
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")


def layer(module: str) -> int:
    """Index of the module's layer in LAYERS (0 = top); the most specific entry wins."""
    best = None
    for n, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > len(best[1]):
                    best = (n, prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS (and DESIGN.md, 'Layers')"
    return best[0]


def test_every_module_has_a_layer():
    for module in MODULES:
        layer(module)


def test_the_graph_sees_lazy_and_relative_imports():
    # the walk must see imports inside functions and relative ones, or the other tests prove nothing
    assert any(t == "genrec.tokenizer.config" for t, _ in GRAPH["genrec.tokenizer.stage"])  # from .config import
    assert any(t == "genrec.data" for t, _ in GRAPH["genrec.pipeline"])  # inside run_data


def test_no_import_cycles():
    cycles = find_cycles(GRAPH)
    shown = ["\n  ".join(f"{m} imports {cycle[(n + 1) % len(cycle)][0]} ({where(m, line)})"
                         for n, (m, line) in enumerate(cycle)) for cycle in cycles]
    assert not cycles, "import cycles (break each by moving the shared piece down a layer):\n  " + "\n\n  ".join(shown)


def test_imports_run_downward():
    upward = [f"{where(m, line)}: {m} ({LAYERS[layer(m)][0]}) imports {t} ({LAYERS[layer(t)][0]})"
              for m, edges in GRAPH.items() for t, line in edges if layer(t) < layer(m)]
    assert not upward, "imports of a higher layer (DESIGN.md, 'Layers'):\n" + "\n".join(upward)


def test_trainers_share_through_training_only():
    sideways = [f"{where(m, line)}: {m} imports {t}" for m in TRAINERS for t, line in GRAPH[m]
                if t in TRAINERS]
    assert not sideways, "the trainers import each other; move what they share to genrec.training:\n" + "\n".join(
        sideways)


@pytest.mark.parametrize("graph, cycle", [
    # a direct loop, as evaluation <-> baselines.common was
    ({"a": [("b", 1)], "b": [("a", 2)]}, [("a", 1), ("b", 2)]),
    # a loop through a third module, as artifacts -> modeling -> encoders -> artifacts was
    ({"a": [("b", 1)], "b": [("c", 2)], "c": [("a", 3)], "d": [("a", 4)]}, [("a", 1), ("b", 2), ("c", 3)]),
    # a chain is no loop
    ({"a": [("b", 1)], "b": [("c", 2)], "c": []}, None),
])
def test_find_cycles(graph, cycle):
    found = find_cycles(graph)
    assert found == ([cycle] if cycle else [])
