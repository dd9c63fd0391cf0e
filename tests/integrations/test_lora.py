"""LoRA (peft) with SFTTrainer: the capture sits on the adapted model, every policy runs, and per-sample loss
weighting keeps the Trainer's step normalisation under gradient accumulation."""

from __future__ import annotations

import numpy as np
import pytest
from trl import SFTConfig, SFTTrainer

from sft_callbacks import (
    CurriculumCallback,
    DataMapCallback,
    GroupBalanceCallback,
    HardExampleMiningCallback,
    TrainingDynamicsCallback,
    ValidationGuidedResamplingCallback,
)
from sft_callbacks.demo_data import load_demo_dataset

from sft_callbacks.engine.compat import checkpointing_off

from ..support.helpers import reference_losses, sft_rows
from ..support.loss_weights import WeightByRow, parity_weighted_step_losses, record_micro_batches, step_losses

peft = pytest.importorskip("peft")


def _lora(init_random: bool = True):
    # init_lora_weights=False: random A and B, so the adapters change every output and a capture that read the
    # base model instead of the adapted one would be caught.
    return peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                           target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=not init_random)


def _config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, learning_rate=0.0,
                report_to=[], use_cpu=True, save_strategy="no", logging_steps=1, max_length=96, seed=0,
                **checkpointing_off())
    base.update(kw)
    return SFTConfig(**base)


@pytest.mark.parametrize("extra", [{}, {"padding_free": True, "max_length": None}])
def test_lora_losses_are_the_adapted_models(tmp_path, tokenizer, make_model, extra):
    data = sft_rows(32)
    cb = TrainingDynamicsCallback()
    trainer = SFTTrainer(model=make_model(), args=_config(tmp_path, **extra), train_dataset=data,
                         processing_class=tokenizer, peft_config=_lora(), callbacks=[cb])
    assert isinstance(trainer.model, peft.PeftModel)
    trainer.train()
    frame = cb.dynamics()
    seen = frame[frame.times_seen > 0]
    assert len(seen) >= 10 and cb.session.tracker.unmatched == 0
    prepared = trainer.train_dataset
    by_uid = {u: i for i, u in enumerate(prepared["uid"])}
    rows = [prepared[by_uid[int(u)]] for u in seen.index]
    ids, labels = [r["input_ids"] for r in rows], [r["labels"] for r in rows]
    adapted = reference_losses(trainer.model, ids, labels)
    np.testing.assert_allclose(seen["loss_last"].to_numpy(), adapted[:, 0], atol=1e-4, rtol=0)
    with trainer.model.disable_adapter():
        base = reference_losses(trainer.model, ids, labels)
    assert np.abs(base[:, 0] - adapted[:, 0]).max() > 1e-3  # the adapters matter: the test can tell them apart


def test_every_policy_runs_on_a_lora_model(tmp_path, tokenizer, make_model):
    demo = load_demo_dataset("train")
    domains = np.asarray(demo["domain"])
    keep = np.concatenate([np.flatnonzero(domains == d)[:12] for d in np.unique(domains)])
    train = demo.select(keep)
    evals = demo.select(np.concatenate([np.flatnonzero(domains == d)[12:16] for d in np.unique(domains)]))
    callbacks = [TrainingDynamicsCallback(), ValidationGuidedResamplingCallback(group_column="domain"),
                 HardExampleMiningCallback(group_column="domain"), CurriculumCallback(difficulty="length"),
                 GroupBalanceCallback(group_column="domain"), DataMapCallback(group_column="domain")]
    trainer = SFTTrainer(model=make_model(), train_dataset=train, eval_dataset=evals, processing_class=tokenizer,
                         args=_config(tmp_path, learning_rate=1e-3, max_steps=2 * len(train) // 4,
                                      num_train_epochs=2, eval_strategy="steps", eval_steps=6),
                         peft_config=_lora(init_random=False), callbacks=callbacks)
    trainer.train()
    session = callbacks[0].session
    assert session.weight_updates >= 3 and session.tracker.unmatched == 0
    w = session.sampler.current_weights
    assert np.isfinite(w).all() and w.sum() > 0 and w.std() > 0  # the policies moved the weights
    assert callbacks[1].mixture is not None and np.isfinite(callbacks[1].mixture).all()
    frame = callbacks[5].data_map()
    mapped = frame["confidence"].dropna()  # rows drawn in enough epochs (weighted draws, with replacement)
    assert len(mapped) >= 20 and mapped.between(0, 1).all()
    assert trainer.model.peft_config  # still a LoRA model: only the adapters trained


def test_loss_weights_keep_the_step_normalisation_with_lora(tmp_path, tokenizer, make_model):
    data = sft_rows(32)
    model = make_model()
    cbs = [TrainingDynamicsCallback(), WeightByRow("parity")]
    trainer = SFTTrainer(model=model, args=_config(tmp_path, gradient_accumulation_steps=2), train_dataset=data,
                         processing_class=tokenizer, peft_config=_lora(), callbacks=cbs)
    # On the wrapped base model: peft's forward reaches it, and it runs before our hook on the outer model.
    seen = record_micro_batches(model, cbs[0])
    trainer.train()
    assert len(seen) >= 7  # the Trainer's last step may hold fewer micro-batches (epoch end)
    np.testing.assert_allclose(step_losses(trainer), parity_weighted_step_losses(seen, cbs[0], steps=4, accum=2),
                               rtol=1e-5)
