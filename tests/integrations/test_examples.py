"""Every example under scripts/examples runs (tiny model, CPU, offline)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "scripts" / "examples"


def _run(cmd, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=280)


@pytest.mark.timeout(300)
def test_sft_trainer_example(tmp_path):
    r = _run([sys.executable, str(EXAMPLES / "sft_trainer.py"), "--tiny", "--max-steps", "6",
              "--output-dir", str(tmp_path / "out")], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mixture drawn:" in r.stdout and "loss_last" in r.stdout


@pytest.mark.timeout(300)
def test_lora_example(tmp_path):
    r = _run([sys.executable, str(EXAMPLES / "lora.py"), "--tiny", "--max-steps", "12",
              "--output-dir", str(tmp_path / "out")], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "validation-guided mixture:" in r.stdout


@pytest.mark.timeout(300)
def test_recipe_example(tmp_path, tokenizer, make_model):
    """The committed recipe, unchanged, with the model and output folders overridden on the command line."""
    model_dir = tmp_path / "model"
    make_model().save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    recipe = yaml.safe_load((EXAMPLES / "recipe.yaml").read_text())
    assert {d["data_files"] for d in recipe["datasets"]} == {"scripts/examples/data/food.jsonl",
                                                            "scripts/examples/data/logic.jsonl"}
    r = _run([sys.executable, "-m", "sft_callbacks.cli", "sft", "--config", str(EXAMPLES / "recipe.yaml"),
              "--model_name_or_path", str(model_dir), "--max_steps", "4", "--output_dir", str(tmp_path / "run"),
              "--use_cpu", "true", "--curate-to", str(tmp_path / "curated")], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "curated" / "README.md").is_file() and (tmp_path / "run" / "model.safetensors").is_file()
