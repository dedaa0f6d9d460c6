"""The package's imports point one way: down the folders of the data flow, with no cycles.

The layer order lives here (README "Architecture" names the same folders). A module may import
modules of its own layer or of layers below it; never above. Every way of importing counts:
``import``/``from`` (absolute or relative), ``importlib.import_module("noisytag....")`` and the lazy
facade (``from noisytag import run_pipeline`` is an import of the module behind that name). Imports
inside functions count too (a cycle hidden in a function is still a cycle), and only the CLI may
import the package's own modules inside functions (it keeps ``noisytag --help`` instant). Cycles are
found between modules, so two submodules of one folder cannot import each other either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "noisytag"

# Top to bottom: each folder (or base module) and the layer it belongs to.
LAYERS: list[tuple[str, set[str]]] = [
    ("cli", {"cli", "__main__"}),
    ("front doors", {"serve", "review", "report", "ablate"}),
    ("runs", {"runs"}),
    ("learn", {"learn"}),
    ("infer", {"infer"}),
    ("models", {"models"}),
    ("audio", {"audio"}),
    ("data", {"data"}),
    ("base", {"config", "plan", "rundir", "fileio", "metrics", "bootstrap", "registry", "settings"}),
]
LAZY_ALLOWED = {"cli"}  # may import the package's modules inside functions (heavy, optional at --help)


def module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def layer_of(module: str) -> int:
    head = module.split(".")[0]
    for i, (_, members) in enumerate(LAYERS):
        if head in members:
            return i
    raise AssertionError(f"module {module!r} is in no layer: add it to LAYERS in tests/test_layers.py")


def facade(root: Path) -> dict[str, str]:
    """Names the package's ``__init__`` serves lazily → the module behind each (``_LAZY``)."""
    init = root / "__init__.py"
    out: dict[str, str] = {}
    if not init.exists():
        return out
    for node in ast.walk(ast.parse(init.read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_LAZY" for t in node.targets):
            lazy = ast.literal_eval(node.value)
            out = {name: target.split(":")[0] for name, target in lazy.items()}
    return out


def _import_module_target(node: ast.Call) -> str | None:
    """The module named by ``importlib.import_module("...")`` (literal, or an f-string's literal prefix)."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name != "import_module" or not node.args:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return str(arg.values[0].value).rstrip(".") or None
    return None


def imports(root: Path, path: Path) -> list[tuple[str, int, bool]]:
    """(imported module of the package, line, inside a function) for every way ``path`` imports one."""
    package = root.name
    here = module_name(root, path)
    is_package = path.name == "__init__.py"
    lazy = facade(root)
    tree = ast.parse(path.read_text())
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    local_lines = {
        n.lineno
        for f in functions
        for n in ast.walk(f)
        if isinstance(n, ast.Import | ast.ImportFrom | ast.Call)
    }
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = here.split(".") if here else []
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                stem = ".".join(base + ([node.module] if node.module else []))
                full = f"{package}.{stem}" if stem else package
            else:
                full = node.module or ""
            if full == package:
                for alias in node.names:
                    if alias.name in lazy:
                        found.append((lazy[alias.name], node.lineno))
                    else:
                        found.append((f"{package}.{alias.name}", node.lineno))
            else:
                found.append((full, node.lineno))
                # `from pkg.folder import module` imports that module too
                found.extend((f"{full}.{alias.name}", node.lineno) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.Call) and (target := _import_module_target(node)):
            found.append((target, node.lineno))
    known = {module_name(root, p) for p in root.rglob("*.py")}
    out = []
    for name, line in found:
        if not name.startswith(f"{package}."):
            continue
        target = name.removeprefix(f"{package}.")
        if target not in known:  # `from pkg.mod import function`: the module is the part before
            continue
        if target.split(".")[0] in {m for _, ms in LAYERS for m in ms} and target != here:
            out.append((target, line, line in local_lines))
    return out


def graph(root: Path = PACKAGE) -> dict[str, list[tuple[str, int, bool]]]:
    return {module_name(root, p): imports(root, p) for p in sorted(root.rglob("*.py"))}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the module graph, or None."""
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


def _is_ancestor(a: str, b: str) -> bool:
    """A package's ``__init__`` importing its own submodules (or a submodule its package) is no cycle."""
    return b.startswith(a + ".") or a.startswith(b + ".")


def upward_imports(root: Path = PACKAGE) -> list[str]:
    wrong = []
    for module, targets in graph(root).items():
        if not module:
            continue
        for target, line, _ in targets:
            if layer_of(target) < layer_of(module):
                wrong.append(
                    f"{module}:{line} imports {target} ({LAYERS[layer_of(target)][0]} is above {LAYERS[layer_of(module)][0]})"
                )
    return wrong


def module_cycle(root: Path = PACKAGE) -> list[str] | None:
    edges: dict[str, set[str]] = {}
    for module, targets in graph(root).items():
        for target, _, _ in targets:
            if target != module and not _is_ancestor(module, target):
                edges.setdefault(module, set()).add(target)
    return find_cycle(edges)


def test_every_module_has_a_layer():
    for module in graph():
        if module:
            layer_of(module)


def test_imports_point_down_the_layers():
    wrong = upward_imports()
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    cycle = module_cycle()
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_package_imports_sit_at_module_level():
    lazy = [
        f"{module}:{line} imports {target} inside a function"
        for module, targets in graph().items()
        if module.split(".")[0] not in LAZY_ALLOWED
        for target, line, local in targets
        if local
    ]
    assert not lazy, "\n".join(lazy)


def test_every_folder_says_what_it_owns():
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, (
            f"{init.relative_to(PACKAGE.parent)} needs a docstring: what it owns, what it may import"
        )


# Build steps: exporting traces graphs, quantising calibrates on the training data set. The runtime (the
# Tagger and the service) only reads what they wrote, so it may not import them, not even through a module
# it imports (the commands run them first: noisytag.infer.build).
BUILD_STEPS = {"infer.export", "infer.quantize", "infer.calibration"}
RUNTIME = ("serve", "infer.tag")


def loaded_with(module: str, edges: dict[str, list[tuple[str, int, bool]]]) -> dict[str, str]:
    """Every module that importing ``module`` loads (its module-level imports, followed, and the packages
    above each) → the module that imports it."""
    seen: dict[str, str] = {}
    todo = [module]
    while todo:
        here = todo.pop()
        parents = [".".join(here.split(".")[:i]) for i in range(1, len(here.split(".")))]
        for target in [t for t, _, local in edges.get(here, []) if not local] + parents:
            if target not in seen and target != module:
                seen[target] = here
                todo.append(target)
    return seen


def runtime_build_imports(root: Path = PACKAGE) -> list[str]:
    edges = graph(root)
    runtime = [m for m in edges if any(m == r or m.startswith(r + ".") for r in RUNTIME)]
    return [
        f"{module} loads {target} (imported by {by})"
        for module in runtime
        for target, by in sorted(loaded_with(module, edges).items())
        if target in BUILD_STEPS
    ]


def test_runtime_does_not_import_build_steps():
    wrong = runtime_build_imports()
    assert not wrong, "\n".join(wrong)


def test_checker_catches_a_build_step_behind_another_module(tmp_path):
    root = _fake_package(
        tmp_path,
        {
            "infer/__init__.py": "",
            "infer/export.py": "",
            "infer/helper.py": "from noisytag.infer import export\n",
            "infer/tag.py": "from noisytag.infer.helper import x\n",
        },
    )
    assert runtime_build_imports(root) == ["infer.tag loads infer.export (imported by infer.helper)"]


def test_no_module_is_too_long():
    long = [
        f"{p.relative_to(PACKAGE.parent)}: {n}"
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 450
    ]
    assert not long, "modules over 450 lines:\n" + "\n".join(long)


@pytest.mark.parametrize(
    "edges, cycle",
    [({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True), ({"a": {"b"}, "b": {"c"}}, False)],
)
def test_cycle_finder(edges, cycle):
    assert (find_cycle(edges) is not None) == cycle


# The checker itself, on small packages with one fault each: each must be caught.
_FAKE_INIT = '"""fake."""\n_LAZY = {"run_pipeline": "noisytag.runs.pipeline:run_pipeline"}\n'


def _fake_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "noisytag"
    base = {
        "__init__.py": _FAKE_INIT,
        "config.py": "",
        "data/__init__.py": "",
        "data/dataset.py": "",
        "runs/__init__.py": "",
        "runs/pipeline.py": "",
        "learn/__init__.py": "",
        "learn/train.py": "",
        "learn/folds.py": "",
    }
    for rel, text in {**base, **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    "files",
    [
        {"data/dataset.py": "from ..runs import pipeline\n"},
        {"data/dataset.py": "from ..runs.pipeline import run_pipeline\n"},
        {"learn/train.py": "from . import folds\nfrom .. import runs\n"},
        {"data/dataset.py": "import importlib\nplugin = importlib.import_module('noisytag.learn.train')\n"},
        {"data/dataset.py": "from importlib import import_module\nm = import_module(f'noisytag.runs.{1}')\n"},
        {"learn/train.py": "from noisytag import run_pipeline\n"},
        {"config.py": "import noisytag.data.dataset\n"},
    ],
    ids=[
        "relative",
        "relative-from",
        "relative-package",
        "import_module",
        "import_module-fstring",
        "facade",
        "plain",
    ],
)
def test_checker_catches_upward_imports(tmp_path, files):
    assert upward_imports(_fake_package(tmp_path, files))


def test_checker_catches_a_cycle_between_submodules(tmp_path):
    root = _fake_package(
        tmp_path,
        {
            "learn/train.py": "from noisytag.learn import folds\n",
            "learn/folds.py": "from noisytag.learn.train import fit\n",
        },
    )
    assert not upward_imports(root)
    assert module_cycle(root) is not None


def test_checker_passes_a_clean_package(tmp_path):
    root = _fake_package(
        tmp_path, {"runs/pipeline.py": "from noisytag.learn import train\nfrom ..data.dataset import x\n"}
    )
    assert not upward_imports(root)
    assert module_cycle(root) is None
