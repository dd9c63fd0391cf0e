"""DomainAdaptationCallback in real TRL training loops: the regulariser reaches the Trainer's loss exactly (under
gradient accumulation), the adversarial head trains, is logged, and never lands in the saved model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from trl import SFTConfig, SFTTrainer

from sft_callbacks.engine.compat import checkpointing_off
from sft_callbacks.policies.domain_adaptation import HEAD_NAME, DomainAdaptationCallback

from ..support.helpers import LOGGED_LOSS_ATOL, plain_trainer_rows, safetensors_keys, sft_rows
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
    assert not any(HEAD_NAME in k for k in safetensors_keys(tmp_path / "saved"))


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


def _two_domains(tokenizer):
    from sft_callbacks.demo_data import load_demo_dataset

    demo = load_demo_dataset("train")
    domain = np.asarray(demo["domain"])

    def rows(name, n, offset):
        picked = np.flatnonzero(domain == name)[offset: offset + n]
        return demo.select(picked).select_columns(["prompt", "completion", "domain"])

    import datasets

    train = datasets.concatenate_datasets([rows("food", 40, 0), rows("logic", 40, 0)]).shuffle(seed=0)
    held_out = datasets.concatenate_datasets([rows("food", 20, 40), rows("logic", 20, 40)])
    return train, held_out


@pytest.mark.parametrize("method", ["adversarial", "mmd"])
def test_held_out_rows_lose_the_domain(method, tmp_path, tokenizer, make_model):
    """On rows the model never trained on, the regulariser takes the domain out of the representations: the
    adversarial head drops from telling food from logic perfectly to chance; the MMD between them falls. The
    control arm is the same run with the regulariser not pushing (the adversarial head still trains)."""
    train, held_out = _two_domains(tokenizer)
    measured = {}
    for arm, kw in (("control", {"warmup": 1e9}), ("on", {"warmup": 0.1})):
        cb = DomainAdaptationCallback(group_column="domain", target_group="food", method=method,
                                      weight=0.5 if method == "adversarial" else 1.0, **kw)
        args = _config(tmp_path / arm, max_steps=60, per_device_train_batch_size=8, learning_rate=3e-3,
                       logging_steps=20, max_length=128)
        trainer = SFTTrainer(model=make_model(hidden_size=64), args=args, train_dataset=train, eval_dataset=held_out,
                             processing_class=tokenizer, callbacks=[cb])
        trainer.train()
        measured[arm] = cb.measure(trainer.eval_dataset)
    assert measured["on"]["rows"] == 40
    if method == "adversarial":
        assert measured["control"]["head_accuracy"] >= 0.9, measured
        assert measured["on"]["head_accuracy"] <= 0.65, measured  # chance: 0.5
    else:
        assert measured["on"]["mmd"] < 0.5 * measured["control"]["mmd"], measured


def _recording(cb):
    """Wrap the callback's loss term: per micro-batch, the values it added and each sequence's trained tokens."""
    added, term = [], cb._loss_term

    def recorded(kwargs, output, keys):
        value = term(kwargs, output, keys)
        labels = kwargs["labels"][:, 1:]
        added.append((value.detach().numpy(), (labels != -100).sum(1).numpy()))
        return value

    cb._loss_term = recorded
    return added


def test_plain_trainer_gets_the_same_exact_term(tmp_path, tokenizer, make_model):
    from transformers import Trainer, TrainingArguments
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    data = plain_trainer_rows(sft_rows(48), tokenizer)  # keeps the domain column
    losses = {}
    for arm in ("base", "term"):
        cbs = [DomainAdaptationCallback(group_column="domain", target_group="food", method="mmd", weight=1.0,
                                        warmup=0)] if arm == "term" else []
        added = _recording(cbs[0]) if cbs else None
        args = TrainingArguments(output_dir=str(tmp_path / arm), max_steps=3, per_device_train_batch_size=4,
                                 gradient_accumulation_steps=2, learning_rate=0.0, report_to=[], use_cpu=True,
                                 save_strategy="no", logging_steps=1, seed=0, disable_tqdm=True,
                                 remove_unused_columns=False, **checkpointing_off())
        trainer = Trainer(model=make_model(), args=args, train_dataset=data, callbacks=cbs,
                          data_collator=DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id))
        trainer.train()
        losses[arm] = np.array(step_losses(trainer))
    assert len(added) == 6
    extra = [sum((a * n).sum() for a, n in added[2 * s: 2 * s + 2]) / sum(n.sum() for _, n in added[2 * s: 2 * s + 2])
             for s in range(3)]
    np.testing.assert_allclose(losses["term"], losses["base"] + np.array(extra), rtol=1e-5, atol=LOGGED_LOSS_ATOL)
    assert max(extra) > 1e-3


def test_lora_model_and_resume_keep_the_head(tmp_path, tokenizer, make_model):
    peft = pytest.importorskip("peft")
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    kw = dict(max_steps=6, learning_rate=1e-3, save_strategy="steps", save_steps=3)
    cb = DomainAdaptationCallback(group_column="domain", target_group="food", warmup=0)
    trainer = SFTTrainer(model=make_model(), args=_config(tmp_path / "a", **kw), train_dataset=sft_rows(48),
                         processing_class=tokenizer, callbacks=[cb], peft_config=lora)
    trainer.train()
    assert cb.head is not None and all(p.requires_grad for p in cb.head.parameters())
    trained = {k: v.clone() for k, v in cb.head.state_dict().items()}
    # The adapter checkpoint holds no head; the callback state does, and a resumed run continues from it.
    assert not any(HEAD_NAME in k for k in safetensors_keys(tmp_path / "a" / "checkpoint-6"))
    resumed_cb = DomainAdaptationCallback(group_column="domain", target_group="food", warmup=0)
    resumed = SFTTrainer(model=make_model(), args=_config(tmp_path / "b", **kw), train_dataset=sft_rows(48),
                         processing_class=tokenizer, callbacks=[resumed_cb], peft_config=lora)
    loaded = {}
    original = resumed_cb.load_policy_state

    def spy(state):
        original(state)
        loaded.update({k: v.clone() for k, v in resumed_cb.head.state_dict().items()})

    resumed_cb.load_policy_state = spy
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))
    assert loaded and any(not torch.equal(loaded[k], trained[k]) for k in trained)  # step 3's head, not step 6's
    for k in trained:  # and then trained on from there, to a head close to the uninterrupted run's
        torch.testing.assert_close(resumed_cb.head.state_dict()[k], trained[k], atol=1e-4, rtol=1e-3)

