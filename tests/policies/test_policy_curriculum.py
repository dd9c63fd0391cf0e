"""CurriculumCallback: pacing functions on arrays, then real SFTTrainer runs with a recorded index stream."""

from __future__ import annotations

import json
import logging
import math
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
from trl import SFTConfig, SFTTrainer

from sft_callbacks import TrainingDynamicsCallback
from sft_callbacks.policies.curriculum import (
    CurriculumCallback,
    competence,
    curriculum_weights,
    difficulty_ranks,
    stage_at,
    stage_weights,
)
from sft_callbacks.engine.scoring import length_difficulty, loss_difficulty, shard_sequences
from sft_callbacks.engine.tracking import RowIndex

from ..support.helpers import BatchRecorder, reference_losses, sft_rows
from sft_callbacks.engine.compat import checkpointing_off

# ----------------------------------------------------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------------------------------------------------
GRID = np.linspace(0.0, 1.0, 101)


@pytest.mark.parametrize("pacing", ["linear", "root", "step", "exponential"])
@pytest.mark.parametrize("start,duration", [(0.1, 0.8), (0.25, 0.5), (1.0, 0.3), (0.05, 1.0)])
def test_builtin_pacings_start_at_c0_grow_monotonically_and_reach_one_at_duration(pacing, start, duration):
    c = competence(GRID, pacing, start=start, duration=duration)
    assert c[0] == pytest.approx(start)
    assert (np.diff(c) >= -1e-12).all()
    assert ((c >= start - 1e-12) & (c <= 1.0)).all()
    assert (c[GRID >= duration - 1e-12] == 1.0).all()
    if start < 1.0:
        assert (c[GRID < duration - 0.011] < 1.0).all()  # not before duration
    assert competence(0.3, pacing, start=start, duration=duration) == pytest.approx(c[30])  # scalar in, scalar out


def test_pacing_shapes():
    t = np.array([0.0, 0.1, 0.2, 0.4, 0.6, 0.79, 0.8, 1.0])
    lin = competence(t, "linear", start=0.2, duration=0.8)
    np.testing.assert_allclose(lin, 0.2 + 0.8 * np.minimum(1, t / 0.8))
    root = competence(t, "root", start=0.2, duration=0.8)  # Platanios et al.: sqrt(c0^2 + (1 - c0^2) t/T)
    np.testing.assert_allclose(root, np.sqrt(0.04 + 0.96 * np.minimum(1, t / 0.8)))
    assert (root >= lin - 1e-12).all() and root[2] > lin[2]  # concave: ahead of linear
    cube = competence(t, "root", start=0.2, duration=0.8, root_p=3)
    np.testing.assert_allclose(cube, np.cbrt(0.008 + 0.992 * np.minimum(1, t / 0.8)))
    assert (cube >= root - 1e-12).all()
    expo = competence(t, "exponential", start=0.2, duration=0.8)
    np.testing.assert_allclose(expo, 0.2 ** (1 - np.minimum(1, t / 0.8)))
    assert (expo <= lin + 1e-12).all() and expo[3] < lin[3]  # convex: behind linear
    step = competence(t, "step", start=0.2, duration=0.8, num_steps=4)  # jumps at 0.2, 0.4, 0.6, 0.8
    np.testing.assert_allclose(step, [0.2, 0.2, 0.4, 0.6, 0.8, 0.8, 1.0, 1.0])
    custom = competence(t, lambda x: 2 * x)
    np.testing.assert_allclose(custom, np.minimum(1, 2 * t))  # clipped to [0, 1]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(pacing="cosine"), "pacing must be one of"),
        (dict(start=0.0), "start"),
        (dict(start=1.5), "start"),
        (dict(duration=0.0), "duration"),
        (dict(duration=1.2), "duration"),
        (dict(pacing="root", root_p=0.5), "root_p"),
        (dict(pacing="step", num_steps=0), "num_steps"),
    ],
)
def test_competence_rejects_bad_schedules(kwargs, match):
    with pytest.raises(ValueError, match=match):
        competence(0.5, **kwargs)


def test_difficulty_ranks_are_distinct_percentiles_with_deterministic_ties():
    d = np.array([5.0, 1.0, 3.0, 1.0, 3.0, 9.0])
    p = difficulty_ranks(d)
    assert sorted(p.tolist()) == [k / 6 for k in range(1, 7)]
    assert p.tolist() == [5 / 6, 1 / 6, 3 / 6, 2 / 6, 4 / 6, 1.0]  # ties by row index
    tb = np.array([0, 7, 5, 2, 1, 0], dtype=np.uint64)
    p2 = difficulty_ranks(d, tiebreak=tb)
    assert p2[3] < p2[1] and p2[4] < p2[2]  # ties by tiebreak first
    np.testing.assert_array_equal(p2, difficulty_ranks(d, tiebreak=tb))
    order = np.argsort(p2)
    assert (np.diff(d[order]) >= 0).all()  # easy to hard
    with pytest.raises(ValueError, match="non-finite"):
        difficulty_ranks([1.0, np.nan])


def test_curriculum_weights_allow_the_easiest_fraction_and_anti_reverses():
    rng = np.random.default_rng(0)
    d = rng.normal(size=200)
    p = difficulty_ranks(d)
    for c in (0.1, 0.25, 0.3, 0.5, 0.7, 1.0):
        w = curriculum_weights(p, c)
        a = curriculum_weights(p, c, anti=True)
        assert set(np.unique(w)) <= {0.0, 1.0}
        assert w.sum() == a.sum() == math.floor(c * 200 + 1e-9)
        assert d[w > 0].max() <= d[w == 0].min() if c < 1 else w.all()  # the easiest rows
        assert d[a > 0].min() >= d[a == 0].max() if c < 1 else a.all()  # anti: the hardest rows
    small = difficulty_ranks([3.0, 1.0, 2.0])
    assert curriculum_weights(small, 0.1).tolist() == [0.0, 1.0, 0.0]  # never empty: the easiest stays
    assert curriculum_weights(small, 0.1, anti=True).tolist() == [1.0, 0.0, 0.0]


def test_stages_switch_at_their_boundaries():
    durations = [0.25, 0.25, 0.5]
    progress = (0.0, 0.2499, 0.25, 0.4999, 0.5, 0.99, 1.0, 1.5)
    assert [stage_at(x, durations) for x in progress] == [0, 0, 1, 1, 2, 2, 2, 2]
    assert [stage_at(x, [1 / 3] * 3) for x in (1 / 3, 2 / 3)] == [1, 2]  # float sums do not delay a stage
    groups = ["basics", "chat", "code", "basics", "chat"]
    assert stage_weights(groups, ["basics"]).tolist() == [1, 0, 0, 1, 0]
    assert stage_weights(groups, ["basics", "chat"]).tolist() == [1, 1, 0, 1, 1]
    assert stage_weights([1, 2, None, 2], [2, "None"]).tolist() == [0, 1, 1, 1]  # compared as strings


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(difficulty=3), "difficulty must be"),
        (dict(pacing="cosine"), "pacing must be one of"),
        (dict(start=0), "start"),
        (dict(duration=2), "duration"),
        (dict(num_steps=2.5), "num_steps"),
        (dict(anti="yes"), "anti"),
        (dict(update_every_steps=0), "update_every_steps"),
        (dict(stage_column="domain"), "only apply with stages"),
        (dict(stages=[["a"]]), "stage_column"),
        (dict(stages=[], stage_column="d"), "non-empty list"),
        (dict(stages=["ab"], stage_column="d"), "stage 0 must be"),
        (dict(stages=[["a"], ["a", "b"]], stage_column="d", stage_durations=[0.5]), "2 stages"),
        (dict(stages=[["a"], ["a", "b"]], stage_column="d", stage_durations=[0.5, 0.6]), "sum to 1"),
        (dict(stages=[["a"], ["a", "b"]], stage_column="d", stage_durations=[1.5, -0.5]), "positive"),
        (dict(stages=[["a"]], stage_column="d", pacing="root"), r"\['pacing'\] do not apply"),
    ],
)
def test_callback_validates_arguments_eagerly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CurriculumCallback(**kwargs)


def test_policy_state_round_trips_through_json():
    cb = CurriculumCallback(difficulty="loss")
    assert cb.policy_state() == {}
    cb.difficulty = np.array([0.5, 2.0, 1.25])
    cb.scoring_seconds = 1.5
    state = json.loads(json.dumps(cb.policy_state()))
    other = CurriculumCallback(difficulty="loss")
    other.load_policy_state(state)
    np.testing.assert_array_equal(other.difficulty, cb.difficulty)
    assert other.policy_metrics()["sft/curriculum/scoring_seconds"] == 1.5
    length = CurriculumCallback(difficulty="length")
    length.load_policy_state(state)  # a cache of another difficulty is not used
    assert length.difficulty is None


def _fake_context(step: int, max_steps: int = 20, n: int = 10):
    """The parts of a PolicyContext the length curriculum reads: row i has i trained tokens."""
    index = RowIndex(keys=np.arange(1, n + 1, dtype=np.uint64), seq_uid=np.arange(n), seq_row=np.arange(n),
                     n_trained=np.arange(n, dtype=np.int32), num_rows=n, packed=False)
    return SimpleNamespace(step=step, max_steps=max_steps, num_rows=n, index=index, args=None)


@pytest.mark.parametrize("anti", [False, True])
def test_update_every_steps_moves_competence_only_at_its_multiples(anti):
    cb = CurriculumCallback(start=0.2, duration=1.0, update_every_steps=5, anti=anti)
    first = cb.compute_weights(_fake_context(0), "train_begin")
    assert first.tolist() == ([1.0] * 2 + [0.0] * 8 if not anti else [0.0] * 8 + [1.0] * 2)
    assert cb.compute_weights(_fake_context(3), "step") is None  # same competence: keep the weights
    assert cb.policy_metrics()["sft/curriculum/competence"] == pytest.approx(0.2)
    fifth = cb.compute_weights(_fake_context(7), "step")  # decided as at step 5: 0.2 + 0.8 * 5/20 = 0.4
    metrics = cb.policy_metrics()
    assert metrics == pytest.approx({"sft/curriculum/competence": 0.4, "sft/curriculum/available_fraction": 0.4})
    assert fifth.tolist() == ([1.0] * 4 + [0.0] * 6 if not anti else [0.0] * 6 + [1.0] * 4)
    assert cb.compute_weights(_fake_context(20), "step").all()


def test_shards_cover_every_sequence_with_equal_counts():
    order = np.array([4, 0, 3, 1, 2])
    shards = [shard_sequences(order, r, 3) for r in range(3)]
    assert {len(s) for s in shards} == {2}
    assert sorted(set(np.concatenate(shards).tolist())) == [0, 1, 2, 3, 4]


# ----------------------------------------------------------------------------------------------------------------
# Scoring functions
# ----------------------------------------------------------------------------------------------------------------
def test_loss_difficulty_scores_packed_samples_apart_and_restores_training_mode(tokenizer, make_model):
    model = make_model()
    rng = np.random.default_rng(0)
    segs = [rng.integers(3, 400, size=n).tolist() for n in (5, 9, 4, 7)]
    labels = [[-100, -100] + s[2:] for s in segs]
    labels[2] = [-100] * 4  # a sample without a trained token
    flat = datasets.Dataset.from_dict({"input_ids": segs, "labels": labels})
    packed = datasets.Dataset.from_dict(
        {"input_ids": [segs[0] + segs[1], segs[2] + segs[3]], "labels": [labels[0] + labels[1], labels[2] + labels[3]],
         "seq_lengths": [[5, 9], [4, 7]]}
    )
    model.train()
    one = loss_difficulty(model, flat, batch_size=3, progress=False)
    assert model.training
    ref = reference_losses(model, segs[:2] + segs[3:], labels[:2] + labels[3:])[:, 0]
    np.testing.assert_allclose(one.loss[[0, 1, 3]], ref, atol=1e-4)
    assert one.loss[2] == 0.0 and one.n_tokens.tolist() == [3, 7, 0, 5] and one.seconds > 0
    np.testing.assert_array_equal(length_difficulty(flat), one.n_tokens)
    pack = loss_difficulty(model, packed, batch_size=2, progress=False)
    expect = [(ref[0] * 3 + ref[1] * 7) / 10, ref[2]]  # token-weighted mean over the pack's samples
    np.testing.assert_allclose(pack.loss, expect, atol=1e-4)
    np.testing.assert_array_equal(length_difficulty(packed), [10, 5])


# ----------------------------------------------------------------------------------------------------------------
# Real SFTTrainer runs
# ----------------------------------------------------------------------------------------------------------------
def _config(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=4, learning_rate=1e-3, report_to=[],
        use_cpu=True, save_strategy="no", logging_steps=5, max_length=128, seed=0, **checkpointing_off(),
        disable_tqdm=True,
    )
    base.update(kw)
    return SFTConfig(**base)


def _run(tmp_path, tokenizer, make_model, callbacks, data, resume=None, **kw):
    model = make_model()
    trainer = SFTTrainer(model=model, args=_config(tmp_path, **kw), train_dataset=data, processing_class=tokenizer,
                         callbacks=callbacks)
    recorder = BatchRecorder(model, lambda: callbacks[-1].session)
    trainer.train(resume_from_checkpoint=resume)
    recorder.handle.remove()
    return trainer, recorder


def _decision_steps(num_batches: int, ga: int, lag: int, sync_steps) -> list[int]:
    """The optimizer step whose weights drew each micro-batch (0: the train_begin weights), per the README's bound."""
    out = []
    for m in range(num_batches):
        decided = [s for s in sync_steps if s * ga + lag <= m]
        out.append(max(decided) if decided else 0)
    return out


def _logged(trainer, key):
    return {h["step"]: h[key] for h in trainer.state.log_history if key in h}


def test_hardest_rows_are_not_drawn_before_competence_reaches_them(tmp_path, tokenizer, make_model):
    max_steps = 48  # three epochs of 16 steps: the bound holds across epoch boundaries too
    curriculum = CurriculumCallback(difficulty="length", start=0.25, duration=0.5)
    trainer, rec = _run(tmp_path, tokenizer, make_model, [TrainingDynamicsCallback(sync_every=1), curriculum],
                        sft_rows(66), max_steps=max_steps, logging_steps=6)  # 64 rows once TRL drops two
    session = curriculum.session
    dataset = trainer.train_dataset
    # Difficulty: trained tokens per row, counted independently from the prepared labels.
    expected = [sum(1 for x in labels[1:] if x != -100) for labels in dataset["labels"]]
    np.testing.assert_array_equal(curriculum.difficulty, expected)
    np.testing.assert_array_equal(length_difficulty(dataset), expected)
    pct = curriculum.percentiles
    assert (np.diff(np.asarray(expected)[np.argsort(pct)]) >= 0).all()  # percentiles follow the difficulty

    def c(step):
        return competence(step / max_steps, "linear", start=0.25, duration=0.5)

    # Every micro-batch holds only rows within the competence of the step whose weights drew it.
    lag = session.lag_micro_batches
    steps = _decision_steps(len(rec.batches), 1, lag, range(1, max_steps + 1))
    assert len(rec.batches) == max_steps
    for batch, step in zip(rec.batches, steps):
        assert pct[batch].max() <= c(step) + 1e-9, (step, c(step), pct[batch])
    assert pct[rec.batches[0]].max() <= 0.25 + 1e-9  # the very first batch already follows the curriculum
    # The hardest eighth becomes available from step 21 (the first competence above 0.875), the very hardest row
    # at step 24 (competence 1); neither is drawn earlier, and the hardest rows are drawn once they are available.
    assert c(20) == pytest.approx(0.875) and c(21) > 0.875 and c(23) < 1.0 == c(24)
    drawn_before = {m: {r for b in rec.batches[:m] for r in b} for m in (21 + lag, 24 + lag)}
    hardest = set(np.flatnonzero(pct > 0.875 + 1e-9).tolist())
    very_hardest = int(np.argmax(pct))
    assert len(hardest) == 8 and not hardest & drawn_before[21 + lag]
    assert very_hardest not in drawn_before[24 + lag]
    late = {r for b in rec.batches[24 + lag :] for r in b}
    assert hardest & late
    assert (session.sampler.current_weights > 0).all()  # by the end every row is available
    competences = _logged(trainer, "sft/curriculum/competence")
    assert competences[6] == pytest.approx(c(6)) and competences[24] == 1.0
    fraction = _logged(trainer, "sft/curriculum/available_fraction")
    assert fraction[6] == pytest.approx(math.floor(c(6) * len(pct) + 1e-9) / len(pct))
    assert fraction[48] == 1.0


def test_stages_switch_at_their_boundaries_in_training(tmp_path, tokenizer, make_model):
    stages = [["logic"], ["logic", "sarcasm"], ["logic", "sarcasm", "food", "binary_math", "science_mcq", "radio_exam"]]
    curriculum = CurriculumCallback(stages=stages, stage_column="domain", stage_durations=[0.25, 0.25, 0.5])
    # No TrainingDynamicsCallback: the curriculum alone drives the session; sync points are the log steps.
    trainer, rec = _run(tmp_path, tokenizer, make_model, [curriculum], sft_rows(64), max_steps=16, logging_steps=4)
    session = curriculum.session
    domains = np.asarray(session.columns["domain"])
    lag = session.lag_micro_batches
    steps = _decision_steps(len(rec.batches), 1, lag, [4, 8, 12, 16])
    seen = {0: set(), 1: set(), 2: set()}
    for batch, step in zip(rec.batches, steps):
        stage = stage_at(step / 16, [0.25, 0.25, 0.5])
        assert set(domains[batch]) <= set(stages[stage]), (step, domains[batch])
        seen[stage] |= set(domains[batch])
    assert seen[0] == {"logic"}
    assert "sarcasm" in seen[1]  # the second stage opens at step 4 (drawn from micro-batch 4 + lag)
    assert seen[2] - {"logic", "sarcasm"}  # the third at step 8
    assert _logged(trainer, "sft/curriculum/stage") == {4: 1.0, 8: 2.0, 12: 2.0, 16: 2.0}


def test_loss_difficulty_runs_one_scoring_pass_reports_it_and_is_not_redone_on_resume(
    tmp_path, tokenizer, make_model, caplog
):
    data = sft_rows(48)
    # fp32 (SFTConfig turns bf16 autocast on where the CPU supports it) so that the scores match exactly.
    kw = dict(max_steps=8, save_strategy="steps", save_steps=4, logging_steps=2, bf16=False)
    curriculum = CurriculumCallback(difficulty="loss", start=0.5, duration=0.5, scoring_batch_size=16)
    with caplog.at_level(logging.INFO, logger="sft_callbacks.policies.curriculum"):
        trainer, rec = _run(tmp_path / "a", tokenizer, make_model, [curriculum], data, **kw)
    dataset = trainer.train_dataset
    n = len(dataset)
    assert rec.eval_forwards == math.ceil(n / 16)  # one batched pass, nothing else in eval mode
    # The scores are the untrained model's losses (an identical model scored independently).
    ref = reference_losses(make_model(), dataset["input_ids"], dataset["labels"])[:, 0]
    np.testing.assert_allclose(curriculum.difficulty, ref, atol=1e-4)
    seconds = _logged(trainer, "sft/curriculum/scoring_seconds")
    assert seconds and all(v == curriculum.scoring_seconds > 0 for v in seconds.values())
    assert f"scored {n} rows by the model's loss in" in caplog.text
    # Resume from step 4: the difficulty comes from the checkpoint, and the stream continues unchanged.
    resumed_cb = CurriculumCallback(difficulty="loss", start=0.5, duration=0.5, scoring_batch_size=16)
    _, rec_b = _run(tmp_path / "b", tokenizer, make_model, [resumed_cb], data,
                    resume=str(tmp_path / "a" / "checkpoint-4"), **kw)
    assert rec_b.eval_forwards == 0
    np.testing.assert_array_equal(resumed_cb.difficulty, curriculum.difficulty)
    assert rec_b.batches == rec.batches[4:]


def test_difficulty_from_a_column_and_from_a_callable(tmp_path, tokenizer, make_model):
    data = sft_rows(64)
    data = data.add_column("level", [u % 8 for u in data["uid"]])
    by_column = CurriculumCallback(difficulty="level", start=0.25, duration=0.5)
    _, rec = _run(tmp_path / "col", tokenizer, make_model, [by_column], data, max_steps=4)
    levels = np.asarray(by_column.session.columns["level"])
    np.testing.assert_array_equal(by_column.difficulty, levels)
    # Steps 1-4 draw from the train_begin weights (no sync point before step 4): the easiest quarter only.
    drawn = np.concatenate(rec.batches)
    assert set(levels[drawn]) <= {0, 1} and len(set(levels[drawn])) == 2

    def answer_length(row):
        return len(row["completion"][0]["content"])

    by_callable = CurriculumCallback(difficulty=answer_length, pacing="step", anti=True)
    _run(tmp_path / "fn", tokenizer, make_model, [by_callable], data, max_steps=2)
    columns = by_callable.session.columns
    np.testing.assert_array_equal(by_callable.difficulty, [len(c[0]["content"]) for c in columns["completion"]])
    state = by_callable.state()
    assert "difficulty" not in state["args"]  # a callable is not written to trainer_state.json
    json.dumps(state)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(difficulty="nope"), r"told to use column\(s\) \['nope'\].*'domain'"),
        (dict(stages=[["logic"]], stage_column="task"), r"told to use column\(s\) \['task'\]"),
        (dict(difficulty="domain"), "must hold numbers"),
        (dict(stages=[["logic"], ["maths"]], stage_column="domain"), r"stage 1 \(\['maths'\]\) matches no row"),
    ],
)
def test_bad_columns_are_refused_when_training_begins(tmp_path, tokenizer, make_model, kwargs, match):
    trainer = SFTTrainer(model=make_model(), args=_config(tmp_path, max_steps=2), train_dataset=sft_rows(32),
                         processing_class=tokenizer, callbacks=[CurriculumCallback(**kwargs)])
    with pytest.raises(ValueError, match=match):
        trainer.train()
    assert trainer.state.global_step == 0
