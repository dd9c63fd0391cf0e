"""The package's layering (docs/ARCHITECTURE.md), checked on the source: every import inside ``sft_callbacks``,
module-level or in a function, goes from a higher layer to the same or a lower one, and no modules import each
other in a circle."""

from __future__ import annotations

import ast
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from trl import SFTConfig, SFTTrainer

from sft_callbacks import TrainingDynamicsCallback
from sft_callbacks.engine.compat import checkpointing_off

from .support.helpers import sft_rows

PACKAGE = Path(__file__).resolve().parents[1] / "sft_callbacks"

#: rank of each layer: a module may import only from layers of lower or equal rank
LAYERS = {"engine": 0, "policies": 1, "curation": 2, "hub": 3, "app": 4}
TOP = 5  # the package root: __init__, the CLI, the recipe launcher, the demo and its model/data helpers


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], TOP) if len(parts) > 1 else TOP


def imports(path: Path) -> set[str]:
    """The ``sft_callbacks`` modules ``path`` imports (``from .x import y`` counts ``.x``, and ``.x.y`` when
    ``y`` is a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        for c in candidates:
            path_of = PACKAGE.parent / c.replace(".", "/")
            if c.split(".")[0] == "sft_callbacks" and (path_of.with_suffix(".py").exists()
                                                      or (path_of / "__init__.py").exists()):
                found.add(c)
    found.discard(name)
    return found


GRAPH = {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_the_graph_is_read():
    assert "sft_callbacks.engine.tracking" in GRAPH["sft_callbacks.engine.session"]
    assert "sft_callbacks.engine.callbacks" in GRAPH["sft_callbacks.policies.balance"]  # relative, two dots
    assert len(GRAPH) >= 40


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_go_down_the_layers(module):
    upward = sorted(m for m in GRAPH[module] if layer(m) > layer(module))
    assert not upward, f"{module} (layer {layer(module)}) imports a higher layer: {upward}"


def test_no_import_cycles():
    # An edge to one's own package (`from . import row_keys`) imports nothing new: Python is already running that
    # package's __init__. Every other edge counts, function-level imports included.
    graph = {m: sorted(n for n in deps if not m.startswith(n + ".")) for m, deps in GRAPH.items()}
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m], _ = "open", stack.append(m)
        for n in graph.get(m, ()):
            if state.get(n) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        state[m], _ = "done", stack.pop()

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_init_files_only_re_export():
    for path in PACKAGE.rglob("__init__.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            ok = isinstance(node, (ast.Import, ast.ImportFrom)) or (
                isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))  # the docstring
            ok = ok or (isinstance(node, ast.Assign) and [t.id for t in node.targets] in (["__all__"], ["__version__"]))
            ok = ok or path.parent == PACKAGE and (  # the root: the lazy recipe launcher
                isinstance(node, ast.FunctionDef) and node.name == "__getattr__")
            assert ok, f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node)[:80]}"


def _doc_blocks() -> list[str]:
    text = (PACKAGE.parent / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_the_worked_example_trains(tmp_path, tokenizer, make_model):
    """The policy file and its test in docs/ARCHITECTURE.md, run as written: the module as
    ``sft_callbacks.policies.prefer_high_loss`` (its relative imports resolve there), then its test, then one real
    training loop, where the sampler ends up drawing in proportion to what the policy last returned."""
    policy_src, test_src = _doc_blocks()[:2]
    name = "sft_callbacks.policies.prefer_high_loss"
    module = types.ModuleType(name)
    module.__package__ = "sft_callbacks.policies"
    sys.modules[name] = module
    try:
        exec(compile(policy_src, "docs/ARCHITECTURE.md:prefer_high_loss.py", "exec"), module.__dict__)
        test_ns: dict = {}
        exec(compile(test_src, "docs/ARCHITECTURE.md:test_prefer_high_loss.py", "exec"), test_ns)
        test_ns["test_weights_follow_the_loss_and_wait_for_the_first_losses"]()

        class Recorded(module.PreferHighLossCallback):
            last = None

            def compute_weights(self, ctx, reason):
                self.last = w = super().compute_weights(ctx, reason)
                return w

        policy = Recorded()
        args = SFTConfig(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, learning_rate=1e-3,
                         use_cpu=True, report_to=[], save_strategy="no", max_length=96, seed=0, disable_tqdm=True,
                         **checkpointing_off())
        SFTTrainer(model=make_model(), args=args, train_dataset=sft_rows(32), processing_class=tokenizer,
                   callbacks=[TrainingDynamicsCallback(sync_every=1), policy]).train()
    finally:
        del sys.modules[name]
    assert policy.last is not None and policy.last.std() > 0  # losses differ, so the weights do
    drawn = policy.session.sampler.current_weights  # a property
    np.testing.assert_allclose(drawn / drawn.sum(), policy.last / policy.last.sum(), rtol=1e-6)  # float32 weights
