"""Hard-example mining: the pure functions on arrays, the callback's schedule on a hand-built context, and real
SFTTrainer runs (draws follow the weights after the warm-up, the cap, group shares, reducible mode, focal loss
weights exact under gradient accumulation, resume)."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from trl import SFTConfig, SFTTrainer

from sft_callbacks import AdaptiveSampler, SamplingPolicyCallback, TrainingDynamicsCallback, combine_weights
from sft_callbacks.policies.hard_examples import (
    SCORE_FLOOR,
    HardExampleMiningCallback,
    cap_ratio,
    first_epoch_reference,
    focal_loss_weights,
    group_normalise,
    hard_fraction,
    hardness_scores,
    power_weights,
    rank_weights,
)
from sft_callbacks.engine.row_keys import padded_keys
from sft_callbacks.engine.session import PolicyContext
from sft_callbacks.engine.tracking import RowIndex, SampleStats

from ..support.helpers import LOGGED_LOSS_ATOL, sft_rows
from ..support.loss_weights import record_micro_batches
from sft_callbacks.engine.compat import checkpointing_off

# -- pure functions -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pressure", [1.5, 10.0, 100.0])
def test_rank_weights_fall_with_rank_and_hardest_over_easiest_is_the_selection_pressure(pressure):
    scores = np.random.default_rng(0).lognormal(size=50)
    w = rank_weights(scores, pressure)
    order = np.argsort(-scores)
    assert (np.diff(w[order]) < 0).all()  # strictly decreasing from the hardest to the easiest
    assert np.isclose(w[order[0]] / w[order[-1]], pressure, rtol=1e-12)
    assert np.isclose(w.mean(), 1.0)
    # Geometric in the rank: consecutive ranks differ by the same factor s^(1/(n-1)).
    np.testing.assert_allclose(w[order[:-1]] / w[order[1:]], pressure ** (1 / 49), rtol=1e-12)
    # Only the order matters: a monotone transform of the scores gives the same weights.
    np.testing.assert_allclose(rank_weights(np.exp(scores), pressure), w, rtol=1e-12)


def test_rank_weights_give_tied_scores_equal_weights():
    w = rank_weights(np.array([5.0, 1.0, 3.0, 3.0, 3.0]), 16.0)
    assert w[2] == w[3] == w[4]
    assert w[0] > w[2] > w[1]
    assert np.isclose(w[0] / w[1], 16.0)
    assert rank_weights(np.array([2.0]), 10.0).tolist() == [1.0]


def test_power_weights_are_scores_to_the_alpha():
    scores = np.array([0.5, 1.0, 2.0, 4.0])
    for alpha in (0.5, 1.0, 3.0):
        w = power_weights(scores, alpha)
        np.testing.assert_allclose(w, scores**alpha / (scores**alpha).mean(), rtol=1e-12)
    w = power_weights(np.array([1e-3, 10.0]), 500.0)  # no underflow to 0 (a zero would exclude the sample)
    assert (w > 0).all() and np.isfinite(w).all()
    with pytest.raises(ValueError, match="> 0"):
        power_weights(np.array([0.0, 1.0]), 1.0)


def test_hardness_scores_put_unseen_samples_at_the_mean_of_the_seen():
    loss = np.array([1.0, np.nan, 3.0, 8.0, 2.0], dtype=np.float32)
    seen = np.array([1, 0, 2, 1, 0])  # the last one has a stale loss but was never counted seen: unseen
    s = hardness_scores(loss, times_seen=seen)
    np.testing.assert_allclose(s, [1.0, 4.0, 3.0, 8.0, 4.0])
    assert hardness_scores(np.full(3, np.nan), times_seen=np.zeros(3)).tolist() == [1.0, 1.0, 1.0]
    # Scores never fall below the floor, so no sample ends with a zero (excluding) weight.
    assert hardness_scores(np.array([0.0, 2.0])).tolist() == [SCORE_FLOOR, 2.0]


def test_reducible_scores_subtract_the_reference_and_clip_at_the_floor():
    loss = np.array([3.0, 2.0, 5.0, 1.0])
    ref = np.array([1.0, 2.5, np.nan, 0.5])  # sample 1 is below its reference; sample 2 has none
    s = hardness_scores(loss, ref, times_seen=np.ones(4))
    known = np.array([2.0, SCORE_FLOOR, 0.5])
    np.testing.assert_allclose(s, [2.0, SCORE_FLOOR, known.mean(), 0.5])


@pytest.mark.parametrize("ratio", [1.0, 3.0, 20.0])
def test_cap_ratio_holds_keeps_order_and_leaves_narrow_weights_alone(ratio):
    w = np.random.default_rng(1).lognormal(sigma=2.0, size=200)
    v = cap_ratio(w, ratio)
    assert v.max() / v.min() <= ratio * (1 + 1e-12)
    assert np.isclose(v.mean(), 1.0)
    order = np.argsort(w)
    assert (np.diff(v[order]) >= 0).all()
    narrow = np.linspace(1.0, 2.0, 10)
    np.testing.assert_allclose(cap_ratio(narrow, 3.0), narrow / narrow.mean())
    # Zeros stay zero (excluded rows stay excluded).
    assert cap_ratio(np.array([0.0, 1.0, 100.0]), 10.0)[0] == 0.0


@pytest.mark.parametrize("ratio", [2.0, 5.0, 50.0])
def test_cap_ratio_with_groups_keeps_every_group_at_mean_one(ratio):
    rng = np.random.default_rng(2)
    w = rng.lognormal(sigma=1.5, size=300)
    groups = rng.choice(["a", "b", "c", "d"], size=300, p=[0.6, 0.2, 0.15, 0.05])
    w[groups == "d"] *= 50  # one group far heavier than the others
    v = cap_ratio(w, ratio, groups)
    assert v.max() / v.min() <= ratio * (1 + 1e-9)
    for g in "abcd":
        assert np.isclose(v[groups == g].mean(), 1.0, rtol=1e-9)
        order = np.argsort(w[groups == g])
        assert (np.diff(v[groups == g][order]) >= -1e-12).all()  # order kept inside each group
    # A single group is the plain cap.
    np.testing.assert_allclose(cap_ratio(w, ratio, np.zeros(300)), cap_ratio(w, ratio), rtol=1e-9)


def test_group_normalisation_keeps_the_group_shares_another_policy_sets():
    rng = np.random.default_rng(3)
    groups = rng.choice(["x", "y", "z"], size=120, p=[0.7, 0.2, 0.1])
    hard = group_normalise(rng.lognormal(sigma=1.0, size=120), groups)
    for g in "xyz":
        assert np.isclose(hard[groups == g].sum() / hard.sum(), (groups == g).mean())  # uniform's group mass
    # Combined with a balance policy (constant per group), the groups get exactly that policy's shares.
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    balance = 1.0 / counts[inverse]
    p = combine_weights([("balance", balance), ("hard", hard)], 120, max_ratio=None)
    for g in "xyz":
        assert np.isclose(p[groups == g].sum(), 1 / 3)
    assert group_normalise(np.array([1.0, 3.0, 0.0, 5.0]), [None, None, "b", "b"]).tolist() == [0.5, 1.5, 0.0, 1.0]


def test_focal_loss_weights_follow_the_formula_and_average_one_over_seen_samples():
    loss = np.array([0.1, 0.5, 2.0, 4.0, np.nan, 1.0])
    seen = np.array([True, True, True, True, False, False])
    w = focal_loss_weights(loss, 2.0, seen)
    raw = (1 - np.exp(-loss[:4])) ** 2
    np.testing.assert_allclose(w[:4], raw / raw.mean(), rtol=1e-12)
    assert w[4] == 1.0 and w[5] == 1.0  # not seen: unchanged
    assert np.isclose(w[seen].mean(), 1.0)
    assert (np.diff(w[:4]) > 0).all()  # harder (lower probability) samples weigh more
    assert focal_loss_weights(loss, 0.0, seen).tolist() == [1.0] * 6


def test_first_epoch_reference_waits_for_a_later_epoch():
    epoch_sum = {0: np.array([6.0, 2.0, 0.0, 0.0]), 1: np.array([1.0, 0.0, 3.0, 2.0]),
                 2: np.array([0.0, 0.0, 1.0, 0.0])}
    epoch_count = {0: np.array([2, 1, 0, 0]), 1: np.array([1, 0, 1, 1]), 2: np.array([0, 0, 1, 0])}
    ref = first_epoch_reference(epoch_sum, epoch_count, 4)
    # 0: first seen in epoch 0 (mean 3), again in 1; 1: only epoch 0; 2: first in 1 (3), again in 2; 3: only epoch 1.
    np.testing.assert_array_equal(np.isnan(ref), [False, True, False, True])
    assert ref[0] == 3.0 and ref[2] == 3.0


def test_hard_fraction_is_the_mass_above_the_median_score():
    scores = np.array([1.0, 2.0, 3.0, 4.0, 2.5])
    scored = np.array([True, True, True, True, False])
    assert hard_fraction(np.ones(5), scores, scored) == pytest.approx(2 / 5)  # 3 and 4 are above the median 2.5
    assert hard_fraction(np.array([0.0, 0.0, 1.0, 1.0, 0.0]), scores, scored) == pytest.approx(1.0)


# -- the callback on a hand-built context ----------------------------------------------------------------------


def _ctx(loss, *, step=5, max_steps=10, times_seen=None, columns=None):
    n = len(loss)
    stats = SampleStats(n)
    stats.arrays["loss_last"][:] = loss
    seen = np.isfinite(loss) if times_seen is None else np.asarray(times_seen) > 0
    stats.arrays["times_seen"][:] = seen
    rows = np.arange(n)
    index = RowIndex(keys=np.arange(n, dtype=np.uint64), seq_uid=rows, seq_row=rows, n_trained=np.ones(n, np.int32),
                     num_rows=n, packed=False, row_user=rows, num_user_rows=n)
    return PolicyContext(stats=stats, index=index, num_rows=n, step=step, max_steps=max_steps, epoch=0, dataset=None,
                         args=None, eval_results={}, columns=columns)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "softmax"}, "mode must be one of"),
        ({"selection_pressure": 1.0}, "selection_pressure"),
        ({"selection_pressure": float("inf")}, "selection_pressure"),
        ({"alpha": 0}, "alpha"),
        ({"warmup": 1.5}, "fraction of training in"),
        ({"warmup": -1}, "warmup in steps"),
        ({"warmup": True}, "warmup must be"),
        ({"max_weight_ratio": 0.5}, "max_weight_ratio"),
        ({"reducible": True}, "ambiguous"),
        ({"reducible": 3}, "reducible must be"),
        ({"group_column": ""}, "group_column"),
        ({"loss_weighting": "yes"}, "loss_weighting"),
        ({"focal_gamma": -1.0}, "focal_gamma"),
        ({"update_every": 0}, "update_every"),
        ({"update_every": 1.5}, "update_every"),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HardExampleMiningCallback(**kwargs)


def test_loss_weighting_and_columns_are_declared_per_instance():
    plain = HardExampleMiningCallback()
    weighted = HardExampleMiningCallback(loss_weighting=True, reducible="ref", group_column="domain")
    assert plain.needs_loss_weighting is False and weighted.needs_loss_weighting is True
    assert HardExampleMiningCallback.needs_loss_weighting is False
    assert plain.required_columns() == [] and weighted.required_columns() == ["ref", "domain"]
    assert HardExampleMiningCallback(reducible="first_epoch").required_columns() == []
    with pytest.raises(TypeError):
        HardExampleMiningCallback("rank")  # keyword-only


def test_warmup_then_every_kth_sync_point_with_state_round_trip():
    loss = np.linspace(1.0, 4.0, 8)
    cb = HardExampleMiningCallback(warmup=0.3, update_every=3, loss_weighting=True)
    acted = []
    for step in range(1, 11):
        ctx = _ctx(loss, step=step, max_steps=10)
        lw = cb.policy_loss_weights(ctx, "step")  # asked first, as the session does; same decision
        sw = cb.compute_weights(ctx, "step")
        assert (lw is None) == (sw is None)
        acted.append(sw is not None)
        if step == 5:
            saved = cb.policy_state()
    # Warm-up over at step 3 (progress 0.3); then acts at the 1st, 4th, 7th... sync point after it.
    assert acted == [False, False, True, False, False, True, False, False, True, False]
    assert cb.policy_metrics()["sft/hard/active"] == 1.0
    resumed = HardExampleMiningCallback(warmup=0.3, update_every=3, loss_weighting=True)
    resumed.load_policy_state(saved)
    assert [resumed.compute_weights(_ctx(loss, step=s), "step") is not None for s in range(6, 11)] == acted[5:]
    steps = HardExampleMiningCallback(warmup=4)  # an int: optimizer steps
    acted = [steps.compute_weights(_ctx(loss, step=s, max_steps=1000), "step") is not None for s in (3, 4)]
    assert acted == [False, True]


def test_callback_weights_are_the_pure_pipeline():
    loss = np.array([0.5, 2.0, np.nan, 1.0, 3.0, 0.2])
    columns = datasets.Dataset.from_dict({"g": ["a", "a", "a", "b", "b", "b"], "ref": [0.0, 1.9, 1.0, None, 0.0, 0.0]})
    cb = HardExampleMiningCallback(warmup=0, mode="power", alpha=2.0, max_weight_ratio=4.0)
    w = cb.compute_weights(_ctx(loss, columns=columns), "step")
    scores = hardness_scores(loss)
    np.testing.assert_allclose(w, cap_ratio(power_weights(scores, 2.0), 4.0))
    m = cb.policy_metrics()
    assert m["sft/hard/max_min_ratio"] == pytest.approx(4.0) and m["sft/hard/seen_fraction"] == pytest.approx(5 / 6)
    # Groups and a reference column (None = unknown reference: scored at the mean).
    cb = HardExampleMiningCallback(warmup=0, reducible="ref", group_column="g", max_weight_ratio=None)
    w = cb.compute_weights(_ctx(loss, columns=columns), "step")
    ref = np.array([0.0, 1.9, 1.0, np.nan, 0.0, 0.0])
    expected = group_normalise(rank_weights(hardness_scores(loss, ref), 10.0), columns["g"])
    np.testing.assert_allclose(w, expected)
    assert cb.policy_metrics()["sft/hard/scored_fraction"] == pytest.approx(4 / 6)
    bad = datasets.Dataset.from_dict({"ref": ["high", "low", "x", "y", "z", "w"]})
    with pytest.raises(ValueError, match="numeric column of reference"):
        HardExampleMiningCallback(warmup=0, reducible="ref").compute_weights(_ctx(loss, columns=bad), "step")


def test_nothing_before_anything_is_seen():
    cb = HardExampleMiningCallback(warmup=0, loss_weighting=True)
    ctx = _ctx(np.full(4, np.nan))
    assert cb.policy_loss_weights(ctx, "train_begin") is None and cb.compute_weights(ctx, "train_begin") is None


# -- real SFTTrainer runs --------------------------------------------------------------------------------------


class Recorded(HardExampleMiningCallback):
    """Records what the policy returned at each call: ``(ctx.step, reason, weights or None)``."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls, self.loss_calls = [], []

    def compute_weights(self, ctx, reason):
        w = super().compute_weights(ctx, reason)
        self.calls.append((ctx.step, reason, None if w is None else w.copy()))
        return w

    def policy_loss_weights(self, ctx, reason):
        w = super().policy_loss_weights(ctx, reason)
        self.loss_calls.append((ctx.step, reason, None if w is None else w.copy()))
        return w


class BalanceDomains(SamplingPolicyCallback):
    """Every domain gets the same sampling mass (inverse frequency): a stand-in for a mixture policy."""

    def required_columns(self):
        return ["domain"]

    def compute_weights(self, ctx, reason):
        _, inverse, counts = np.unique(np.asarray(ctx.column("domain")), return_inverse=True, return_counts=True)
        return 1.0 / counts[inverse]


def _config(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=4, learning_rate=0.0, report_to=[],
        use_cpu=True, save_strategy="no", logging_steps=4, max_length=96, seed=0, **checkpointing_off(),
    )
    base.update(kw)
    return SFTConfig(**base)


def _run(tmp_path, tokenizer, make_model, callbacks, data, resume=None, **kw):
    """Train; return the trainer and the dataloader rows of every training micro-batch."""
    model = make_model()
    trainer = SFTTrainer(model=model, args=_config(tmp_path, **kw), train_dataset=data, processing_class=tokenizer,
                         callbacks=callbacks)
    batches = []

    def record(module, args, kwargs, output):
        if module.training:
            index = callbacks[0].session.tracker.index
            keys = padded_keys(kwargs["input_ids"], kwargs["labels"], kwargs.get("attention_mask"))
            uid_to_row = np.empty(len(index.keys), dtype=np.int64)
            uid_to_row[index.seq_uid] = index.seq_row
            batches.append(uid_to_row[index.lookup(keys.numpy().view(np.uint64))].tolist())

    handle = model.register_forward_hook(record, with_kwargs=True)
    trainer.train(resume_from_checkpoint=resume)
    handle.remove()
    return trainer, batches


def _row_scores(session, reference=None):
    stats, index = session.tracker.stats, session.tracker.index
    scores = hardness_scores(stats.loss_last, reference, stats.times_seen)
    return scores[index.row_uid()], (stats.times_seen > 0)[index.row_uid()]


def test_rank_mode_draws_hard_samples_more_after_warmup_and_not_before(tmp_path, tokenizer, make_model):
    data = sft_rows(64)
    policy = Recorded(warmup=4, selection_pressure=10.0)
    trainer, batches = _run(tmp_path, tokenizer, make_model, [TrainingDynamicsCallback(sync_every=1), policy], data,
                            max_steps=24, logging_steps=2)
    session = policy.session
    assert all(w is None for step, _, w in policy.calls if step < 4)
    assert all(w is not None for step, _, w in policy.calls if step >= 4)
    # Before the weights decided at step 4 take effect (micro-batch 4 + lag), the stream is the uniform one.
    n = len(session.dataset)
    change = (4 + session.lag_micro_batches) * 4
    flat = [r for b in batches for r in b]
    assert flat[:change] == AdaptiveSampler(n, seed=0).draw(0, change).tolist()
    # After it, every draw follows the weights the policy returned: weights returned at the end of step k are drawn
    # from micro-batch k + lag (batches of 4, epochs of whole batches: stream position 4 * (k + lag)).
    replay = AdaptiveSampler(n, seed=0)
    for step, _, w in policy.calls:
        if w is not None:
            replay.schedule(combine_weights([("hard", w)], n), 4 * (step + session.lag_micro_batches))
    assert flat == replay.draw(0, len(flat)).tolist()
    # The weights in force: monotone in the latest loss, hardest/easiest exactly the selection pressure.
    w = session.sampler.current_weights.astype(np.float64)
    scores, seen = _row_scores(session)
    order = np.argsort(-scores, kind="stable")
    assert (np.diff(w[order]) <= 1e-6 * w.max()).all()
    assert np.isclose(w.max() / w.min(), 10.0, rtol=1e-5)
    # With a frozen model (learning_rate=0) a row's loss is fixed: after the change the harder half of the rows
    # is drawn more often than the easier half (unseen rows are drawn at the mean score's rank meanwhile).
    ranked = order[np.isin(order, np.flatnonzero(seen))]
    counts = np.bincount(flat[change:], minlength=n)
    half = len(ranked) // 2
    assert counts[ranked[:half]].sum() > 1.5 * counts[ranked[half:]].sum()
    metrics = policy.policy_metrics()
    assert metrics["sft/hard/active"] == 1.0 and metrics["sft/hard/fraction"] > 0.6
    logged = [h for h in trainer.state.log_history if "sft/hard/active" in h]
    assert [h["sft/hard/active"] for h in logged] == [0.0] + [1.0] * (len(logged) - 1)  # step 2: still warming up


def test_power_mode_cap_holds_on_the_samplers_weights(tmp_path, tokenizer, make_model):
    data = sft_rows(64)
    # A random model's losses lie close together: a large alpha spreads them past the cap.
    policy = HardExampleMiningCallback(mode="power", alpha=30.0, max_weight_ratio=3.0, warmup=0.2)
    _run(tmp_path, tokenizer, make_model, [TrainingDynamicsCallback(sync_every=2), policy], data, max_steps=10,
         learning_rate=1e-3)
    session = policy.session
    stats, index = session.tracker.stats, session.tracker.index
    raw = power_weights(hardness_scores(stats.loss_last, None, stats.times_seen), 30.0)
    assert raw.max() / raw.min() > 3.0  # the cap binds
    expected = cap_ratio(raw[index.row_uid()], 3.0)
    w = session.sampler.current_weights.astype(np.float64)
    np.testing.assert_allclose(w / w.sum(), expected / expected.sum(), rtol=1e-5)
    assert w.max() / w.min() <= 3.0 * (1 + 1e-5)


def test_group_column_keeps_the_shares_of_a_balance_policy(tmp_path, tokenizer, make_model):
    data = sft_rows(64)
    policy = HardExampleMiningCallback(group_column="domain", max_weight_ratio=4.0, warmup=2)
    _run(tmp_path, tokenizer, make_model, [TrainingDynamicsCallback(sync_every=1), BalanceDomains(), policy], data,
         max_steps=10)
    session = policy.session
    domains = np.asarray(session.columns["domain"])
    w = session.sampler.current_weights.astype(np.float64)
    w /= w.sum()
    names = np.unique(domains)
    assert len(names) >= 4
    for d in names:  # each domain keeps the balance policy's equal share of the mass...
        assert np.isclose(w[domains == d].sum(), 1 / len(names), rtol=1e-5)
    hard = session.last_policy_weights[policy.policy_name]
    scores, _ = _row_scores(session)
    for d in np.unique(domains):  # ... while inside it the harder rows weigh more
        sel = domains == d
        assert np.isclose(hard[sel].mean(), 1.0)
        order = np.argsort(-scores[sel], kind="stable")
        assert (np.diff(hard[sel][order]) <= 1e-9).all()
    assert hard.max() / hard.min() <= 4.0 * (1 + 1e-9)


def test_reducible_mode_with_a_reference_column(tmp_path, tokenizer, make_model):
    data = sft_rows(64)
    data = data.add_column("ref_loss", [100.0 if u % 2 else 0.0 for u in data["uid"]])  # odd rows: nothing reducible
    policy = HardExampleMiningCallback(reducible="ref_loss", warmup=2)
    _run(tmp_path, tokenizer, make_model, [TrainingDynamicsCallback(sync_every=1), policy], data, max_steps=8)
    session = policy.session
    ref_rows = np.asarray(session.columns["ref_loss"])
    index = session.tracker.index
    reference = np.empty(len(index.keys))
    reference[index.row_uid()] = ref_rows
    stats = session.tracker.stats
    expected = cap_ratio(rank_weights(hardness_scores(stats.loss_last, reference, stats.times_seen), 10.0), 20.0)
    w = session.sampler.current_weights.astype(np.float64)
    np.testing.assert_allclose(w / w.sum(), expected[index.row_uid()] / expected.sum(), rtol=1e-5)
    seen = (stats.times_seen > 0)[index.row_uid()]
    odd, even = seen & (ref_rows > 0), seen & (ref_rows == 0)
    assert odd.any() and even.any()
    assert np.ptp(w[odd]) == 0 and w[even].min() > w[odd].max()  # all at the floor, below every reducible row


def test_first_epoch_reference_acts_from_the_second_epoch(tmp_path, tokenizer, make_model):
    data = sft_rows(64)  # 56 rows once prepared: 14 steps per epoch
    policy = Recorded(reducible="first_epoch", warmup=0)
    _run(tmp_path, tokenizer, make_model, [TrainingDynamicsCallback(sync_every=1), policy], data, max_steps=18,
         learning_rate=1e-3)
    first = min(step for step, _, w in policy.calls if w is not None)
    assert first == policy.session.steps_per_epoch + 1  # the first sync point with observations from epoch 1
    stats, index = policy.session.tracker.stats, policy.session.tracker.index
    reference = first_epoch_reference(stats.epoch_sum, stats.epoch_count, stats.size)
    expected = cap_ratio(rank_weights(hardness_scores(stats.loss_last, reference, stats.times_seen), 10.0), 20.0)
    np.testing.assert_allclose(policy.calls[-1][2], expected[index.row_uid()], rtol=1e-9)


def test_focal_loss_weighting_changes_the_logged_loss_exactly(tmp_path, tokenizer, make_model):
    data = sft_rows(64)
    policy = Recorded(loss_weighting=True, focal_gamma=2.0, warmup=2)
    dynamics = TrainingDynamicsCallback(sync_every=1)
    model = make_model()
    # Train a little first, so the samples' losses (and hence their focal weights) differ; then freeze (lr 0).
    SFTTrainer(model=model, args=_config(tmp_path / "pre", learning_rate=1e-2, per_device_train_batch_size=8),
               train_dataset=data, processing_class=tokenizer).train()
    # Two epochs: the sampler visits each row once per epoch, so only the second epoch trains on rows whose loss
    # (and hence focal weight) is known.
    trainer = SFTTrainer(model=model, args=_config(tmp_path, max_steps=14, gradient_accumulation_steps=2,
                                                   logging_steps=1),
                         train_dataset=data, processing_class=tokenizer, callbacks=[dynamics, policy])
    seen = record_micro_batches(model, dynamics)  # registered before training: runs before ours
    trainer.train()
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    expected, plain = [], []
    for step in range(1, 15):
        nll, ntok, uid = (np.concatenate(x) for x in zip(*seen[2 * (step - 1) : 2 * step]))
        in_force = [w for s, _, w in policy.loss_calls if s <= step - 1 and w is not None]
        weights = in_force[-1][uid] if in_force else np.ones(len(uid))
        expected.append((weights * nll).sum() / ntok.sum())  # the Trainer: token sum over the whole optimizer step
        plain.append(nll.sum() / ntok.sum())
    np.testing.assert_allclose(logged, expected, rtol=1e-5, atol=LOGGED_LOSS_ATOL)
    np.testing.assert_allclose(logged[:2], plain[:2], rtol=1e-5, atol=LOGGED_LOSS_ATOL)  # warm-up: unweighted
    assert not np.allclose(logged[2:], plain[2:], rtol=1e-3)  # weights decided at step 2 apply from step 3
    stats = dynamics.session.tracker.stats
    np.testing.assert_allclose(policy.loss_calls[-1][2], focal_loss_weights(stats.loss_last, 2.0, stats.times_seen > 0))


def test_resume_continues_the_update_schedule(tmp_path, tokenizer, make_model):
    data = sft_rows(64)
    kw = dict(max_steps=12, save_strategy="steps", save_steps=6, learning_rate=1e-3)
    full_cbs = [TrainingDynamicsCallback(sync_every=1), HardExampleMiningCallback(warmup=2, update_every=3)]
    _, full = _run(tmp_path / "a", tokenizer, make_model, full_cbs, data, **kw)
    resumed_cbs = [TrainingDynamicsCallback(sync_every=1), HardExampleMiningCallback(warmup=2, update_every=3)]
    _, resumed = _run(tmp_path / "b", tokenizer, make_model, resumed_cbs, data,
                      resume=str(tmp_path / "a" / "checkpoint-6"), **kw)
    assert resumed == full[6:]
    a = [cb for cb in full_cbs[0].session.members if isinstance(cb, HardExampleMiningCallback)][0]
    b = [cb for cb in resumed_cbs[0].session.members if isinstance(cb, HardExampleMiningCallback)][0]
    assert (a.sync_points, a.updates) == (b.sync_points, b.updates) and a.updates >= 3
    np.testing.assert_allclose(b.session.sampler.current_weights, a.session.sampler.current_weights, rtol=1e-5)
