"""Evaluation capture, bf16, and per-sample loss weighting through the hook (exact normalisation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from trl import SFTConfig, SFTTrainer

from sft_callbacks import TrainingDynamicsCallback

from ..support.helpers import LOGGED_LOSS_ATOL, reference_losses, sft_rows
from ..support.loss_weights import WeightByRow, parity_weighted_step_losses, record_micro_batches, step_losses
from sft_callbacks.engine.compat import checkpointing_off


def _config(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, learning_rate=0.0, report_to=[],
        use_cpu=True, save_strategy="no", logging_steps=1, max_length=96, seed=0, **checkpointing_off(),
    )
    base.update(kw)
    return SFTConfig(**base)


def test_eval_losses_captured_from_the_trainers_evaluation(tmp_path, tokenizer, make_model):
    train, val = sft_rows(32), sft_rows(24, seed=1)
    model = make_model()
    cb = TrainingDynamicsCallback()
    trainer = SFTTrainer(model=model, args=_config(tmp_path, eval_strategy="steps", eval_steps=2,
                                                  per_device_eval_batch_size=5),
                         train_dataset=train, eval_dataset=val, processing_class=tokenizer, callbacks=[cb])
    trainer.train()
    frame = cb.eval_dynamics()
    assert len(frame) == len(val) and (frame.step == 4).all()
    kept = frame[~frame.dropped]
    prepared = trainer.eval_dataset
    by_uid = {u: i for i, u in enumerate(prepared["uid"])}
    rows = [prepared[by_uid[int(u)]] for u in kept.index]
    ref = reference_losses(model, [r["input_ids"] for r in rows], [r["labels"] for r in rows])
    np.testing.assert_allclose(kept["loss"].to_numpy(), ref[:, 0], atol=1e-4)
    # Rebuilding the Trainer's eval_loss from them: token-normalised NLL per sequential batch of 5, averaged
    # with the batch sizes as weights (the Trainer repeats each batch loss batch_size times).
    eval_loss = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h][-1]
    loss_by_user = kept["loss"].to_dict()
    losses = np.array([loss_by_user[u] for u in prepared["uid"]])
    ntok = np.array([sum(x != -100 for x in labels[1:]) for labels in prepared["labels"]])
    batch_losses = [(losses[i : i + 5] * ntok[i : i + 5]).sum() / ntok[i : i + 5].sum() for i in range(0, len(losses), 5)]
    sizes = [len(losses[i : i + 5]) for i in range(0, len(losses), 5)]
    assert np.isclose(np.average(batch_losses, weights=sizes), eval_loss, atol=1e-5)
    with pytest.raises(KeyError, match="no evaluation named"):
        cb.eval_dynamics("eval_other")


def test_bf16_losses_match_autocast_reference(tmp_path, tokenizer, make_model):
    model = make_model()
    cb = TrainingDynamicsCallback()
    trainer = SFTTrainer(model=model, args=_config(tmp_path, bf16=True), train_dataset=sft_rows(32),
                         processing_class=tokenizer, callbacks=[cb])
    trainer.train()
    frame = cb.dynamics()
    seen = frame[frame.times_seen > 0]
    prepared = trainer.train_dataset
    by_uid = {u: i for i, u in enumerate(prepared["uid"])}
    rows = [prepared[by_uid[int(u)]] for u in seen.index]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = reference_losses(model, [r["input_ids"] for r in rows], [r["labels"] for r in rows])
    assert np.isfinite(seen.loss_last).all()
    np.testing.assert_allclose(seen["loss_last"].to_numpy(), ref[:, 0], atol=3e-2)


@pytest.mark.parametrize("extra", [{}, {"padding_free": True, "max_length": None}])
def test_constant_loss_weight_scales_the_trainers_loss_exactly(tmp_path, tokenizer, make_model, extra):
    data = sft_rows(32)
    base = SFTTrainer(model=make_model(), args=_config(tmp_path / "a", **extra), train_dataset=data,
                      processing_class=tokenizer)
    base.train()
    weighted = SFTTrainer(model=make_model(), args=_config(tmp_path / "b", **extra), train_dataset=data,
                          processing_class=tokenizer, callbacks=[TrainingDynamicsCallback(), WeightByRow("half")])
    weighted.train()
    np.testing.assert_allclose(step_losses(weighted), 0.5 * np.array(step_losses(base)), rtol=1e-5,
                               atol=LOGGED_LOSS_ATOL)


def test_per_sample_loss_weights_keep_the_step_normalisation_under_grad_accumulation(tmp_path, tokenizer, make_model):
    data = sft_rows(32)
    model = make_model()
    cbs = [TrainingDynamicsCallback(), WeightByRow("parity")]
    trainer = SFTTrainer(model=model, args=_config(tmp_path, gradient_accumulation_steps=2), train_dataset=data,
                         processing_class=tokenizer, callbacks=cbs)
    seen = record_micro_batches(model, cbs[0])  # registered first: runs before ours
    trainer.train()
    np.testing.assert_allclose(step_losses(trainer), parity_weighted_step_losses(seen, cbs[0], steps=4, accum=2),
                               rtol=1e-5, atol=LOGGED_LOSS_ATOL)


def test_dft_loss_is_refused_with_loss_weighting(tmp_path, tokenizer, make_model):
    trainer = SFTTrainer(model=make_model(), args=_config(tmp_path, loss_type="dft"), train_dataset=sft_rows(16),
                         processing_class=tokenizer, callbacks=[WeightByRow()])
    with pytest.raises(ValueError, match="loss_type='dft'"):
        trainer.train()
