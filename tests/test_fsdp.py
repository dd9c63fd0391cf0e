"""FSDP2 through accelerate and the Trainer on two CPU processes (gloo): the parameters really are sharded
(DTensors), the capture reads the fully-sharded model's forward, both processes hold the same merged statistics
and draw one index stream, and a frozen model's captured losses equal those of the same rows without FSDP.

accelerate keeps FSDP for accelerator devices only; tests/fsdp_on_cpu.py lifts that one restriction (see there)."""

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

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with the gloo backend",
)

# SHARDED_STATE_DICT: the final save_model with FULL_STATE_DICT fails on CPU processes inside safetensors
# ("invalid python storage" on the gathered CPU tensors), which is about saving, not about the callbacks.
FSDP = {"fsdp": "full_shard", "fsdp_config": {"fsdp_version": 2, "state_dict_type": "SHARDED_STATE_DICT",
                                              "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}}


@pytest.mark.timeout(300)
def test_fsdp2_capture_matches_the_plain_run(workspace, tmp_path):  # noqa: F811
    plain = run_recipe(["--config", str(_recipe(workspace, tmp_path / "plain", learning_rate=0.0))])
    cb = next(c for c in plain.callback_handler.callbacks if isinstance(c, TrainingDynamicsCallback))
    plain_losses = cb.dynamics()["loss_last"].to_numpy()

    probe = tmp_path / "probe"
    callbacks = ["TrainingDynamicsCallback", {"GroupBalanceCallback": {"group_column": "dataset"}},
                 {"tests.recipe_probe:StreamProbe": {"out": str(probe)}}]
    recipe = _recipe(workspace, tmp_path / "fsdp", learning_rate=0.0, callbacks=callbacks, **FSDP)
    # --multi_gpu is accelerate's torchrun launcher; on a machine without GPUs it runs gloo CPU processes
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "tests.fsdp_on_cpu", "--config", str(recipe)]
    proc = subprocess.run(cmd, cwd=REPO, env=_launch_env(), capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    r0, r1 = (json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["sharded"] and r1["sharded"]  # fully_shard ran: the parameters are DTensors
    assert r0["draws"] == r1["draws"] and r0["groups"] == ["food", "logic"]
    np.testing.assert_array_equal(r0["times_seen"], r1["times_seen"])
    assert sum(r0["times_seen"]) == 4 * 4 * 2 and r0["unmatched"] == r1["unmatched"] == 0
    captured = np.asarray(r0["loss_last"], dtype=float)
    np.testing.assert_allclose(captured, np.asarray(r1["loss_last"], dtype=float), equal_nan=True)
    both = np.isfinite(captured) & np.isfinite(plain_losses)
    assert both.sum() >= 8
    np.testing.assert_allclose(captured[both], plain_losses[both], atol=2e-3)
