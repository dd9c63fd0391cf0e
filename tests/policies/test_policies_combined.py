"""All four strategies together: the combination rule, resume, and what TensorBoard shows."""

from __future__ import annotations

import numpy as np
from trl import SFTConfig, SFTTrainer

from sft_callbacks import (
    CurriculumCallback,
    GroupBalanceCallback,
    HardExampleMiningCallback,
    TrainingDynamicsCallback,
    ValidationGuidedResamplingCallback,
)
from sft_callbacks.engine.weights import combine_weights

from ..support.helpers import BatchRecorder, sft_rows
from sft_callbacks.engine.compat import checkpointing_off


TRAIN_DOMAINS = sorted(set(sft_rows(66)["domain"]))


def _callbacks():
    return [
        TrainingDynamicsCallback(sync_every=2),
        ValidationGuidedResamplingCallback(group_column="domain"),  # the default update rule (exp3)
        HardExampleMiningCallback(warmup=2, group_column="domain"),
        CurriculumCallback(difficulty="length", pacing="root", start=0.3, duration=0.6),
        GroupBalanceCallback(group_column="domain", beta=0.5),
    ]


def _run(tmp_path, tokenizer, make_model, callbacks, resume=None, **kw):
    args = dict(
        output_dir=str(tmp_path), max_steps=16, per_device_train_batch_size=4, learning_rate=1e-3, report_to=[],
        use_cpu=True, save_strategy="no", logging_steps=4, eval_strategy="steps", eval_steps=4,
        per_device_eval_batch_size=8, max_length=320, seed=0, **checkpointing_off(), disable_tqdm=True,
    )
    args.update(kw)
    model = make_model()
    trainer = SFTTrainer(model=model, args=SFTConfig(**args), train_dataset=sft_rows(66),
                         eval_dataset=sft_rows(24, seed=1), processing_class=tokenizer, callbacks=callbacks)
    recorder = BatchRecorder(model, lambda: callbacks[0].session)
    trainer.train(resume_from_checkpoint=resume)
    recorder.handle.remove()
    return trainer, recorder.batches


def test_combination_rule_holds_on_the_sampler(tmp_path, tokenizer, make_model):
    cbs = _callbacks()
    trainer, batches = _run(tmp_path, tokenizer, make_model, cbs)
    session = cbs[0].session
    # The sampler's weights are exactly the documented combination of the four policies' last weights.
    vectors = [(name, w) for name, w in session.last_policy_weights.items()]
    assert len(vectors) == 4
    expected = combine_weights(vectors, len(session.dataset), max_ratio=session.max_weight_ratio)
    np.testing.assert_allclose(session.sampler.current_weights, expected, rtol=1e-5, atol=1e-9)
    # The curriculum restricts: every row it excludes has weight 0, every row it allows a positive weight.
    curriculum = session.last_policy_weights["CurriculumCallback"]
    assert ((curriculum == 0) == (session.sampler.current_weights == 0)).all()
    # Hard-example mining reweights inside groups: its weights average 1 within each domain.
    hard = session.last_policy_weights["HardExampleMiningCallback"]
    domains = np.asarray(session.columns["domain"])
    for d in set(domains):
        assert np.isclose(hard[domains == d].mean(), 1.0, rtol=1e-6)


def test_resume_with_all_four_reproduces_weights_and_stream(tmp_path, tokenizer, make_model):
    full_cbs = _callbacks()
    _, full = _run(tmp_path / "a", tokenizer, make_model, full_cbs, save_strategy="steps", save_steps=8)
    resumed_cbs = _callbacks()
    _, resumed = _run(tmp_path / "b", tokenizer, make_model, resumed_cbs, save_strategy="steps", save_steps=8,
                      resume=str(tmp_path / "a" / "checkpoint-8"))
    assert resumed == full[8:]
    a, b = full_cbs[0].session, resumed_cbs[0].session
    np.testing.assert_allclose(b.sampler.current_weights, a.sampler.current_weights, rtol=1e-6)
    for name in a.last_policy_weights:
        np.testing.assert_allclose(b.last_policy_weights[name], a.last_policy_weights[name], rtol=1e-6)
    assert len(resumed_cbs[1].mixture_dict()) == len(TRAIN_DOMAINS)
    assert resumed_cbs[1].mixture_dict() == full_cbs[1].mixture_dict()
    # The validation callback's evidence (per-evaluation draws and losses, EXP3 log-weights) came back with it.
    assert resumed_cbs[1].updates == full_cbs[1].updates == 4
    assert resumed_cbs[1].history == full_cbs[1].history
    np.testing.assert_allclose(resumed_cbs[1].rule.log_weights, full_cbs[1].rule.log_weights)


def test_tensorboard_shows_mixture_hard_fraction_and_competence(tmp_path, tokenizer, make_model):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _run(tmp_path, tokenizer, make_model, _callbacks(), report_to=["tensorboard"])
    tags = set()
    for f in tmp_path.rglob("events.out.tfevents*"):
        acc = EventAccumulator(str(f))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    for tag in ("train/sft/mixture/sarcasm", "train/sft/hard/fraction", "train/sft/curriculum/competence",
                f"train/sft/validation/loss/{TRAIN_DOMAINS[0]}"):
        assert tag in tags, sorted(t for t in tags if "sft" in t)


def test_validation_paced_difficulty_reaches_curriculum_and_hard_mining(tmp_path, tokenizer, make_model):
    # learning_rate=0: validation never improves, so every evaluation after the first is a plateau.
    cbs = [
        TrainingDynamicsCallback(sync_every=2),
        CurriculumCallback(difficulty="length", pacing="linear", start=0.2, duration=1.0),
        ValidationGuidedResamplingCallback(group_column="domain", paced_difficulty=True, patience=1, boost_step=0.5),
    ]
    _run(tmp_path, tokenizer, make_model, cbs, learning_rate=0.0, max_steps=12)
    session = cbs[0].session
    assert session.signals["hard_boost"] == 1.0  # two plateaus of 0.5
    # Competence without the boost would be 0.2 + 0.8 * 12/12 = 1 only at the very end; with boost 1 it is 1.
    assert cbs[1].policy_metrics()["sft/curriculum/competence"] == 1.0
    assert cbs[1].policy_metrics()["sft/curriculum/available_fraction"] == 1.0
