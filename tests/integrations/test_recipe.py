"""``sft-callbacks sft --config recipe.yaml``: a `trl sft` recipe with a two-dataset mixture and our callbacks,
trained on the CPU in-process and under ``accelerate launch --num_processes 2``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from sft_callbacks import GroupBalanceCallback
from sft_callbacks.cli import main as cli_main
from sft_callbacks.sft import RecipeError, build_callbacks, load_mixture, run_recipe

from ..support.helpers import safetensors_keys
from ..support.recipes import REPO, free_port, launch_env, write_recipe

def test_recipe_trains_with_the_mixture_as_groups_and_curates(workspace, tmp_path):
    recipe = write_recipe(workspace, tmp_path, curate={"output_dir": str(tmp_path / "curated"), "license": "mit"})
    trainer = run_recipe(["--config", str(recipe)])
    assert trainer.state.global_step == 4
    balance = next(c for c in trainer.callback_handler.callbacks if isinstance(c, GroupBalanceCallback))
    # The two datasets are the groups: 24 food rows and 8 logic rows; balance (beta 0.5) lifts logic's share.
    assert balance.group_names == ["food", "logic"]
    np.testing.assert_allclose(balance.natural, [0.75, 0.25])
    assert balance.shares[1] > 0.25
    assert (tmp_path / "run" / "model.safetensors").is_file()  # saved as trl sft saves
    exported = datasets.load_dataset("parquet", data_files=str(tmp_path / "curated" / "data" / "*.parquet"))["train"]
    assert len(exported) == 32 and set(exported["dataset"]) == {"food", "logic"}
    assert "provenance" in (tmp_path / "curated" / "README.md").read_text().lower()


def test_command_line_flags_win_over_the_recipe(workspace, tmp_path):
    recipe = write_recipe(workspace, tmp_path)
    trainer = run_recipe(["--config", str(recipe), "--max_steps", "2"])
    assert trainer.state.global_step == 2


def test_load_mixture_is_trls_mixture_plus_the_column(workspace):
    from trl import DatasetMixtureConfig, get_dataset

    for fractions in ((None, None), (0.5, 0.5)):
        mix = DatasetMixtureConfig(datasets=[
            {"path": "json", "data_files": str(workspace / "food.jsonl"), "fraction": fractions[0]},
            {"path": "json", "data_files": str(workspace / "logic.jsonl"), "fraction": fractions[1]},
        ])
        ours = load_mixture(mix, "source")["train"]
        theirs = get_dataset(mix)["train"]
        assert ours.remove_columns("source").to_list() == theirs.to_list()
        n_food = 24 if fractions[0] is None else 8  # equal fractions: capped by logic's 8 rows
        assert ours["source"] == ["food"] * n_food + ["logic"] * 8


def test_bad_callbacks_are_refused_before_anything_loads():
    with pytest.raises(RecipeError, match="unknown callback 'GroupBalance'.*GroupBalanceCallback"):
        build_callbacks(["GroupBalance"])
    with pytest.raises(RecipeError, match=r"GroupBalanceCallback: unknown argument\(s\) \['group'\].*group_column"):
        build_callbacks([{"GroupBalanceCallback": {"group": "dataset"}}])
    with pytest.raises(RecipeError, match="HardExampleMiningCallback"):
        build_callbacks({"HardExampleMiningCallback": {"selection_pressure": -1}})
    with pytest.raises(RecipeError, match="not a transformers.TrainerCallback"):
        build_callbacks(["sft_callbacks.sft:RecipeError"])
    probe = build_callbacks([{"tests.support.recipe_probe:StreamProbe": {"out": "x"}}])  # your own, by import path
    assert [type(c).__name__ for c in probe] == ["StreamProbe"] and probe[0].out == "x"


def test_bad_recipes_exit_2_with_the_reason(workspace, tmp_path, capsys):
    recipe = write_recipe(workspace, tmp_path, callbacks=["NoSuchCallback"])
    assert cli_main(["sft", "--config", str(recipe)]) == 2
    assert "unknown callback 'NoSuchCallback'" in capsys.readouterr().err
    recipe = write_recipe(workspace, tmp_path, no_such_trl_key=1)
    assert cli_main(["sft", "--config", str(recipe)]) == 2
    assert "unknown key(s) ['no_such_trl_key']" in capsys.readouterr().err
    recipe = write_recipe(workspace, tmp_path)
    assert cli_main(["sft", "--config", str(recipe), "--max_stepz", "3"]) == 2  # a typo on the command line too
    assert "max_stepz" in capsys.readouterr().err
    recipe = write_recipe(workspace, tmp_path, callbacks=["HardExampleMiningCallback"], curate={"output_dir": "x"})
    assert cli_main(["sft", "--config", str(recipe)]) == 2
    assert "add it to callbacks" in capsys.readouterr().err
    recipe = write_recipe(workspace, tmp_path, curate={"output_dir": "x", "qutoas": 3})
    assert cli_main(["sft", "--config", str(recipe)]) == 2
    assert "unknown option(s) ['qutoas']" in capsys.readouterr().err


def test_yaml_numbers_reach_the_callbacks_as_the_types_they_declare(workspace, tmp_path, capsys):
    import yaml

    # PyYAML reads 5e-2 and 1e3 as strings (YAML 1.1); the options' declared types decide.
    spec = yaml.safe_load("- DataMapCallback: {noise_rate: 5e-2, min_epochs: 2}\n"
                          "- GroupBalanceCallback: {group_column: dataset, strategy: target, "
                          "target_shares: {food: 5e-1, logic: 5e-1}}\n"
                          "- HardExampleMiningCallback: {warmup: 1e1}")
    assert spec[0]["DataMapCallback"]["noise_rate"] == "5e-2"
    data_map, balance, hard = build_callbacks(spec)
    assert data_map.config.noise_rate == 0.05 and data_map.config.min_epochs == 2
    assert dict(balance.config.target_shares) == {"food": 0.5, "logic": 0.5}
    assert hard.config.warmup == 10 and isinstance(hard.config.warmup, int)  # steps, not a fraction
    with pytest.raises(RecipeError, match=r"callbacks\[0\] DataMapCallback: argument 'noise_rate' must be a number "
                                          r"or null, got 'five' \(a string\)"):
        build_callbacks([{"DataMapCallback": {"noise_rate": "five"}}])
    with pytest.raises(RecipeError, match=r"argument 'min_epochs' must be an integer, got \[2\] \(a list\)"):
        build_callbacks([{"DataMapCallback": {"min_epochs": [2]}}])
    recipe = write_recipe(workspace, tmp_path, callbacks=[{"DataMapCallback": {"noise_rate": "5%"}}])
    assert cli_main(["sft", "--config", str(recipe)]) == 2
    assert "argument 'noise_rate' must be a number or null" in capsys.readouterr().err


def test_data_errors_are_found_before_anything_is_launched(workspace, tmp_path, capsys):
    def refused(**extra):
        recipe = write_recipe(workspace, tmp_path, num_processes=2, **extra)  # would launch two processes
        assert cli_main(["sft", "--config", str(recipe)]) == 2
        err = capsys.readouterr().err
        assert err.count("sft-callbacks sft:") == 1 and "Traceback" not in err  # one message, not one per process
        assert not (tmp_path / "run").exists()  # nothing was launched
        return err

    err = refused(callbacks=["TrainingDynamicsCallback", {"GroupBalanceCallback": {"group_column": "domain"}}])
    assert "no column for GroupBalanceCallback: domain" in err and "'dataset'" in err
    err = refused(datasets=[{"path": "json", "data_files": str(workspace / "food.jsonl")},
                            {"path": "json", "data_files": str(workspace / "nope.jsonl")}])
    assert f"data file(s) not found: datasets[1]: {workspace / 'nope.jsonl'}" in err
    clash = tmp_path / "clash.jsonl"
    clash.write_text('{"prompt": "a", "completion": "b", "dataset": "x"}\n' * 8)
    err = refused(datasets=[{"path": "json", "data_files": str(workspace / "food.jsonl")},
                            {"path": "json", "data_files": str(clash)}])
    assert "already has a column 'dataset': set mixture_column to another name" in err


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="needs torch.distributed with the gloo backend")
@pytest.mark.timeout(300)
def test_two_processes_follow_one_index_stream(workspace, tmp_path):
    probe = tmp_path / "probe"
    recipe = write_recipe(workspace, tmp_path, callbacks=[
        "TrainingDynamicsCallback", {"GroupBalanceCallback": {"group_column": "dataset"}},
        {"HardExampleMiningCallback": {}}, {"tests.support.recipe_probe:StreamProbe": {"out": str(probe)}}])
    launcher = Path(sys.executable).with_name("accelerate")
    cmd = [str(launcher)] if launcher.exists() else [sys.executable, "-m", "accelerate.commands.launch"]
    # --multi_gpu is accelerate's torchrun launcher; on a machine without GPUs it runs gloo CPU processes
    cmd += ["launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m", "sft_callbacks.sft",
            "--config", str(recipe)]
    if not launcher.exists():
        cmd.remove("launch")
    env = launch_env()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    r0, r1 = (json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["draws"] == r1["draws"] and len(r0["draws"]) == 4  # one stream, sharded by accelerate
    assert all(len(d) == 4 * 2 for d in r0["draws"].values())
    assert r0["groups"] == r1["groups"] == ["food", "logic"]


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="needs torch.distributed with the gloo backend")
@pytest.mark.timeout(300)
def test_accelerate_keys_in_the_recipe_launch_processes_as_trl_sft_does(workspace, tmp_path):
    probe = tmp_path / "probe"
    recipe = write_recipe(workspace, tmp_path, num_processes=2, multi_gpu=True, main_process_port=free_port(),
                     callbacks=["TrainingDynamicsCallback", {"tests.support.recipe_probe:StreamProbe": {"out": str(probe)}}])
    env = launch_env()
    cmd = [sys.executable, "-c", "import sys; from sft_callbacks.cli import main; sys.exit(main())", "sft",
           "--config", str(recipe), "--max_steps", "3"]  # a TRL flag on the command line wins over the file
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    r0, r1 = (json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["draws"] == r1["draws"] and sorted(r0["draws"]) == ["0", "1", "2"]


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="needs torch.distributed with the gloo backend")
@pytest.mark.timeout(300)
def test_domain_adaptation_head_stays_in_sync_across_two_processes(workspace, tmp_path):
    """The adversarial head is a submodule of the DDP-wrapped model: both processes train the same head, and the
    recipe names the callback like any other."""
    probe = tmp_path / "probe"
    recipe = write_recipe(workspace, tmp_path, callbacks=[
        "TrainingDynamicsCallback",
        {"DomainAdaptationCallback": {"group_column": "dataset", "target_group": "logic", "warmup": 0}},
        {"tests.support.recipe_probe:StreamProbe": {"out": str(probe)}}])
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "sft_callbacks.sft", "--config", str(recipe)]
    proc = subprocess.run(cmd, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    r0, r1 = (json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2 and r0["head_sum"] is not None
    np.testing.assert_allclose(r0["head_sum"], r1["head_sum"], rtol=1e-6)  # DDP averaged the head's gradients
    assert r0["times_seen"] == r1["times_seen"]
    assert not any("sft_domain_head" in k for k in safetensors_keys(tmp_path / "run"))

