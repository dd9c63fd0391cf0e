"""DenoisingCallback: the rate decision and the withholding on arrays, then real SFTTrainer runs on a tiny task
with 30% wrong answers (what it withholds, that a withheld row is never drawn again, the annotations, resume)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from trl import SFTConfig, SFTTrainer

from benchmarks.denoise_tiny import colour_task, pretrained_task, run_arm
from sft_callbacks import DenoisingCallback, TrainingDynamicsCallback, curate
from sft_callbacks.engine.compat import checkpointing_off
from sft_callbacks.policies.denoising import (learnt_fraction, noise_rate_decision, ramped_rate,
                                              small_loss_thresholds, withheld_rows)

from ..support.helpers import LOGGED_LOSS_ATOL, BatchRecorder
from ..support.loss_weights import record_micro_batches, step_losses


def test_the_rate_is_trusted_only_when_the_mixture_separates():
    rng = np.random.default_rng(0)
    two_modes = np.concatenate([rng.normal(0.05, 0.03, 700), rng.normal(0.8, 0.1, 300)])
    d = noise_rate_decision(two_modes)
    assert d["source"] == "estimated" and d["rate"] == pytest.approx(0.3, abs=0.02) and d["expected_precision"] > 0.9
    flat = rng.uniform(0, 1, 1000)  # no separate mode: a conservative share of the most suspicious rows at most
    d = noise_rate_decision(flat, fallback_rate=0.1)
    assert d["source"] == "fallback" and d["rate"] <= 0.1 and d["reason"]
    assert noise_rate_decision(flat, given=0.25)["rate"] == 0.25
    assert noise_rate_decision(two_modes, min_precision=1.01)["source"] == "fallback"


def test_withheld_rows_take_the_top_of_each_group_at_its_rate():
    score = np.array([0.9, 0.1, 0.5, 0.8, 0.7, np.nan])
    groups = np.array([0, 0, 0, 1, 1, 1])
    assert withheld_rows(score, groups, {0: 1 / 3, 1: 0.5}).tolist() == [True, False, False, True, False, False]
    assert learnt_fraction(np.array([0, 1, 2, 3]), np.array([0.1, 0.2, 2.0, 3.0]),
                           np.array([False, True, False, False]), 4) == 0.5


def _task(seed: int = 0, rate: float = 0.3):
    """24 items, each with a true colour; 10 rows per item with a unique tag, ``rate`` of them with another colour."""
    return colour_task(seed, rate)


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), num_train_epochs=6, per_device_train_batch_size=8, learning_rate=3e-3,
                report_to=[], use_cpu=True, save_strategy="no", logging_steps=30, max_length=64, seed=0,
                disable_tqdm=True, **checkpointing_off())
    base.update(kw)
    return SFTConfig(**base)


def test_it_withholds_mostly_wrong_answers_and_never_draws_them_again(tmp_path, tokenizer, make_model, caplog):
    train, wrong = _task()
    model = make_model()
    dyn, denoise = TrainingDynamicsCallback(), DenoisingCallback(noise_rate=0.3)
    trainer = SFTTrainer(model=model, args=_args(tmp_path), train_dataset=train, processing_class=tokenizer,
                         callbacks=[dyn, denoise])
    recorder = BatchRecorder(model, lambda: denoise.session)
    with caplog.at_level(logging.INFO, logger="sft_callbacks.policies.denoising"):
        trainer.train()
    recorder.handle.remove()
    # It waited until the model had learnt the task (not at the first epoch end), then acted once.
    steps_per_epoch = 30
    assert denoise.acted_step is not None and steps_per_epoch < denoise.acted_step < 6 * steps_per_epoch
    assert denoise.acted_step % steps_per_epoch == 0
    annotated = dyn.to_dataset(train)
    withheld = np.asarray(annotated["withheld"])
    assert withheld.sum() == 72  # the true rate of 240 rows
    precision = wrong[withheld].mean()
    assert precision >= 0.8, precision
    assert all(r.startswith("likely a wrong answer: withheld from step") for r in np.asarray(annotated["withheld_reason"])[withheld])
    # A dropped row is never drawn once the change takes effect: weights decided at step s are drawn from
    # micro-batch s + GA + 2 on (README, "When do new weights take effect"; GA = 1 here).
    after = [r for batch in recorder.batches[denoise.acted_step + 3:] for r in batch]
    lagged = [r for batch in recorder.batches[denoise.acted_step : denoise.acted_step + 3] for r in batch]
    assert withheld[np.asarray(lagged)].any()  # the bound is tight: the rows drawn ahead included some
    assert after and not withheld[np.asarray(after)].any()
    assert any("withholds 72 rows (given rate 0.30)" in m.getMessage() for m in caplog.records)
    logged = [h for h in trainer.state.log_history if "sft/denoise/withheld_fraction" in h]
    assert logged[-1]["sft/denoise/withheld_fraction"] == pytest.approx(0.3)
    # The curated export drops the withheld rows by default and says why.
    curated = curate(train, [dyn, denoise])
    assert curated.rows_out == 240 - 72 and curated.dropped.get("withheld") == 72
    # What it withheld is checkpoint state.
    restored = DenoisingCallback(noise_rate=0.3)
    restored.load_policy_state(json.loads(json.dumps(denoise.policy_state())))
    assert restored.withheld.tolist() == denoise.withheld.tolist() and restored.acted_step == denoise.acted_step


def test_fine_tuning_a_model_that_knows_the_rule_it_withholds_the_wrong_answers_and_ends_better(tmp_path, tokenizer):
    # SFT in miniature: a tiny model first learns that the colour follows the kind word (on other objects), then
    # fine-tunes on 96 rows of which 28 (whole cells, one confusable colour each) are wrong. The plain run learns
    # the wrong cells as exceptions; the strategy, told the true rate, should withhold them and keep the rule.
    _, wrong = pretrained_task(0, 0.3)
    plain = run_arm("plain", 0, 12, 0.3, tokenizer, str(tmp_path), task="pretrained")
    cleaned = run_arm("denoise,noise_rate=0.3", 0, 12, 0.3, tokenizer, str(tmp_path), task="pretrained")
    assert cleaned["left_out"] == round(0.3 * len(wrong))  # the true rate
    assert cleaned["precision"] >= 0.8, cleaned
    assert cleaned["accuracy"] > plain["accuracy"] + 0.05, (plain, cleaned)  # on 240 clean held-out rows


def test_a_resume_keeps_what_was_withheld(tmp_path, tokenizer, make_model):
    train, _ = _task()
    first = DenoisingCallback(act_after_epochs=2, noise_rate=0.3)
    trainer = SFTTrainer(model=make_model(), args=_args(tmp_path / "a", num_train_epochs=3, save_strategy="steps",
                                                          save_steps=70), train_dataset=train,
                         processing_class=tokenizer, callbacks=[first])
    trainer.train()
    assert first.acted_step == 60
    model = make_model()
    again = DenoisingCallback(act_after_epochs=2, noise_rate=0.3)
    resumed = SFTTrainer(model=model, args=_args(tmp_path / "a", num_train_epochs=3), train_dataset=train,
                         processing_class=tokenizer, callbacks=[again])
    recorder = BatchRecorder(model, lambda: again.session)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-70"))
    recorder.handle.remove()
    assert again.acted_step == 60 and again.withheld.tolist() == first.withheld.tolist()
    uid_of_row = np.empty(len(train), dtype=np.int64)
    index = again.session.tracker.index
    uid_of_row[np.asarray(index.seq_row)] = np.asarray(index.seq_uid)
    drawn = np.asarray([r for batch in recorder.batches for r in batch])
    assert drawn.size and not again.withheld[uid_of_row[drawn]].any()


def test_the_score_is_trusted_once_the_window_holds_the_whole_epoch_and_the_task_is_learnt():
    from sft_callbacks.policies.denoising import trusted_at_epoch_end

    steps = np.repeat(np.arange(1, 9), 4)  # two epochs of 4 steps, each visiting the 4 rows once a step
    uid = np.tile(np.arange(4), 8)
    right = {"uid": uid, "step": steps, "loss": np.where(uid < 2, 0.1, 2.0), "correct": uid < 2}
    assert trusted_at_epoch_end(right, 4, start=4, first_step=5)  # opened before the epoch's first visit
    assert not trusted_at_epoch_end(right, 4, start=5, first_step=5)  # opened with it: not before the epoch began
    assert not trusted_at_epoch_end(right, 4, start=1, first_step=1)  # never at the end of the first epoch
    wrong = {**right, "correct": np.zeros(32, bool)}  # nothing answered right: the task is not learnt yet
    assert not trusted_at_epoch_end(wrong, 4, start=1, first_step=5)
    assert not trusted_at_epoch_end(right, 4, start=1, first_step=9)  # no visit of that epoch yet


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="readmit needs action='downweight'"):
        DenoisingCallback(readmit=True)
    with pytest.raises(ValueError, match="noise_rate must be in"):
        DenoisingCallback(noise_rate=1.5)
    with pytest.raises(ValueError, match="action must be one of"):
        DenoisingCallback(action="delete")
    with pytest.raises(ValueError, match="act_after_epochs"):
        DenoisingCallback(act_after_epochs=0)
    with pytest.raises(ValueError, match="method must be one of"):
        DenoisingCallback(method="coteaching")
    with pytest.raises(ValueError, match="ramp_epochs must be > 0"):
        DenoisingCallback(method="small_loss", ramp_epochs=0)


def test_the_small_loss_rule_ramps_and_cuts_each_group_at_its_quantile():
    assert ramped_rate(0.0, 0.3, 2.0) == 0.0 and ramped_rate(1.0, 0.3, 2.0) == pytest.approx(0.15)
    assert ramped_rate(5.0, 0.3, 2.0) == pytest.approx(0.3)
    loss = np.array([0.1, 0.2, 0.3, 0.4, 5.0, 1.0, 2.0, np.nan])
    groups = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    thr = small_loss_thresholds(loss, groups, 2, 0.2)
    assert (loss[:5] > thr[0]).sum() == 1 and thr[1] == np.inf  # 0.2 of 2 rows rounds down to none
    assert np.isinf(small_loss_thresholds(loss, groups, 2, 0.0)).all()


def test_small_loss_leaves_the_high_loss_sequences_out_of_each_steps_loss_exactly(tmp_path, tokenizer, make_model):
    data = _task()[0].shuffle(seed=0).select(range(32))  # distinct rows
    model = make_model()
    dyn, rule = TrainingDynamicsCallback(), DenoisingCallback(method="small_loss", noise_rate=0.25, ramp_epochs=1e-6)
    args = _args(tmp_path, max_steps=6, per_device_train_batch_size=4, learning_rate=0.0, logging_steps=1)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                         callbacks=[dyn, rule])
    seen = record_micro_batches(model, dyn)  # registered first: the unweighted losses
    trainer.train()
    # With the weights frozen every row's loss is fixed, so each step's threshold is the 0.75 quantile of the rows
    # of the steps before it, and the step's loss sums the token losses of the sequences at or below it.
    losses, expected = {}, []
    for nll, ntok, uid in seen:
        if losses:
            thr = small_loss_thresholds(np.array(list(losses.values())), np.zeros(len(losses), int), 1, 0.25)[0]
            kept = nll / ntok <= thr
        else:
            kept = np.ones(len(nll), dtype=bool)
        expected.append(nll[kept].sum() / ntok.sum())
        losses.update({int(u): float(x) for u, x in zip(uid, nll / ntok)})
    np.testing.assert_allclose(step_losses(trainer), expected, rtol=1e-5, atol=LOGGED_LOSS_ATOL)
    assert sum(e < full for e, full in zip(expected, [n.sum() / t.sum() for n, t, _ in seen])) >= 3  # it left some out
    logged = [h for h in trainer.state.log_history if "sft/denoise/left_out_fraction" in h]
    assert logged and logged[-1]["sft/denoise/rate"] == pytest.approx(0.25)
    assert 0 < np.mean([h["sft/denoise/left_out_fraction"] for h in logged[1:]]) < 0.5
    # What it would leave out now is what the export flags.
    ann = rule.row_annotations()
    assert 0 < ann["withheld"].sum() <= len(data) // 4 and ann["withheld_reason"][ann["withheld"]].str.contains("small_loss").all()


def test_on_clean_data_the_default_withholds_nothing(tmp_path, tokenizer, make_model):
    train, wrong = _task(rate=0.0)
    assert not wrong.any()
    dyn, denoise = TrainingDynamicsCallback(), DenoisingCallback()
    SFTTrainer(model=make_model(), args=_args(tmp_path), train_dataset=train, processing_class=tokenizer,
               callbacks=[dyn, denoise]).train()
    # It read the scores (the model learnt the task), found no separate mode of wrong answers, and kept every row.
    assert denoise.acted_step is not None and not denoise.withheld.any()
    assert denoise.report["groups"]["all"]["source"] == "fallback" and denoise.report["groups"]["all"]["rate"] == 0.0
