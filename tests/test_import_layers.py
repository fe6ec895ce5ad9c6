"""The import layers of docs/ARCHITECTURE.md, enforced: no import cycle, no import against the layer order,
no command module importing another, Lightning only where ARCHITECTURE.md says. Read from the source with
``ast`` (function-level imports included: a lazy import is still a dependency), so nothing is imported."""

import ast
from pathlib import Path

import pytest

from conftest import PROJECT_DIR

PACKAGE = "fast_lightning"

# bottom -> top; a module may import its own layer or a lower one. A module belongs to the LONGEST prefix listed.
LAYERS = [
    ("foundation", ["fast_lightning", "fast_lightning.errors", "fast_lightning.compat", "fast_lightning.schema",
                    "fast_lightning.seeding", "fast_lightning.tables", "fast_lightning.progress",
                    "fast_lightning.hardware", "fast_lightning.speedups", "fast_lightning.locks",
                    "fast_lightning.ema"]),
    ("config", ["fast_lightning.config", "fast_lightning.help"]),
    ("run folders", ["fast_lightning.runs"]),
    ("data", ["fast_lightning.data"]),
    ("evaluation", ["fast_lightning.evaluation"]),
    ("diffusion", ["fast_lightning.diffusion"]),
    ("sampling", ["fast_lightning.sampling"]),
    ("diffusion module", ["fast_lightning.diffusion.lightning_diffusion"]),
    ("synthesis", ["fast_lightning.synthesis"]),
    ("segmentation", ["fast_lightning.segmentation"]),
    ("run control", ["fast_lightning.resume", "fast_lightning.training"]),
    ("stages", ["fast_lightning.stages"]),
    ("study", ["fast_lightning.study"]),
    ("python api", ["fast_lightning.api"]),
    ("command helpers", ["fast_lightning.commands", "fast_lightning.commands.arguments",
                         "fast_lightning.commands.sweep_file", "fast_lightning.commands.bench_compute"]),
    ("commands", ["fast_lightning.commands."]),  # every other module of commands/: none imports another
    ("cli", ["fast_lightning.cli", "fast_lightning.__main__"]),
]
INDEPENDENT = {"commands"}  # layers whose modules may not import each other

# the LightningModules / DataModule / Trainer glue; everything else below stages/ stays pure torch
LIGHTNING_ALLOWED = {"fast_lightning.data.datamodule", "fast_lightning.diffusion.lightning_diffusion",
                     "fast_lightning.synthesis.predictor", "fast_lightning.segmentation.lightning_segmenter",
                     "fast_lightning.segmentation.callbacks", "fast_lightning.training", "fast_lightning.cli",
                     "fast_lightning.config"}  # config: reads lightning.Trainer's signature (lazily) to check trainer.extra


def module_files(root: Path) -> dict[str, Path]:
    mods = {}
    for path in (root / PACKAGE).rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def import_graph(root: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> project modules it imports, module -> external top-level packages it imports)."""
    mods = module_files(root)

    def owner(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    edges, external = {m: set() for m in mods}, {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" for a in node.names] if base.startswith(PACKAGE) else [base]
            for name in targets:
                if name == PACKAGE or name.startswith(PACKAGE + "."):
                    target = owner(name)
                    if target and target != mod:
                        edges[mod].add(target)
                elif name:
                    external[mod].add(name.split(".")[0])
    return edges, external


def layer_of(mod: str) -> int:
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            hit = mod == p or (p.endswith(".") and mod.startswith(p)) or mod.startswith(p + ".")
            if hit and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, targets in sorted(edges.items()):
        here = layer_of(mod)
        for target in sorted(targets):
            there = layer_of(target)
            if there > here:
                bad.append(f"{mod} ({LAYERS[here][0]}) imports {target} ({LAYERS[there][0]}): upward")
            elif there == here and LAYERS[here][0] in INDEPENDENT:
                bad.append(f"{mod} imports {target}: modules of layer {LAYERS[here][0]!r} must not import each other")
    return bad


@pytest.fixture(scope="module")
def graph():
    return import_graph(PROJECT_DIR)


def test_every_module_has_a_layer(graph):
    edges, _ = graph
    assert [m for m in edges if layer_of(m) is None] == []


def test_no_import_cycle(graph):
    assert cycles(graph[0]) == []


def test_imports_point_down_the_declared_layers(graph):
    assert layer_violations(graph[0]) == []


def test_lightning_only_in_the_lightning_glue(graph):
    _, external = graph
    bad = sorted(m for m, pkgs in external.items() if pkgs & {"lightning", "pytorch_lightning"}
                 and m not in LIGHTNING_ALLOWED and layer_of(m) < layer_of("fast_lightning.stages"))
    assert bad == []


def test_the_check_catches_a_cycle_an_upward_import_and_a_command_importing_a_command(tmp_path):
    """The checks above can fail: a fake package with each kind of mistake is reported."""
    pkg = tmp_path / PACKAGE
    for rel, text in {
        "__init__.py": "",
        "errors.py": "",
        "runs.py": "from fast_lightning.data.io import save_png\n",  # run folders -> data: upward + cycle
        "data/__init__.py": "",
        "data/io.py": "from fast_lightning.runs import atomic_write_bytes\n",
        "commands/__init__.py": "",
        "commands/eval_seg.py": "def f():\n    from fast_lightning.commands import train_seg\n",
        "commands/train_seg.py": "from ..errors import UserError\n",
    }.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    edges, _ = import_graph(tmp_path)
    assert edges["fast_lightning.commands.train_seg"] == {"fast_lightning.errors"}  # relative import resolved
    assert cycles(edges) == [["fast_lightning.data.io", "fast_lightning.runs"]]
    bad = layer_violations(edges)
    assert any("fast_lightning.runs (run folders) imports fast_lightning.data.io (data): upward" in b for b in bad)
    assert any(b.startswith("fast_lightning.commands.eval_seg imports fast_lightning.commands.train_seg") for b in bad)


def test_user_errors_are_imported_from_errors_only():
    """UserError / ConfigError / DataError come from fast_lightning.errors, never through a re-export."""
    bad = []
    for root in (PROJECT_DIR / PACKAGE, PROJECT_DIR / "tests"):
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.ImportFrom) and node.module != "fast_lightning.errors"
                        and {a.name for a in node.names} & {"UserError", "ConfigError", "DataError"}):
                    bad.append(f"{path.relative_to(PROJECT_DIR)}:{node.lineno} from {node.module}")
    assert bad == []
