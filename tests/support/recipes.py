"""Recipes for the recipe-launcher tests: a workspace (a tiny model saved like a Hub checkpoint, two json datasets),
a `trl sft` recipe over it, and the environment and port for launched processes."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import yaml

from sft_callbacks.demo_data import load_demo_dataset
from sft_callbacks.models import build_tiny_llama, texts_for_tokenizer, train_tokenizer

REPO = Path(__file__).resolve().parents[2]


def build_workspace(root: Path) -> Path:
    """A tiny model saved like a Hub checkpoint, and two json datasets (two demo domains, 24 and 8 rows)."""
    demo = load_demo_dataset("train")
    tok = train_tokenizer(texts_for_tokenizer(demo), vocab_size=512)
    model = build_tiny_llama(tok, hidden_size=64, num_layers=2, seed=0)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    domains = np.asarray(demo["domain"])
    for name, domain, n in (("food", "food", 24), ("logic", "logic", 8)):
        rows = demo.select(np.flatnonzero(domains == domain)[:n]).select_columns(["prompt", "completion"])
        rows.to_json(root / f"{name}.jsonl")
    return root


def write_recipe(root: Path, out: Path, **extra) -> Path:
    recipe = {
        "model_name_or_path": str(root / "model"),
        "datasets": [{"path": "json", "data_files": str(root / "food.jsonl")},
                     {"path": "json", "data_files": str(root / "logic.jsonl")}],
        "output_dir": str(out / "run"),
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
        "callbacks": ["TrainingDynamicsCallback", {"GroupBalanceCallback": {"group_column": "dataset"}}],
        **extra,
    }
    path = out / "recipe.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe))
    return path


def launch_env() -> dict:
    """The environment of launched training processes: one thread each, offline, the repository importable (for
    ``tests.support.recipe_probe``)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probed_callbacks(probe: Path) -> list:
    """The callbacks of a two-process test: the tracker, a group-aware policy, and the probe writing
    ``probe/rank<R>.json``."""
    return ["TrainingDynamicsCallback", {"GroupBalanceCallback": {"group_column": "dataset"}},
            {"tests.support.recipe_probe:StreamProbe": {"out": str(probe)}}]


def launch_two_processes(launcher_args: list[str], module: str, recipe: Path) -> None:
    """``accelerate launch`` two CPU processes of ``python -m module --config recipe``; fails the test on an error."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           *launcher_args, "-m", module, "--config", str(recipe)]
    proc = subprocess.run(cmd, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def agreeing_ranks(probe: Path, steps: int = 4, batch: int = 4) -> tuple[dict, dict]:
    """Both ranks' probe files, after checking they agree: one index stream, the two datasets as groups, the same
    merged statistics, every trained row matched."""
    import json

    r0, r1 = (json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["draws"] == r1["draws"] and r0["groups"] == ["food", "logic"]
    np.testing.assert_array_equal(r0["times_seen"], r1["times_seen"])
    assert sum(r0["times_seen"]) == steps * batch * 2 and r0["unmatched"] == r1["unmatched"] == 0
    np.testing.assert_allclose(np.asarray(r0["loss_last"], dtype=float), np.asarray(r1["loss_last"], dtype=float),
                               equal_nan=True)
    return r0, r1


def assert_losses_match(rank: dict, plain_losses: np.ndarray, atol: float = 2e-3) -> None:
    """A frozen model's captured losses equal the one-process run's on every row both saw."""
    captured = np.asarray(rank["loss_last"], dtype=float)
    both = np.isfinite(captured) & np.isfinite(plain_losses)
    assert both.sum() >= 8
    np.testing.assert_allclose(captured[both], plain_losses[both], atol=atol)
