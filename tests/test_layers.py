"""The package's imports point one way: down the layers of the data flow, with no cycles.

The layer order lives here (README "Architecture" names the same layers). A module may import
modules of its own layer or of layers below it; never above. Imports inside functions count too
(a cycle hidden in a function is still a cycle), and only the CLI may import the package's own
modules inside functions (it keeps ``noisytag --help`` instant by not loading torch).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "noisytag"

# Top to bottom. Submodules of a package (models.*, cli.*) belong to its layer.
LAYERS: list[tuple[str, set[str]]] = [
    ("cli", {"cli", "__main__"}),
    (
        "commands",
        {"pipeline", "executors", "ablate", "serve", "tag", "export", "report", "summary", "gallery"},
    ),
    (
        "jobs",
        {
            "train",
            "selection",
            "detectors",
            "folds",
            "context",
            "scoring",
            "ensemble",
            "predict",
            "submission",
            "runstats",
        },
    ),
    ("tensors", {"loader", "augment", "models", "members", "metrics", "weights", "plots", "onnx_frontend"}),
    (
        "files",
        {
            "cache",
            "features",
            "audio",
            "windows",
            "data",
            "manifest",
            "fetch",
            "splitzip",
            "rundir",
            "config",
            "fileio",
            "synth",
            "sounds",
        },
    ),
]
LAZY_ALLOWED = {"cli"}  # may import the package's modules inside functions (heavy, optional at --help)


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts) or "noisytag"


def layer_of(module: str) -> int:
    head = module.split(".")[0]
    for i, (_, members) in enumerate(LAYERS):
        if head in members:
            return i
    raise AssertionError(f"module {module!r} is in no layer: add it to LAYERS in tests/test_layers.py")


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported noisytag module, line, inside a function) for every import of the package's own modules."""
    tree = ast.parse(path.read_text())
    out = []
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    local_lines = {
        n.lineno for f in functions for n in ast.walk(f) if isinstance(n, ast.Import | ast.ImportFrom)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "noisytag" else [f"noisytag.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("noisytag."):
                target = name.removeprefix("noisytag.")
                if target.split(".")[0] in {m for _, ms in LAYERS for m in ms}:
                    out.append((target, node.lineno, node.lineno in local_lines))
    return out


def graph() -> dict[str, list[tuple[str, int, bool]]]:
    return {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the module graph (by top-level module), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_has_a_layer():
    for module in graph():
        if module != "noisytag":
            layer_of(module)


def test_imports_point_down_the_layers():
    wrong = []
    for module, targets in graph().items():
        if module == "noisytag":
            continue
        for target, line, _ in targets:
            if layer_of(target) < layer_of(module):
                wrong.append(
                    f"{module}:{line} imports {target} ({LAYERS[layer_of(target)][0]} is above {LAYERS[layer_of(module)][0]})"
                )
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    edges: dict[str, set[str]] = {}
    for module, targets in graph().items():
        src = module.split(".")[0]
        for target, _, _ in targets:
            dst = target.split(".")[0]
            if dst != src:
                edges.setdefault(src, set()).add(dst)
    assert find_cycle(edges) is None, f"import cycle: {' -> '.join(find_cycle(edges))}"


def test_package_imports_sit_at_module_level():
    lazy = [
        f"{module}:{line} imports {target} inside a function"
        for module, targets in graph().items()
        if module.split(".")[0] not in LAZY_ALLOWED
        for target, line, local in targets
        if local
    ]
    assert not lazy, "\n".join(lazy)


@pytest.mark.parametrize(
    "edges, cycle",
    [({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True), ({"a": {"b"}, "b": {"c"}}, False)],
)
def test_cycle_finder(edges, cycle):
    assert (find_cycle(edges) is not None) == cycle
