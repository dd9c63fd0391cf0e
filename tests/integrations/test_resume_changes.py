"""What may change between a checkpoint and its resume: callbacks added or removed are handled and logged; the
training rows reordered are refused; duplicates of a class keep one saved state each."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from sft_callbacks import DataMapCallback, GroupBalanceCallback, HardExampleMiningCallback, TrainingDynamicsCallback
from sft_callbacks.engine.compat import checkpointing_off
from sft_callbacks.engine.sampling import decode_array
from sft_callbacks.engine.weights import combine_weights

from ..support.helpers import sft_rows


def _trainer(out, tokenizer, make_model, callbacks, train=None, max_steps=12):
    args = SFTConfig(output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4, learning_rate=1e-3,
                     report_to=[], use_cpu=True, save_strategy="steps", save_steps=4, logging_steps=4,
                     max_length=320, seed=0, disable_tqdm=True, **checkpointing_off())
    return SFTTrainer(model=make_model(), args=args, train_dataset=sft_rows(66) if train is None else train,
                      processing_class=tokenizer, callbacks=callbacks)


def _three():
    return [TrainingDynamicsCallback(sync_every=2), HardExampleMiningCallback(warmup=0, group_column="domain"),
            GroupBalanceCallback(group_column="domain", beta=0.5)]


def test_resume_on_reordered_rows_is_refused(tmp_path, tokenizer, make_model):
    _trainer(tmp_path / "a", tokenizer, make_model, _three(), max_steps=4).train()
    shuffled = sft_rows(66).shuffle(seed=5).flatten_indices()  # the same rows, another order
    resumed = _trainer(tmp_path / "a", tokenizer, make_model, _three(), train=shuffled, max_steps=8)
    with pytest.raises(ValueError, match="in a different order"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-4"))


def test_a_policy_removed_on_resume_stops_weighting_at_once(tmp_path, tokenizer, make_model, caplog):
    full = _three()
    _trainer(tmp_path / "a", tokenizer, make_model, full, max_steps=4).train()
    hard_weights = full[0].session.last_policy_weights["HardExampleMiningCallback"]
    assert not np.allclose(full[0].session.sampler.current_weights,
                           combine_weights([("HardExampleMiningCallback", hard_weights)], 66))  # balance was steering
    kept = _three()[:2]
    resumed = _trainer(tmp_path / "a", tokenizer, make_model, kept, max_steps=8)
    # The dataloader had drawn a little ahead when the checkpoint was saved; those draws are replayed as they were,
    # and every position after them is drawn with the weights of the policies present.
    saved = json.loads((tmp_path / "a" / "checkpoint-4" / "trainer_state.json").read_text())["stateful_callbacks"]
    sampler = saved["TrainingDynamicsCallback"]["attributes"]["_sft_restore"]["session"]["sampler"]
    first_new = sampler["resume_from"] + len(decode_array(sampler["tail"]))
    assert sampler["resume_from"] == 4 * 4 and first_new - sampler["resume_from"] <= 4 * 4  # within the look-ahead
    in_force = []  # read before the first step after the resume
    resumed.add_callback(_FirstStep(lambda: in_force.append(kept[0].session.sampler.weights_at(first_new))))
    with caplog.at_level(logging.WARNING):
        resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-4"))
    assert "resumed without GroupBalanceCallback" in caplog.text
    assert "GroupBalanceCallback" not in kept[0].session.last_policy_weights
    # The weights in force are the hard-example policy's alone: the removed policy's scheduled weights do not
    # steer a single further draw.
    np.testing.assert_allclose(in_force[0], combine_weights([("HardExampleMiningCallback", hard_weights)], 66),
                               rtol=1e-6)


class _FirstStep(TrainerCallback):
    def __init__(self, call):
        self.call, self.done = call, False

    def on_step_begin(self, args, state, control, **kwargs):
        if not self.done:
            self.done = True
            self.call()


def test_a_callback_added_on_resume_starts_fresh_and_is_checkpointed(tmp_path, tokenizer, make_model, caplog):
    _trainer(tmp_path / "a", tokenizer, make_model, _three()[:2], max_steps=4).train()
    added = [*_three()[:2], DataMapCallback()]
    with caplog.at_level(logging.WARNING):
        _trainer(tmp_path / "a", tokenizer, make_model, added, max_steps=8).train(
            resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-4"))
    assert "DataMapCallback has no saved state in the checkpoint" in caplog.text
    # The checkpoint after the resume was written, with the added callback's state in it.
    saved = json.loads((tmp_path / "a" / "checkpoint-8" / "trainer_state.json").read_text())
    assert "_sft_restore" in saved["stateful_callbacks"]["DataMapCallback"]["attributes"]
    # And resuming from it restores the added callback too (no warning this time).
    caplog.clear()
    again = [*_three()[:2], DataMapCallback()]
    with caplog.at_level(logging.WARNING):
        _trainer(tmp_path / "a", tokenizer, make_model, again, max_steps=12).train(
            resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-8"))
    assert "no saved state" not in caplog.text
    assert len(again[2].dynamics()) == 66


def test_a_sampling_policy_added_on_resume_weights_from_the_resume(tmp_path, tokenizer, make_model, caplog):
    _trainer(tmp_path / "a", tokenizer, make_model, _three()[:2], max_steps=4).train()
    added = _three()
    with caplog.at_level(logging.WARNING):
        _trainer(tmp_path / "a", tokenizer, make_model, added, max_steps=8).train(
            resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-4"))
    assert "resumed with GroupBalanceCallback added" in caplog.text
    assert "GroupBalanceCallback" in added[0].session.last_policy_weights


def test_two_instances_of_a_class_keep_one_saved_state_each(tmp_path, tokenizer, make_model):
    callbacks = [TrainingDynamicsCallback(), GroupBalanceCallback(group_column="domain", beta=0.5),
                 GroupBalanceCallback(group_column="domain", beta=1.0)]
    _trainer(tmp_path / "a", tokenizer, make_model, callbacks, max_steps=12).train()
    saved = json.loads((tmp_path / "a" / "checkpoint-12" / "trainer_state.json").read_text())["stateful_callbacks"]
    entry = saved["GroupBalanceCallback"]
    assert isinstance(entry, list) and len(entry) == 2  # not 2 more at each of the three saves
    assert [e["args"]["beta"] for e in entry] == [0.5, 1.0]


def test_a_checkpoint_cut_short_while_saving_is_named_with_the_one_to_resume_from(tmp_path, tokenizer, make_model,
                                                                                  caplog):
    import shutil

    from sft_callbacks import last_complete_checkpoint

    _trainer(tmp_path / "a", tokenizer, make_model, _three()[:2], max_steps=8).train()
    # As a process stopped while saving leaves it: the weights written, trainer_state.json not (or cut short).
    (tmp_path / "a" / "checkpoint-8" / "trainer_state.json").unlink()
    shutil.copytree(tmp_path / "a" / "checkpoint-8", tmp_path / "a" / "checkpoint-12")
    (tmp_path / "a" / "checkpoint-12" / "trainer_state.json").write_text('{"global_step": 12, "log_hi')
    assert last_complete_checkpoint(tmp_path / "a") == str(tmp_path / "a" / "checkpoint-4")
    with caplog.at_level(logging.WARNING):
        trainer = _trainer(tmp_path / "a", tokenizer, make_model, _three()[:2], max_steps=12)
    assert (f"{tmp_path / 'a' / 'checkpoint-12'} is incomplete" in caplog.text
            and f"resume from {tmp_path / 'a' / 'checkpoint-4'}" in caplog.text)
    trainer.train(resume_from_checkpoint=last_complete_checkpoint(tmp_path / "a"))
    assert trainer.state.global_step == 12
