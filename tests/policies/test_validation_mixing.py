"""The validation-guided update rules: the pure functions of ``policies/mixing.py`` on arrays, and the
default callback on a real SFTTrainer run with a large easy group, a rare learnable group and a pure-noise group."""

from __future__ import annotations

import doctest
import json

import datasets
import numpy as np
import pytest
from trl import SFTConfig, SFTTrainer

from sft_callbacks.policies import mixing
from sft_callbacks.policies.groups import group_ids, row_group_shares
from sft_callbacks.policies.mixing import (
    exp3_update,
    fresh_loss_slopes,
    geometric_step,
    group_loss_stats,
    log_law_slopes,
    scaling_shares,
    shrink_slopes,
    softmax_shares,
    transfer_matrix,
)
from sft_callbacks.policies.validation import ValidationGuidedResamplingCallback
from sft_callbacks.policies.validation_config import DEFAULT_METHOD
from sft_callbacks.engine.compat import checkpointing_off


def test_module_examples_hold():
    failures, tried = doctest.testmod(mixing, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried >= 9 and failures == 0


def test_group_loss_stats_token_weighted_mean_and_standard_error():
    loss = np.array([1.0, 2.0, 4.0, np.nan, 3.0, 5.0])
    group = np.array([0, 0, 0, 0, 1, -1])
    tok = np.array([1, 1, 2, 5, 3, 1])
    mean, se, tokens = group_loss_stats(loss, group, tok, 3)
    assert mean[0] == pytest.approx((1 + 2 + 8) / 4) and mean[1] == 3.0 and np.isnan(mean[2])
    assert tokens.tolist() == [4.0, 3.0, 0.0]
    # Kish effective size n_eff = (Σw)² / Σw² = 16 / 6; SE = sqrt(weighted variance / (n_eff - 1)).
    var = (1 * (1 - 2.75) ** 2 + 1 * (2 - 2.75) ** 2 + 2 * (4 - 2.75) ** 2) / 4
    assert se[0] == pytest.approx(np.sqrt(var / (16 / 6 - 1)))
    assert np.isnan(se[1]) and np.isnan(se[2])  # one row: no spread to measure


def test_log_law_slopes_recover_the_law_and_report_the_misfit():
    n = np.array([[10.0, 10.0], [20.0, 40.0], [40.0, 160.0], [80.0, 640.0]])
    clean = np.stack([3.0 - 0.5 * np.log(n[:, 0]), 2.0 + 0.1 * np.log(n[:, 1])], axis=1)
    slope, se = log_law_slopes(n, clean)
    np.testing.assert_allclose(slope, [-0.5, 0.1], atol=1e-12)
    np.testing.assert_allclose(se, 0.0, atol=1e-9)
    noisy = clean + np.array([[0.1, 0.0], [-0.1, 0.0], [0.1, 0.0], [-0.1, 0.0]])
    slope, se = log_law_slopes(n, noisy)
    assert se[0] > 0.05 and se[1] == pytest.approx(0.0, abs=1e-9)
    # Known per-point errors are propagated; a group with one usable point has no slope.
    slope, se = log_law_slopes(n[:2], clean[:2], np.full((2, 2), 0.1))
    assert se[0] == pytest.approx(np.sqrt(2) * 0.1 / np.log(2))
    slope, _ = log_law_slopes(np.array([[0.0, 5.0], [10.0, 5.0]]), np.array([[1.0, 1.0], [0.5, 0.8]]))
    assert np.isnan(slope).all()  # group 0: draws 0 has no log; group 1: no change in draws


def test_shrink_slopes_keeps_clear_differences_and_pools_noise():
    slopes = np.array([-1.0, -0.2, 0.3, np.nan])
    errors = np.array([0.05, 2.0, 0.01, np.nan])
    w = np.array([0.25, 0.25, 0.25, 0.25])
    out = shrink_slopes(slopes, errors, w)
    mean = (-1.0 - 0.2 + 0.3) / 3
    assert out[1] == pytest.approx(mean)  # its error dwarfs its difference: the common slope
    assert abs(out[0] - (-1.0)) < 0.01 and abs(out[2] - 0.3) < 0.001  # clear differences are kept
    assert out[3] == pytest.approx(mean)  # no slope at all: the common one


def test_scaling_shares_follow_target_times_learnability():
    target = np.array([0.2, 0.3, 0.5])
    shares = scaling_shares(target, np.array([-1.0, -0.5, -0.1]))
    raw = target * np.array([1.0, 0.5, 0.1])
    np.testing.assert_allclose(shares, raw / raw.sum())
    # A group whose loss does not fall gets nothing, whatever its target weight.
    assert scaling_shares(target, np.array([-1.0, -0.5, 0.2]))[2] == 0.0
    assert scaling_shares(target, np.array([0.0, 0.1, np.nan])) is None


def test_geometric_step_moves_part_way_and_respects_the_floor():
    m = np.array([0.6, 0.3, 0.1])
    p = np.array([0.1, 0.1, 0.8])
    np.testing.assert_allclose(geometric_step(m, p, 0.0, 0.0), m)
    np.testing.assert_allclose(geometric_step(m, p, 1.0, 0.0), p)
    half = geometric_step(m, p, 0.5, 0.0)
    expect = np.sqrt(m * p) / np.sqrt(m * p).sum()
    np.testing.assert_allclose(half, expect)
    starved = geometric_step(m, np.array([0.0, 0.5, 0.5]), 1.0, 0.05)
    assert starved.min() == pytest.approx(0.05) and starved.sum() == pytest.approx(1.0)


def test_exp3_rewards_loss_decrease_per_drawn_share():
    lw = exp3_update(np.zeros(3), np.array([1.0, 1.0, 1.0]), np.array([0.8, 0.8, 1.2]),
                     np.array([0.1, 0.5, 0.4]), np.array([1 / 3, 1 / 3, 1 / 3]), lr=2.0)
    # The same decrease earned with a fifth of the draws is worth five times as much; a rise is a penalty.
    assert lw[0] == pytest.approx(5 * lw[1]) and lw[2] < 0
    shares = softmax_shares(lw, np.ones(3) / 3, explore=0.0, min_share=0.0)
    assert np.argmax(shares) == 0 and shares.sum() == pytest.approx(1.0)
    assert np.isfinite(exp3_update(np.zeros(2), np.array([np.nan, 1.0]), np.array([1.0, 0.5]), np.array([0.0, 1.0]),
                                   np.ones(2) / 2, lr=1.0)).all()


def test_exp3_with_min_evidence_moves_only_on_changes_beyond_the_evaluations_noise():
    from sft_callbacks.policies.mixing_rules import Exp3Rule, MixingState, evidence_z

    def state(loss_after, se):
        history = [{"draws": [0, 0], "loss": [1.0, 1.0], "se": [se, se]},
                   {"draws": [50, 50], "loss": loss_after, "se": [se, se]}]
        return MixingState(mixture=np.array([0.5, 0.5]), prior=np.array([0.5, 0.5]), target=np.array([0.5, 0.5]),
                           history=history, losses=np.asarray(loss_after), updates=1)

    # falls of 0.7 and 2.1 standard errors (errors combined over the two evaluations)
    z = evidence_z({"se": [0.1, 0.1]}, {"se": [0.1, 0.1]}, np.array([1.0, 1.0]), np.array([0.9, 0.7]))
    assert z.round(2).tolist() == [0.71, 2.12]
    quiet = Exp3Rule(1.0, 1e-3, 0.0, min_evidence=2.0).after_evaluation(state([0.9, 0.9], 0.1))
    assert np.allclose(quiet.mixture, [0.5, 0.5])  # neither fall is beyond two standard errors: nothing moves
    loud = Exp3Rule(1.0, 1e-3, 0.0, min_evidence=2.0).after_evaluation(state([0.9, 0.7], 0.1))
    plain = Exp3Rule(1.0, 1e-3, 0.0).after_evaluation(state([0.9, 0.7], 0.1))
    assert loud.mixture[1] > 0.5 and loud.mixture[1] > plain.mixture[1] - 1e-12  # only the sure fall is rewarded
    assert plain.mixture[0] > loud.mixture[0]  # without the gate the noisy fall earns some share too
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="min_evidence must be"):
            ValidationGuidedResamplingCallback(group_column="g", min_evidence=bad)
    with pytest.raises(ValueError, match="min_evidence is an option of method='exp3'"):
        ValidationGuidedResamplingCallback(group_column="g", method="aioli", min_evidence=2.0)


def test_fresh_loss_slopes_use_only_first_visits_and_stop_when_rows_run_out():
    # Group 0: first-visit loss 3, 2, 1 per doubling of draws; group 1 ran out of unseen rows after one interval.
    pts = [
        {"draws": [10.0, 10.0], "fresh_sum": [0.0, 0.0], "fresh_sq": [0.0, 0.0], "fresh_count": [0.0, 0.0]},
        {"draws": [20.0, 20.0], "fresh_sum": [30.0, 20.0], "fresh_sq": [90.0, 40.0], "fresh_count": [10.0, 10.0]},
        {"draws": [40.0, 40.0], "fresh_sum": [50.0, 20.0], "fresh_sq": [130.0, 40.0], "fresh_count": [20.0, 10.0]},
        {"draws": [80.0, 80.0], "fresh_sum": [60.0, 21.0], "fresh_sq": [140.0, 41.0], "fresh_count": [30.0, 11.0]},
    ]
    slope, se = fresh_loss_slopes(pts)
    assert slope[0] * np.log(2) == pytest.approx(-1.0)
    assert se[0] == pytest.approx(0.0, abs=1e-9)
    assert np.isnan(slope[1])
    assert np.isnan(fresh_loss_slopes(pts[:2])[0]).all()


def test_transfer_matrix_recovers_the_mixing_law_with_data_and_falls_back_to_the_prior():
    rng = np.random.default_rng(0)
    a_true = np.array([[1.0, 0.3, 0.0], [0.0, 0.5, 0.0], [0.2, 0.0, 0.1]])
    x = rng.dirichlet(np.ones(3), size=40)
    y = x @ a_true.T
    np.testing.assert_allclose(transfer_matrix(x, y, ridge=1e-6), a_true, atol=1e-4)
    # One interval cannot separate nine coefficients: the pooled own-group + common prior dominates.
    few = transfer_matrix(x[:1], y[:1], ridge=10.0)
    off, diag = few[~np.eye(3, dtype=bool)], np.diag(few)
    assert np.ptp(off) < 0.05 and np.ptp(diag) < 0.05 and diag.min() > off.max()


def test_bad_method_and_target_are_refused():
    with pytest.raises(ValueError, match="method must be one of"):
        ValidationGuidedResamplingCallback(group_column="g", method="greedy")
    with pytest.raises(ValueError, match="target must be 'eval' or a dict"):
        ValidationGuidedResamplingCallback(group_column="g", target="train")
    with pytest.raises(ValueError, match="target weights must be finite"):
        ValidationGuidedResamplingCallback(group_column="g", target={"a": -1.0})
    with pytest.raises(ValueError, match="step fraction in \\[0, 1\\]"):
        ValidationGuidedResamplingCallback(group_column="g", method="scaling", learning_rate=2.0)
    assert ValidationGuidedResamplingCallback(group_column="g", reference={"a": 1.0}).config.method == "doremi"
    assert ValidationGuidedResamplingCallback(group_column="g").config.method == DEFAULT_METHOD


# ---------------------------------------------------------------------------------------------------------------
# a real SFTTrainer run: large easy group, rare learnable group, pure noise
# ---------------------------------------------------------------------------------------------------------------

_JUNK = list("qxzjvkwy")


def _three_groups(seed: int = 0) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Train: 160 easy rows (one short answer), 20 rare rows (a longer answer: learnable, but lags at its natural
    share), 40 noise rows (random letters). Validation: 8 rows per group; the noise group's validation answers are
    its true answers, which no training row teaches (training on its junk does not help them)."""
    rng = np.random.default_rng(seed)

    def rows(n_easy, n_rare, n_noise, val):
        out = [{"prompt": f"Greet number {i}.", "completion": " hello there friend", "group": "easy"}
               for i in range(n_easy)]
        out += [{"prompt": f"Recite item {i}.", "completion": " seven lemons and a blue kettle sing", "group": "rare"}
                for i in range(n_rare)]
        for i in range(n_noise):
            junk = " " + " ".join("".join(rng.choice(_JUNK, 5)) for _ in range(4))
            out.append({"prompt": f"Code {i}.", "completion": " nine pears in a green cup" if val else junk,
                        "group": "noise"})
        return datasets.Dataset.from_list(out)

    return rows(160, 20, 40, False), rows(8, 8, 8, True)


def test_default_moves_draws_to_the_rare_learnable_group_and_away_from_noise(tmp_path, tokenizer, make_model):
    train, val = _three_groups()
    # No repetition budget: this run is short, and 4 passes would hold the rare group at about 2x its share.
    guide = ValidationGuidedResamplingCallback(group_column="group", max_passes=None)
    args = SFTConfig(output_dir=str(tmp_path), max_steps=48, per_device_train_batch_size=8, learning_rate=3e-3,
                     report_to=[], use_cpu=True, save_strategy="no", logging_steps=8, max_length=64, seed=0,
                     **checkpointing_off(), eval_strategy="steps", eval_steps=8, per_device_eval_batch_size=8,
                     disable_tqdm=True)
    trainer = SFTTrainer(model=make_model(), args=args, train_dataset=train, eval_dataset=val,
                         processing_class=tokenizer, callbacks=[guide])
    trainer.train()
    names = guide.group_names
    assert names == ["easy", "noise", "rare"] and guide.updates == 6
    ids, _ = group_ids(guide.session.columns["group"])
    natural = dict(zip(names, np.bincount(ids) / len(ids)))
    final = guide.mixture_dict()
    # It starts from the validation mix (a third each) and learns from the losses: the rare group ends far above
    # its natural share, the noise group (its validation loss rises with its draws) well below its natural share
    # (EXP3's exploration keeps a little of the starting mix: sqrt(ln 3 / (3 t)) of it after t updates).
    assert final["rare"] > 3 * natural["rare"], final
    assert final["noise"] < 0.6 * natural["noise"], final
    assert guide.config.method == "exp3" and guide.rule.log_weights[names.index("noise")] < guide.rule.log_weights[names.index("rare")]
    drawn = np.array(guide.history[-1]["draws"]) - np.array(guide.history[2]["draws"])
    assert drawn[names.index("noise")] / drawn.sum() < natural["noise"]  # once three evaluations are in
    # The sampler draws the mixture; the logs say why it moved (gain per drawn row, fitted slope, target).
    w = guide.session.sampler.current_weights
    np.testing.assert_allclose(row_group_shares(w, ids, len(names)), [final[n] for n in names], rtol=1e-4)
    logged = [h for h in trainer.state.log_history if "sft/validation/gain/rare" in h]
    assert logged and {"sft/validation/loss/noise", "sft/validation/target/rare", "sft/validation/mixture/rare"} \
        <= set(logged[-1])
    # Gain = target-loss decrease per drawn row over the last interval: the noise group's loss rose with its draws.
    assert logged[-1]["sft/validation/gain/noise"] < 0 < logged[-1]["sft/validation/gain/rare"]
    # The target weighs each group by its share of the eval tokens (the Trainer's eval loss), not of its rows.
    t = dict(zip(names, guide.target))
    assert sum(t.values()) == pytest.approx(1.0) and t["rare"] > t["noise"] > t["easy"] > 0.1
    # The history is checkpoint state: a restored callback continues from the same mixture and evidence.
    restored = ValidationGuidedResamplingCallback(group_column="group")
    restored.load_policy_state(json.loads(json.dumps(guide.policy_state())))
    assert restored.mixture_dict() == pytest.approx(final)
    assert restored.history == guide.history and restored.target.tolist() == pytest.approx(guide.target.tolist())
    other = ValidationGuidedResamplingCallback(group_column="group", method="scaling")
    with pytest.raises(ValueError, match="resume with the same method"):
        other.load_policy_state(guide.policy_state())


@pytest.mark.parametrize("method", ["scaling", "learnability", "aioli", "doremi"])
def test_every_rule_runs_in_a_real_trainer_and_round_trips(tmp_path, tokenizer, make_model, method):
    train, val = _three_groups()
    # The rule alone: a group whose loss stalls in this short run would otherwise be withdrawn to its natural share.
    guide = ValidationGuidedResamplingCallback(group_column="group", method=method, max_passes=None,
                                               stall_patience=None)
    args = SFTConfig(output_dir=str(tmp_path), max_steps=32, per_device_train_batch_size=8, learning_rate=3e-3,
                     report_to=[], use_cpu=True, save_strategy="no", logging_steps=8, max_length=64, seed=0,
                     **checkpointing_off(), eval_strategy="steps", eval_steps=8,
                     per_device_eval_batch_size=8, disable_tqdm=True)
    trainer = SFTTrainer(model=make_model(), args=args, train_dataset=train, eval_dataset=val,
                         processing_class=tokenizer, callbacks=[guide])
    trainer.train()
    names = guide.group_names
    ids, _ = group_ids(guide.session.columns["group"])
    start = np.bincount(ids) / len(ids) if method == "doremi" else np.full(3, 1 / 3)  # natural / the eval mix
    final = np.array([guide.mixture_dict()[n] for n in names])
    assert guide.updates == 4 and [h["step"] for h in guide.history] == [8, 16, 24, 32]
    assert np.abs(final - start).max() > 0.02, (method, final)
    np.testing.assert_allclose(row_group_shares(guide.session.sampler.current_weights, ids, 3), final, rtol=1e-4)
    if method == "learnability":  # it also updates between evaluations, at the tracker's sync points
        assert len(guide.rule.train_points) == 5 and guide.rule.train_points[-1]["step"] == 32
    restored = ValidationGuidedResamplingCallback(group_column="group", method=method, max_passes=None,
                                                  stall_patience=None)
    restored.load_policy_state(json.loads(json.dumps(guide.policy_state())))
    assert restored.mixture_dict() == pytest.approx(guide.mixture_dict()) and restored.history == guide.history
    assert restored.rule.state_dict() == guide.rule.state_dict()  # the rule's own state round-trips
