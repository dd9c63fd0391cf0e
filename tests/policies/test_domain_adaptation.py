"""DomainAdaptationCallback in real TRL training loops: the regulariser reaches the Trainer's loss exactly (under
gradient accumulation), the adversarial head trains, is logged, and never lands in the saved model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open
from trl import SFTConfig, SFTTrainer

from sft_callbacks.engine.compat import checkpointing_off
from sft_callbacks.policies.domain_adaptation import HEAD_NAME, DomainAdaptationCallback

from ..support.helpers import LOGGED_LOSS_ATOL, sft_rows
from ..support.loss_weights import record_micro_batches, step_losses


def _config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, learning_rate=0.0,
                report_to=[], use_cpu=True, save_strategy="no", logging_steps=1, max_length=96, seed=0,
                disable_tqdm=True, **checkpointing_off())
    base.update(kw)
    return SFTConfig(**base)


@pytest.mark.parametrize("extra", [{}, {"padding_free": True, "max_length": None}])
def test_the_regulariser_enters_the_trainers_loss_exactly(tmp_path, tokenizer, make_model, extra):
    data = sft_rows(48)  # more than 4 steps x 2 micro-batches x 4 rows: no step ends at the epoch's end
    base = SFTTrainer(model=make_model(), args=_config(tmp_path / "a", gradient_accumulation_steps=2, **extra),
                      train_dataset=data, processing_class=tokenizer)
    base.train()
    model = make_model()
    cb = DomainAdaptationCallback(group_column="domain", target_group="food", method="mmd", weight=1.0, warmup=0)
    added = []
    term = cb._loss_term

    def recorded(kwargs, output, keys):
        value = term(kwargs, output, keys)
        added.append(value.detach().numpy())
        return value

    cb._loss_term = recorded
    trainer = SFTTrainer(model=model, args=_config(tmp_path / "b", gradient_accumulation_steps=2, **extra),
                         train_dataset=data, processing_class=tokenizer, callbacks=[cb])
    seen = record_micro_batches(model, cb)
    trainer.train()
    assert len(added) == len(seen) == 8 and any(a.max() > 0 for a in added)
    expected = []
    for step in range(4):
        nll = sum(s[0].sum() for s in seen[2 * step: 2 * step + 2])
        ntok = sum(s[1].sum() for s in seen[2 * step: 2 * step + 2])
        aux = sum((a * s[1]).sum() for a, s in zip(added[2 * step: 2 * step + 2], seen[2 * step: 2 * step + 2]))
        expected.append((nll + aux) / ntok)  # each sequence's value on each of its trained tokens
    np.testing.assert_allclose(step_losses(trainer), expected, rtol=1e-5, atol=LOGGED_LOSS_ATOL)
    assert not np.allclose(step_losses(trainer), step_losses(base), atol=1e-3)  # it did add something


def test_adversarial_head_trains_is_logged_and_is_not_saved(tmp_path, tokenizer, make_model):
    model = make_model()
    cb = DomainAdaptationCallback(group_column="domain", target_group="food", weight=0.5, warmup=0.25)
    trainer = SFTTrainer(model=model, args=_config(tmp_path, max_steps=8, learning_rate=1e-3, logging_steps=2),
                         train_dataset=sft_rows(48), processing_class=tokenizer, callbacks=[cb])
    head = getattr(model, HEAD_NAME)
    before = [p.detach().clone() for p in head.parameters()]
    trainer.train()
    assert all(not torch.equal(b, p) for b, p in zip(before, head.parameters()))  # the optimizer trained it
    logged = [h for h in trainer.state.log_history if "sft/domain/aux_loss" in h]
    assert len(logged) == 4 and all(0 <= h["sft/domain/head_accuracy"] <= 1 for h in logged)
    assert logged[0]["sft/domain/strength"] == 0.0  # step 2 of 8: still warming up
    assert logged[-1]["sft/domain/strength"] > 0
    trainer.save_model(str(tmp_path / "saved"))
    with safe_open(str(tmp_path / "saved" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any(HEAD_NAME in k for k in keys)


def test_bad_arguments_and_columns_are_refused(tmp_path, tokenizer, make_model):
    with pytest.raises(ValueError, match="method must be one of"):
        DomainAdaptationCallback(group_column="domain", target_group="food", method="coral")
    with pytest.raises(ValueError, match="weight must be"):
        DomainAdaptationCallback(group_column="domain", target_group="food", weight=float("nan"))
    cb = DomainAdaptationCallback(group_column="domain", target_group="no_such_domain")
    trainer = SFTTrainer(model=make_model(), args=_config(tmp_path), train_dataset=sft_rows(16),
                         processing_class=tokenizer, callbacks=[cb])
    with pytest.raises(ValueError, match="'no_such_domain' is not a value of column 'domain'"):
        trainer.train()
    with pytest.raises(ValueError, match="layer=7 but the model has 2 decoder layers"):
        SFTTrainer(model=make_model(), args=_config(tmp_path), train_dataset=sft_rows(16), processing_class=tokenizer,
                   callbacks=[DomainAdaptationCallback(group_column="domain", target_group="food", layer=7)])
