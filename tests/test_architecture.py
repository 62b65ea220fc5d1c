"""The import graph, read with `ast`: arrows point down the layers, no stage imports another, no cycles.

    cli ──► experiment ──► pipeline ──► stages: corpus · tokenizer · pretrain · evaluate · report
                                            │ (no stage imports another stage)
                                            ▼
                 base: config · errors · io · layout · tasks · optim · distributed · vocabulary ·
                       progress · demo

Every import counts, also one inside a function. The pipeline reaches the stages through the stage
table (`importlib`), never by an import statement.
"""

import ast
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "domainlm"
BASE = {"__init__", "config", "errors", "io", "layout", "tasks", "optim", "distributed", "vocabulary", "progress",
        "demo"}
STAGES = {"corpus", "tokenizer", "pretrain", "evaluate", "report"}
# Layer of each top-level part of the package; an import may only point to a lower layer (or stay
# inside its own part, e.g. corpus.readers -> corpus.dedup). Base modules may import each other.
LAYERS = {**dict.fromkeys(BASE, 0), **dict.fromkeys(STAGES, 1), "pipeline": 2, "experiment": 3, "cli": 4,
          "__main__": 5}


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SOURCE.rglob("*.py"))}


def imports(path: Path, known: set[str], module_level_only: bool = False) -> set[str]:
    """The names this file imports: domainlm modules (resolved to a known module) and third-party
    top-level packages."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from domainlm import demo` imports the module domainlm.demo
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                      for a in node.names}
    resolved = set()
    for name in found:
        if name.split(".")[0] != "domainlm":
            resolved.add(name.split(".")[0])
            continue
        while name not in known:  # `domainlm.config.X` where X is a class
            name = name.rpartition(".")[0]
        resolved.add(name)
    return resolved


def part(module: str) -> str:
    """The top-level part of the package a module belongs to (`domainlm.corpus.readers` -> corpus)."""
    return module.split(".")[1] if "." in module else "__init__"


def graph(module_level_only: bool = False) -> dict[str, set[str]]:
    known = set(modules())
    return {name: {m for m in imports(path, known, module_level_only) if m.startswith("domainlm")} - {name}
            for name, path in modules().items()}


def test_every_module_has_a_layer():
    assert {part(m) for m in modules()} <= set(LAYERS), {part(m) for m in modules()} - set(LAYERS)


def test_imports_point_down_and_never_across_stages():
    wrong = []
    for source, targets in graph().items():
        for target in targets:
            a, b = part(source), part(target)
            if a == b or (LAYERS[a] == 0 and LAYERS[b] == 0):
                continue
            if LAYERS[b] >= LAYERS[a]:
                wrong.append(f"{source} -> {target}")
    assert not wrong, "imports that point up or across: " + ", ".join(sorted(wrong))


def test_no_import_cycles():
    edges = graph(module_level_only=True)
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return path + [node, target]
            if target not in state and (cycle := visit(target, path + [node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state:
            cycle = visit(start, [])
            assert cycle is None, " -> ".join(cycle)


def test_the_report_imports_no_torch():
    report = {m for m in modules() if part(m) == "report"}
    heavy = {"torch", "transformers", "domainlm.evaluate", "domainlm.pretrain"}
    known = set(modules())
    for name in report:
        assert not imports(modules()[name], known) & heavy, name
    loaded = subprocess.run([sys.executable, "-c", "import sys, domainlm.report; print('torch' in sys.modules)"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "False"
