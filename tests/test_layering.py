"""The import graph of ablate/, components/, analysis/ and hydra_plugins/: no circle, and every import
goes down the layers (README, Architecture; STYLE.md, "Data flows one way").

Read from the source with `ast`, so every import counts: at the top, inside a function, under
`if TYPE_CHECKING:`. A module importing `pkg.mod.name` depends on `pkg.mod` when that is a module.

The layers, lowest first (a module may import its own layer and those below it):

    components   the model's parts, one module per axis: nothing of the rest
    base         errors, atomic files, the summary record, locks, signals, the machine (ablate/*)
    options      ablate's own axes: data, tokenizer, optim, schedule, logger
    config       the schema assembled from every axis, its checks, the command line's refusals, the ladder
    model        the Transformer assembled from components, its accounting, its stacked ensemble
    training     the loop, its state and checkpoints, the run directory's plan
    job          one Hydra job, the entry point, `ablate.load_run`
    tools        the benchmark (ablate.bench), Hugging Face conversion (ablate.hf, ablate.export_hf)
    launchers    hydra_plugins/: the batched launcher (drives ablate.cli.job), the tuning sweeper
    analysis     analysis/: reads only the files runs wrote

and two narrower rules: the model imports nothing of the data pipeline, the config or the training
side's axes (only components and base); analysis imports from ablate only the base layer's record
formats (atomic files, the summary's fields) and from hydra_plugins only the tuning sweeper's plan,
except analysis/speed.py, `--speed`, which times each configuration with the benchmark by design.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ablate", "components", "analysis", "hydra_plugins")

LAYERS = ("components", "base", "options", "config", "model", "training", "job", "tools", "launchers", "analysis")
# Module (or package prefix) -> its layer; the most specific prefix wins. A module not named here fails the test.
ROLE = {
    "components": "components",
    # ablate/ by role package; where a package holds modules of two layers, the more specific name wins
    "ablate.errors": "base", "ablate.machine": "base", "ablate.data.cache": "base",
    "ablate.rundir.files": "base", "ablate.rundir.summary": "base", "ablate.rundir.lock": "base",
    "ablate.config.plugins": "base", "ablate.config.values": "base",
    "ablate.data": "options",
    "ablate.training.optimizers": "options", "ablate.training.schedules": "options", "ablate.training.loggers": "options",
    "ablate.config": "config", "ablate.cli.argv": "config",
    "ablate.model": "model", "ablate.accounting": "model", "ablate.ensemble.stacked": "model",
    "ablate.training": "training", "ablate.rundir": "training", "ablate.ensemble": "training",
    "ablate.cli": "job", "ablate.run": "job",
    "ablate.bench": "tools", "ablate.hf": "tools", "ablate.export_hf": "tools", "ablate.ladder": "tools",
    "hydra_plugins": "launchers",
    "analysis": "analysis",
}
MODEL_MAY_IMPORT = ("components", "base")
ANALYSIS_MAY_IMPORT = ("ablate.rundir.files", "ablate.rundir.summary", "hydra_plugins.ablate_tuning_sweeper.tuning_sweeper",
                       "ablate.config.values",  # how an option's value compares: the sweeper and the report agree
                       "ablate.bench.multirun")  # runs a sweep as a process: the benchmarks that read sweeps
ANALYSIS_MEASURES_SPEED = "analysis.speed"  # imports torch and the benchmark: only for `analysis.report --speed`


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def find_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    return {module_name(path, root): path for package in packages for path in sorted((root / package).rglob("*.py"))}


def imported_names(name: str, path: Path) -> list[str]:
    """Every dotted name `name`'s source imports (relative imports resolved), wherever the import stands."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else node.module
            found += [f"{base}.{alias.name}" for alias in node.names]
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of `modules` it imports (the longest dotted prefix that is one of them)."""
    graph = {}
    for name, path in modules.items():
        targets = set()
        for dotted in imported_names(name, path):
            parts = dotted.split(".")
            prefixes = (".".join(parts[:i]) for i in range(len(parts), 0, -1))
            target = next((prefix for prefix in prefixes if prefix in modules), None)
            if target is not None and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as its modules in order (the first repeated at the end), or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once all its imports are explored
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


PACKAGE_INITS = {"ablate": "job"}  # `ablate.load_run`; not a prefix: every module of ablate/ is placed by name


def layer_of(module: str) -> str:
    if module in PACKAGE_INITS:
        return PACKAGE_INITS[module]
    parts = module.split(".")
    owner = next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in ROLE), None)
    assert owner is not None, f"{module} has no layer: add it to ROLE in tests/test_layering.py"
    return ROLE[owner]


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(find_modules(ROOT, PACKAGES))


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """Imports inside functions and under TYPE_CHECKING, relative ones, and names of a module all count."""
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("from . import c\n")
    (tmp_path / "pkg" / "a.py").write_text("def f():\n    from pkg.b import NAME\n")
    (tmp_path / "pkg" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub.c import X\n")
    (tmp_path / "pkg" / "sub" / "c.py").write_text("import pkg.a\nfrom ..b import NAME\n")
    graph = import_graph(find_modules(tmp_path, ("pkg",)))
    assert graph == {"pkg": set(), "pkg.sub": {"pkg.sub.c"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.sub.c"},
                     "pkg.sub.c": {"pkg.a", "pkg.b"}}


def test_the_cycle_finder_finds_a_planted_circle():
    assert find_cycle({"x.one": {"x.two"}, "x.two": {"x.one"}, "x.three": {"x.one"}}) == ["x.one", "x.two", "x.one"]
    assert find_cycle({"x.one": {"x.two"}, "x.two": set(), "x.three": {"x.one", "x.two"}}) is None


def test_no_import_circle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_every_module_has_a_layer(graph):
    unplaced = [module for module in graph if module not in PACKAGE_INITS and not within(module, tuple(ROLE))]
    assert not unplaced, f"modules without a layer (ROLE in tests/test_layering.py): {unplaced}"


def test_imports_go_down_the_layers(graph):
    upward = [f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})"
              for module, targets in sorted(graph.items()) for target in sorted(targets)
              if LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(module))]
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_the_model_imports_neither_data_nor_config_nor_loggers(graph):
    reached, todo = set(), ["ablate.model"]
    while todo:  # everything importing ablate.model loads, transitively
        for target in graph[todo.pop()] - reached:
            reached.add(target)
            todo.append(target)
    foreign = sorted(m for m in reached if layer_of(m) not in MODEL_MAY_IMPORT)
    assert not foreign, f"ablate.model loads {foreign}"


def test_analysis_reads_files_not_training_code(graph):
    foreign = [f"{module} imports {target}" for module, targets in sorted(graph.items())
               if within(module, ("analysis",)) and module != ANALYSIS_MEASURES_SPEED
               for target in sorted(targets) if not within(target, ("analysis", *ANALYSIS_MAY_IMPORT))]
    assert not foreign, "analysis imports training code:\n" + "\n".join(foreign)
