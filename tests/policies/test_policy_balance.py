"""GroupBalanceCallback: the pure share functions, and real SFTTrainer runs (draws at the configured shares)."""

from __future__ import annotations

import numpy as np
import pytest
from trl import SFTConfig, SFTTrainer

from sft_callbacks.policies.balance import (
    GroupBalanceCallback,
    balance_shares,
    group_loss_weights,
    inverse_frequency_shares,
    target_shares,
    temperature_shares,
)
from sft_callbacks.policies.groups import floor_shares, group_ids, row_group_shares, shares_to_row_weights

from ..support.helpers import sft_rows
from ..support.helpers import BatchRecorder
from sft_callbacks.engine.compat import checkpointing_off

# ---------------------------------------------------------------------------------------------------------------
# pure functions
# ---------------------------------------------------------------------------------------------------------------


def test_group_ids_names_are_sorted_strings_and_missing_values_group_together():
    ids, names = group_ids(["math", "code", "math", None, float("nan")])
    assert names == ["None", "code", "math"]
    assert ids.tolist() == [2, 1, 2, 0, 0]
    ids, names = group_ids(np.array([3, 1, 3]))
    assert names == ["1", "3"] and ids.tolist() == [1, 0, 1]


def test_shares_to_row_weights_gives_each_group_its_share():
    ids = np.array([0, 0, 0, 0, 1, 2, 2])
    shares = np.array([0.2, 0.5, 0.3])
    w = shares_to_row_weights(ids, shares)
    assert np.isclose(w.sum(), 1.0)
    np.testing.assert_allclose(np.bincount(ids, weights=w), shares)
    np.testing.assert_allclose(w[:4], 0.05)  # equal within a group
    pref = np.array([1.0, 3.0, 1.0, 1.0, 1.0, 1.0, 2.0])
    wp = shares_to_row_weights(ids, shares, pref)
    np.testing.assert_allclose(np.bincount(ids, weights=wp), shares)  # the preference stays within groups
    assert np.isclose(wp[1] / wp[0], 3.0) and np.isclose(wp[6] / wp[5], 2.0)
    wz = shares_to_row_weights(ids, np.array([0.0, 1.0, 1.0]))
    assert (wz[:4] == 0).all() and np.isclose(wz.sum(), 1.0)
    with pytest.raises(ValueError, match="share 0"):
        shares_to_row_weights(ids, np.array([0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="row_preference"):
        shares_to_row_weights(ids, shares, np.zeros(7))


def test_inverse_frequency_shares():
    counts = np.array([90.0, 9.0, 1.0])
    np.testing.assert_allclose(inverse_frequency_shares(counts, 0.0), counts / 100)  # natural
    np.testing.assert_allclose(inverse_frequency_shares(counts, 1.0), [1 / 3] * 3)  # uniform over groups
    np.testing.assert_allclose(inverse_frequency_shares(counts, 0.5), np.sqrt(counts) / np.sqrt(counts).sum())
    s = inverse_frequency_shares(counts, 2.0)
    assert s[2] > s[1] > s[0]  # past uniform: rare groups first
    np.testing.assert_allclose(inverse_frequency_shares(np.array([4.0, 0.0]), 1.0), [1.0, 0.0])  # no rows, no share
    with pytest.raises(ValueError, match="beta"):
        inverse_frequency_shares(counts, -0.1)


def test_temperature_shares_and_its_equivalence_with_inverse_frequency():
    counts = np.array([81.0, 9.0, 1.0])
    np.testing.assert_allclose(temperature_shares(counts, 1.0), counts / counts.sum())
    np.testing.assert_allclose(temperature_shares(counts, 2.0), [9 / 13, 3 / 13, 1 / 13])
    np.testing.assert_allclose(temperature_shares(counts, 1e6), [1 / 3] * 3, rtol=1e-4)
    for t in (1.0, 2.0, 5.0):
        np.testing.assert_allclose(temperature_shares(counts, t), inverse_frequency_shares(counts, 1 - 1 / t))
    with pytest.raises(ValueError, match="temperature"):
        temperature_shares(counts, 0.0)


def test_target_shares_are_normalised_and_must_name_every_group_exactly():
    names = ["a", "b", "c"]
    np.testing.assert_allclose(target_shares({"a": 2, "b": 1, "c": 1}, names), [0.5, 0.25, 0.25])
    np.testing.assert_allclose(target_shares({1: 1, 2: 3}, ["1", "2"]), [0.25, 0.75])  # keys by string form
    with pytest.raises(ValueError, match=r"no value for groups \['c'\]"):
        target_shares({"a": 1, "b": 1}, names)
    with pytest.raises(ValueError, match=r"names groups \['z'\] that are not in the data"):
        target_shares({"a": 1, "b": 1, "c": 1, "z": 1}, names)
    with pytest.raises(ValueError, match=">= 0"):
        target_shares({"a": -1, "b": 1, "c": 1}, names)
    with pytest.raises(ValueError, match="all zero"):
        target_shares({"a": 0, "b": 0, "c": 0}, names)


def test_floor_shares_is_exact_and_keeps_proportions():
    s = floor_shares(np.array([0.9, 0.07, 0.02, 0.01]), 0.05)
    assert np.isclose(s.sum(), 1.0) and (s >= 0.05 - 1e-12).all()
    np.testing.assert_allclose(s[2:], 0.05)
    assert np.isclose(s[0] / s[1], 0.9 / 0.07)
    np.testing.assert_allclose(floor_shares(np.array([1.0, 3.0]), 0.0), [0.25, 0.75])
    np.testing.assert_allclose(floor_shares(np.array([1.0, 0.0, 0.0]), 1 / 3), [1 / 3] * 3)
    with pytest.raises(ValueError, match="impossible"):
        floor_shares(np.array([1.0, 1.0, 1.0]), 0.4)


def test_balance_shares_dispatches_and_applies_the_floor():
    counts, names = np.array([98.0, 1.0, 1.0]), ["x", "y", "z"]
    np.testing.assert_allclose(balance_shares(counts, names, strategy="inverse_frequency", beta=1.0), [1 / 3] * 3)
    s = balance_shares(counts, names, strategy="target", target={"x": 1, "y": 0, "z": 0}, min_share=0.1)
    np.testing.assert_allclose(s, [0.8, 0.1, 0.1])
    with pytest.raises(ValueError, match="unknown strategy"):
        balance_shares(counts, names, strategy="sqrt")


def test_group_loss_weights_are_share_over_natural_with_mean_one():
    groups = np.array([0, 0, 0, 1])
    w = group_loss_weights(np.array([0.5, 0.5]), np.array([0.75, 0.25]), groups)
    assert np.isclose(w.mean(), 1.0)
    assert np.isclose(w[3] / w[0], (0.5 / 0.25) / (0.5 / 0.75))
    # Expected gradient share of each group equals the target share under natural sampling.
    np.testing.assert_allclose(np.bincount(groups, weights=w) / w.sum(), [0.5, 0.5])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(group_column=""), "group_column"),
        (dict(group_column="domain", strategy="sqrt"), "unknown strategy"),
        (dict(group_column="domain", beta=-1.0), "beta"),
        (dict(group_column="domain", strategy="temperature", temperature=0.0), "temperature"),
        (dict(group_column="domain", strategy="target"), "needs target_shares"),
        (dict(group_column="domain", strategy="target", target_shares={"a": -1.0}), ">= 0"),
        (dict(group_column="domain", strategy="target", target_shares={"a": 0.0}), "all zero"),
        (dict(group_column="domain", target_shares={"a": 1.0}), "only used with strategy='target'"),
        (dict(group_column="domain", min_share=1.0), "min_share"),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GroupBalanceCallback(**kwargs)


# ---------------------------------------------------------------------------------------------------------------
# real SFTTrainer runs
# ---------------------------------------------------------------------------------------------------------------


def _config(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path), max_steps=10, per_device_train_batch_size=8, learning_rate=1e-3, report_to=[],
        use_cpu=True, save_strategy="no", logging_steps=5, max_length=128, seed=0, **checkpointing_off(),
    )
    base.update(kw)
    return SFTConfig(**base)


def test_rare_groups_are_drawn_at_the_configured_share(tmp_path, tokenizer, make_model):
    # logic 23, sarcasm 18, food 10, binary_math 6, science_mcq 5 (radio_exam rows would be truncated away).
    data = sft_rows(64).filter(lambda r: r["domain"] != "radio_exam")
    target = {"logic": 0.1, "sarcasm": 0.1, "food": 0.1, "binary_math": 0.3, "science_mcq": 0.4}
    model = make_model()
    balance = GroupBalanceCallback(group_column="domain", strategy="target", target_shares=target)
    trainer = SFTTrainer(model=model, args=_config(tmp_path, max_steps=24), train_dataset=data,
                         processing_class=tokenizer, callbacks=[balance])
    recorder = BatchRecorder(model, lambda: balance.session)
    trainer.train()
    recorder.handle.remove()
    session = balance.session
    domains = np.asarray(session.columns["domain"])  # per dataloader row
    ids, names = group_ids(domains)
    expected = np.array([target[n] for n in names])
    # The sampler's distribution gives every group exactly its share ...
    np.testing.assert_allclose(row_group_shares(session.sampler.current_weights, ids, len(names)), expected, rtol=1e-5)
    # ... and the rows drawn (after the first batch) match it within binomial sampling error.
    drawn = np.array([r for batch in recorder.batches[1:] for r in batch])
    n = len(drawn)
    assert n > 170  # 62 rows: every epoch ends with a batch of 6
    freq = np.bincount(ids[drawn], minlength=len(names)) / n
    tolerance = 4 * np.sqrt(expected * (1 - expected) / n)
    assert (np.abs(freq - expected) <= tolerance).all(), dict(zip(names, freq.round(3)))
    # The 5 science_mcq rows (8% of the data) make up ~40% of the draws.
    assert freq[names.index("science_mcq")] > 0.3
    # Metrics: the mixture drawn and the target, per group, logged through the Trainer.
    logged = [h for h in trainer.state.log_history if "sft/mixture/science_mcq" in h]
    assert logged and np.isclose(logged[-1]["sft/mixture/science_mcq"], 0.4, rtol=1e-5)
    assert np.isclose(logged[-1]["sft/balance/target/binary_math"], 0.3)


def test_loss_weighting_mode_keeps_natural_sampling_and_weights_the_loss(tmp_path, tokenizer, make_model):
    data = sft_rows(32)
    balance = GroupBalanceCallback(group_column="domain", beta=1.0, loss_weighting=True)
    trainer = SFTTrainer(model=make_model(), args=_config(tmp_path, max_steps=2, learning_rate=0.0),
                         train_dataset=data, processing_class=tokenizer, callbacks=[balance])
    trainer.train()
    session = balance.session
    assert session.sampler is None  # sampling untouched
    weights = session.last_loss_weights[balance.policy_name]
    index = session.tracker.index
    ids, names = group_ids(session.columns["domain"])
    uid_group = np.zeros(len(index.keys), dtype=np.int64)
    uid_group[index.seq_uid] = ids[index.seq_row]
    assert np.isclose(weights.mean(), 1.0)
    # beta=1: uniform over groups, so each group's total loss weight is the same.
    totals = np.bincount(uid_group, weights=weights, minlength=len(names))
    np.testing.assert_allclose(totals, totals.mean(), rtol=1e-6)


def test_missing_group_column_is_refused(tmp_path, tokenizer, make_model):
    trainer = SFTTrainer(model=make_model(), args=_config(tmp_path, max_steps=2), train_dataset=sft_rows(16),
                         processing_class=tokenizer, callbacks=[GroupBalanceCallback(group_column="task")])
    with pytest.raises(ValueError, match=r"GroupBalanceCallback was told to use column\(s\) \['task'\].*'domain'"):
        trainer.train()
