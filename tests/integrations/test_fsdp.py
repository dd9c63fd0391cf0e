"""FSDP2 through accelerate and the Trainer on two CPU processes (gloo): the parameters really are sharded
(DTensors), the capture reads the fully-sharded model's forward, both processes hold the same merged statistics
and draw one index stream, and a frozen model's captured losses equal those of the same rows without FSDP.

accelerate keeps FSDP for accelerator devices only; tests/support/fsdp_on_cpu.py lifts that one restriction (see there)."""

from __future__ import annotations


import pytest
import torch

from sft_callbacks import TrainingDynamicsCallback
from sft_callbacks.sft import run_recipe

from ..support.recipes import agreeing_ranks, assert_losses_match, launch_two_processes, probed_callbacks, write_recipe

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with the gloo backend",
)

# SHARDED_STATE_DICT: the final save_model with FULL_STATE_DICT fails on CPU processes inside safetensors
# ("invalid python storage" on the gathered CPU tensors), which is about saving, not about the callbacks.
FSDP = {"fsdp": "full_shard", "fsdp_config": {"fsdp_version": 2, "state_dict_type": "SHARDED_STATE_DICT",
                                              "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}}


@pytest.mark.timeout(300)
def test_fsdp2_capture_matches_the_plain_run(workspace, tmp_path):
    plain = run_recipe(["--config", str(write_recipe(workspace, tmp_path / "plain", learning_rate=0.0))])
    cb = next(c for c in plain.callback_handler.callbacks if isinstance(c, TrainingDynamicsCallback))
    plain_losses = cb.dynamics()["loss_last"].to_numpy()

    probe = tmp_path / "probe"
    recipe = write_recipe(workspace, tmp_path / "fsdp", learning_rate=0.0, callbacks=probed_callbacks(probe), **FSDP)
    # --multi_gpu is accelerate's torchrun launcher; on a machine without GPUs it runs gloo CPU processes
    launch_two_processes(["--multi_gpu"], "tests.support.fsdp_on_cpu", recipe)
    r0, r1 = agreeing_ranks(probe)
    assert r0["sharded"] and r1["sharded"]  # fully_shard ran: the parameters are DTensors
    assert_losses_match(r0, plain_losses)
