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
BASE = {"__init__", "config", "errors", "io", "layout", "tasks", "optim", "distributed", "executors", "vocabulary", "progress",
        "demo"}
STAGES = {"corpus", "tokenizer", "pretrain", "evaluate", "report"}
# Layer of each top-level part of the package; an import may only point to a lower layer (or stay
# inside its own part, e.g. corpus.readers -> corpus.dedup). Base modules may import each other.
LAYERS = {**dict.fromkeys(BASE, 0), **dict.fromkeys(STAGES, 1), "pipeline": 2, "experiment": 3, "forecast": 3, "cli": 4,
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
    assert not loads_torch("domainlm.report")


def loads_torch(module: str) -> bool:
    """Whether importing `module` in a fresh interpreter imports torch."""
    code = f"import sys, {module}; print('torch' in sys.modules)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "True"


def test_the_cli_imports_no_torch_until_a_command_needs_it():
    # Every worker the corpus stage spawns re-imports the `domainlm` script, so the CLI: torch at
    # import cost each ~1.3 s on 2 cores (the demo's corpus stage took 10 s instead of 6).
    assert not loads_torch("domainlm.cli")


# ------------------------------------------------------------------------ the encoder protocol
def protocol_problems(model) -> list[str]:
    """What a trained module gets wrong about `encoder.Encoder` (empty: nothing): a member left to
    the base class, layers that are not its modules, parameter groups that do not partition its
    parameters, FLOP counts that do not grow with the row or shrink with density."""
    from domainlm.pretrain.encoder import GROUPS, PROTOCOL, Encoder

    missing = [m for m in PROTOCOL if getattr(type(model), m, None) is getattr(Encoder, m)]
    if not isinstance(model, Encoder) or missing:
        return [f"{type(model).__name__} does not implement {', '.join(missing) or 'Encoder'}"]
    problems = []
    modules = {id(m) for m in model.modules()}
    if not model.layers() or any(id(layer) not in modules for layer in model.layers()):
        problems.append("layers() are not the model's own modules")
    groups = model.parameter_groups()
    listed = sorted(name for names in groups.values() for name in names)
    if set(groups) != set(GROUPS) or listed != sorted(name for name, _ in model.named_parameters()):
        problems.append(f"parameter_groups() do not partition the parameters into {GROUPS}")
    if not (groups.get("embedding") and groups.get("encoder")):
        problems.append("parameter_groups() have no embedding or no encoder parameters")
    dense = model.flops_per_position(64)
    if not (model.flops_per_position(128) > dense > model.flops_per_position(64, density=0.5) > 0):
        problems.append("flops_per_position() does not grow with the row and shrink with density")
    if model.flops_per_masked() < 0:
        problems.append("flops_per_masked() is negative")
    return problems


def tiny_layouts():
    from domainlm.pretrain.architectures import ARCHITECTURES

    sizes = {"hidden_size": 16, "num_layers": 2, "num_heads": 2, "intermediate_size": 32, "max_position": 32}
    return {name: row.config(vocab_size=40, **sizes) for name, row in ARCHITECTURES.items()}


def test_every_layout_and_objective_implements_the_encoder_protocol():
    import torch

    from domainlm.config import PretrainConfig
    from domainlm.pretrain.objectives import OBJECTIVES

    for name, layout in tiny_layouts().items():
        for objective, row in OBJECTIVES.items():
            if objective == "electra" and name != "bert":
                continue  # ELECTRA trains the bert layout (the recipe refuses the other)
            torch.manual_seed(0)
            model = row.build(layout, PretrainConfig(objective="electra" if objective == "electra" else "mlm"))
            assert not protocol_problems(model), (name, objective, protocol_problems(model))


def test_a_module_that_misses_a_protocol_member_is_caught():
    import torch

    from domainlm.pretrain.encoder import Encoder

    class NoLayers(Encoder):  # a new layout that forgot `layers`
        def __init__(self):
            super().__init__()
            self.tok_embed, self.block = torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4)

        def parameter_groups(self):
            return {"embedding": ["tok_embed.weight"], "encoder": ["block.weight", "block.bias"], "head": []}

        def flops_per_position(self, seq_len, density=1.0):
            return 2 * density * 16 + seq_len

        def flops_per_masked(self):
            return 0

    assert protocol_problems(NoLayers()) == ["NoLayers does not implement layers"]
    wrong_groups = type("WrongGroups", (NoLayers,), {"layers": lambda self: [self.block],
                                                      "parameter_groups": lambda self: {"encoder": ["block.weight"]}})
    assert any("partition" in p for p in protocol_problems(wrong_groups()))


def test_every_objective_row_computes_its_declared_losses_and_exports_what_it_trained(tmp_path):
    import torch

    from domainlm.config import PretrainConfig
    from domainlm.pretrain import export_model
    from domainlm.pretrain.architectures import new_model
    from domainlm.pretrain.attention import segment_attention_mask
    from domainlm.pretrain.encoder import masked_targets
    from domainlm.pretrain.objectives import COUNTS, OBJECTIVES

    layout = tiny_layouts()["bert"]
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 40, (2, 12), generator=generator)
    labels = torch.where(torch.rand(2, 12, generator=generator) < 0.3, ids, -100)
    labels[0, 0] = ids[0, 0]  # at least one masked position
    real = torch.ones(2, 12, dtype=torch.bool)
    attn = segment_attention_mask(torch.zeros(2, 12, dtype=torch.long))
    for name, row in OBJECTIVES.items():
        config = PretrainConfig(objective="electra" if name == "electra" else "mlm", distill_logits=1.0,
                                distill_hidden=1.0)
        torch.manual_seed(0)
        model = row.build(layout, config)
        teacher = new_model(layout) if name == "distill" else None
        draws = row.draws(labels, torch.Generator().manual_seed(1))
        losses = row.loss_module(model, config, teacher)(ids, torch.arange(12).expand(2, 12), attn, real,
                                                         masked_targets(labels, None, draws))
        assert set(row.weights(config)) == set(losses) <= set(row.counts), name
        assert set(row.counts.values()) <= set(COUNTS) and all(torch.isfinite(v) for v in losses.values()), name
        assert export_model(model, tmp_path / "no-tokenizer", tmp_path / name, objective=name) <= 1e-4, name
