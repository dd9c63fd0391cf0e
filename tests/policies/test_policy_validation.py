"""ValidationGuidedResamplingCallback: the pure functions (group losses, DoReMi update, DSIR, plateau) and real
SFTTrainer runs (the worse validation group gains share; eval without the group column is refused)."""

from __future__ import annotations

import json
import logging
import math
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
from trl import SFTConfig, SFTTrainer

from sft_callbacks.demo_data import load_demo_dataset
from sft_callbacks.policies.balance import GroupBalanceCallback
from sft_callbacks.policies.groups import floor_shares, group_ids, row_group_shares
from sft_callbacks.policies.dsir import dataset_texts, dsir_importance, dsir_log_ratio, hashed_ngram_features
from sft_callbacks.policies.mixing import doremi_update, group_eval_losses, plateau_step
from sft_callbacks.policies.validation import ValidationGuidedResamplingCallback

from ..support.helpers import sft_rows
from sft_callbacks.engine.compat import checkpointing_off

# ---------------------------------------------------------------------------------------------------------------
# pure functions
# ---------------------------------------------------------------------------------------------------------------


def test_group_eval_losses_token_weighted_mean_and_ignored_rows():
    loss = np.array([1.0, 3.0, np.nan, 2.0, 5.0, np.inf])
    groups = np.array([0, 0, 1, 1, -1, 1])
    ntok = np.array([1, 3, 5, 2, 4, 1])
    np.testing.assert_allclose(group_eval_losses(loss, groups, ntok, num_groups=3), [2.5, 2.0, np.nan])
    np.testing.assert_allclose(group_eval_losses(loss, groups), [2.0, 2.0])  # plain mean; NaN/inf/-1 ignored
    with pytest.raises(ValueError, match="group ids"):
        group_eval_losses(loss, groups[:2])


def test_doremi_update_moves_share_to_groups_with_positive_excess():
    a = np.array([0.5, 0.3, 0.2])
    prior = np.array([0.5, 0.3, 0.2])
    out = doremi_update(a, np.array([0.0, 1.0, -2.0]), lr=1.0, smoothing=0.0, prior=prior)
    expected = a * np.exp([0.0, 1.0, 0.0])  # negative excess is clipped to 0
    np.testing.assert_allclose(out, expected / expected.sum())
    assert np.isclose(out.sum(), 1.0) and out[1] > a[1]
    np.testing.assert_allclose(doremi_update(a, np.array([1.0, 2.0, 3.0]), 0.0, 0.0, prior), a)  # lr 0: no move
    np.testing.assert_allclose(doremi_update(a, np.array([1.0, 2.0, 3.0]), 5.0, 1.0, np.ones(3)), [1 / 3] * 3)
    smoothed = doremi_update(a, np.array([9.0, 0.0, 0.0]), 1.0, 0.1, prior)
    raw = doremi_update(a, np.array([9.0, 0.0, 0.0]), 1.0, 0.0, prior)
    np.testing.assert_allclose(smoothed, 0.9 * raw + 0.1 * prior)
    floored = doremi_update(a, np.array([30.0, 0.0, 0.0]), 1.0, 0.0, prior, min_share=0.05)
    assert np.isclose(floored.sum(), 1.0) and np.isclose(floored.min(), 0.05)
    np.testing.assert_allclose(doremi_update(a, np.array([np.nan, 0.0, 0.0]), 1.0, 0.0, prior), a)  # NaN: no signal
    with pytest.raises(ValueError, match="smoothing"):
        doremi_update(a, np.zeros(3), 1.0, 1.5, prior)


def test_plateau_step_fires_after_patience_evaluations_without_improvement():
    best, wait, fired = None, 0, []
    for loss in [3.0, 2.0, 2.5, 2.0, 1.0, 1.5, 1.5, float("nan"), 1.6]:
        best, wait, fire = plateau_step(loss, best, wait, patience=2)
        fired.append(fire)
    assert fired == [False, False, False, True, False, False, True, False, False]
    assert best == 1.0 and wait == 1


def test_hashed_ngram_features_are_deterministic_and_stay_within_a_text():
    rows, buckets = hashed_ngram_features(["The cat, the CAT!", "dog"], num_buckets=1 << 20, ngram=(1, 2))
    assert rows.tolist() == [0, 0, 0, 0, 0, 0, 0, 1]  # 4 unigrams + 3 bigrams, then "dog"; no bigram across texts
    r0 = buckets[rows == 0]
    assert len(set(r0[:4].tolist())) == 2  # "the" and "cat" (lower-cased, punctuation split off)
    rows2, buckets2 = hashed_ngram_features(["The cat, the CAT!", "dog"], num_buckets=1 << 20, ngram=(1, 2))
    assert buckets.tolist() == buckets2.tolist()
    assert hashed_ngram_features(["", "  ,"], 16)[0].size == 0


def _topic_texts(rng, words, n, k=12):
    return [" ".join(rng.choice(words, size=k)) for _ in range(n)]


def test_dsir_weights_prefer_rows_resembling_the_validation_texts():
    rng = np.random.default_rng(0)
    cats = ["cat", "kitten", "purr", "meow", "fur", "whiskers", "the", "a", "is"]
    money = ["stock", "bond", "market", "yield", "price", "dividend", "the", "a", "is"]
    train = _topic_texts(rng, cats, 50) + _topic_texts(rng, money, 50)
    val = _topic_texts(rng, cats, 20)
    w = dsir_importance(train, val, num_buckets=4096)
    assert w.shape == (100,)
    assert w[:50].min() > w[50:].max()  # every cat row preferred to every finance row
    assert w.max() <= math.exp(3.0) + 1e-9 and w.min() >= math.exp(-3.0) - 1e-9  # bounded
    np.testing.assert_allclose(dsir_importance(train, val, num_buckets=4096), w)  # deterministic
    np.testing.assert_allclose(dsir_importance(train, val, num_buckets=4096, strength=0.0), np.ones(100))
    lr = dsir_log_ratio(train, val, num_buckets=4096)
    assert lr[:50].mean() > lr[50:].mean() + 5  # nats: add-one smoothing shifts both, the ranking stays
    # Standardised within groups: each group's rows are ranked against each other, on the same scale.
    groups = np.repeat([0, 1], 50)
    wg = dsir_importance(train, val, num_buckets=4096, groups=groups)
    for g in (0, 1):
        sel = groups == g
        assert (np.diff(wg[sel][np.argsort(lr[sel], kind="stable")]) >= 0).all()  # same order as the log ratio
        assert abs(np.log(wg[sel]).mean()) < 0.2 and np.log(wg[sel]).std() > 0.5
    with pytest.raises(ValueError, match="strength"):
        dsir_importance(train, val, strength=-1.0)


def test_dataset_texts_render_messages_and_string_columns():
    conv = datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": "Is it hot?"}], "completion": [{"role": "assistant", "content": "yes"}]},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2"}],
         "completion": [{"role": "assistant", "content": "4"}]},
    ])
    assert dataset_texts(conv).to_pylist() == ["Is it hot? yes", "Be brief. 2+2 4"]
    assert dataset_texts(conv.select([1, 0])).to_pylist() == ["Be brief. 2+2 4", "Is it hot? yes"]  # row order
    plain = datasets.Dataset.from_dict({"text": ["a b", None], "note": ["x", "y"]})
    assert dataset_texts(plain).to_pylist() == ["a b", ""]
    assert dataset_texts(plain, "note").to_pylist() == ["x", "y"]
    with pytest.raises(ValueError, match="dsir_text_column"):
        dataset_texts(datasets.Dataset.from_dict({"x": [1]}))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(group_column=""), "group_column"),
        (dict(group_column="domain", learning_rate=-1.0), "learning_rate"),
        (dict(group_column="domain", smoothing=2.0), "smoothing"),
        (dict(group_column="domain", min_share=1.0), "min_share"),
        (dict(group_column="domain", reference="best"), "reference"),
        (dict(group_column="domain", reference={"a": float("nan")}), "reference"),
        (dict(group_column="domain", prior="uniform"), "prior"),
        (dict(group_column="domain", prior={"a": -1}), "prior"),
        (dict(group_column="domain", eval_name="validation"), "eval_name"),
        (dict(group_column="domain", dsir_strength=-1.0), "dsir_strength"),
        (dict(group_column="domain", patience=0), "patience"),
        (dict(group_column="domain", boost_step=0.0), "boost_step"),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ValidationGuidedResamplingCallback(**kwargs)


def test_eval_setups_that_cannot_give_group_losses_are_refused():
    cb = ValidationGuidedResamplingCallback(group_column="domain")
    with_group = datasets.Dataset.from_dict({"domain": ["a"]})
    without = datasets.Dataset.from_dict({"other": ["a"]})
    with pytest.raises(ValueError, match="eval_strategy is 'no'"):
        cb._check_eval(SimpleNamespace(eval_strategy="no"), {"eval": with_group})
    with pytest.raises(ValueError, match="needs an eval_dataset"):
        cb._check_eval(SimpleNamespace(eval_strategy="steps"), {})
    with pytest.raises(ValueError, match=r"evaluations are \['eval_a'\]; set eval_name"):
        cb._check_eval(SimpleNamespace(eval_strategy="steps"), {"eval_a": with_group})
    with pytest.raises(ValueError, match=r"group column 'domain' in the eval dataset 'eval'.*\['other'\]"):
        cb._check_eval(SimpleNamespace(eval_strategy="steps"), {"eval": without})


# ---------------------------------------------------------------------------------------------------------------
# real SFTTrainer runs
# ---------------------------------------------------------------------------------------------------------------

DOMAINS = ["logic", "sarcasm", "food", "binary_math", "science_mcq"]  # radio_exam rows exceed max_length


def _train_rows(exclude=("radio_exam",)):
    return sft_rows(64).filter(lambda r: r["domain"] not in exclude)


def _validation_rows(per_domain=3, corrupt=None, domains=DOMAINS):
    val = load_demo_dataset("validation")
    keep = val.select_columns(["domain"]).to_pandas()
    keep = keep[keep.domain.isin(domains)].groupby("domain").head(per_domain).index
    val = val.select(keep).select_columns(["prompt", "completion", "domain"])
    rng = np.random.default_rng(0)
    letters = np.array(list("qxzjvkwy"))

    def garble(row):
        if row["domain"] == corrupt:  # answers nothing can predict: this group's validation loss stays high
            junk = " ".join("".join(rng.choice(letters, 7)) for _ in range(12))
            row["completion"] = [{"role": "assistant", "content": junk}]
        return row

    val = val.map(garble)
    return val.add_column("uid", list(range(len(val))))


def _config(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=8, learning_rate=1e-3, report_to=[],
        use_cpu=True, save_strategy="no", logging_steps=4, max_length=128, seed=0, **checkpointing_off(),
        eval_strategy="steps", eval_steps=8, per_device_eval_batch_size=8,
    )
    base.update(kw)
    return SFTConfig(**base)


def test_group_with_worse_validation_loss_gains_share(tmp_path, tokenizer, make_model):
    train, val = _train_rows(), _validation_rows(corrupt="food")
    guide = ValidationGuidedResamplingCallback(
        group_column="domain", reference={d: 0.0 for d in DOMAINS}, learning_rate=1.0, smoothing=0.0, min_share=0.01,
        dsir=True,
    )
    trainer = SFTTrainer(model=make_model(), args=_config(tmp_path), train_dataset=train, eval_dataset=val,
                         processing_class=tokenizer, callbacks=[guide])
    trainer.train()
    session = guide.session
    names = guide.group_names
    assert names == sorted(DOMAINS)
    ids, _ = group_ids(session.columns["domain"])
    natural = np.bincount(ids, minlength=len(names)) / len(ids)
    before = floor_shares(natural, 0.01)
    after = np.array([guide.mixture_dict()[n] for n in names])
    assert guide.updates == 1

    # The callback's per-group losses are the Trainer's own evaluation, grouped (token-weighted mean).
    frame = guide.eval_dynamics()
    prepared = trainer.eval_dataset
    ntok = {u: sum(x != -100 for x in labels[1:]) for u, labels in zip(prepared["uid"], prepared["labels"])}
    expected = {}
    for d in DOMAINS:
        rows = [i for i, dd in enumerate(val["domain"]) if dd == d]
        w = np.array([ntok[val[i]["uid"]] for i in rows], dtype=float)
        expected[d] = float((frame.loss.to_numpy()[rows] * w).sum() / w.sum())
    np.testing.assert_allclose(guide.last_losses, [expected[n] for n in names], rtol=1e-5)
    worst = names[int(np.argmax(guide.last_losses))]
    assert worst == "food", dict(zip(names, guide.last_losses.round(2)))

    # The worst group gains share (and the most of all); the update is exactly one DoReMi step.
    food = names.index("food")
    assert after[food] > before[food] + 0.05
    assert np.argmax(after / before) == food
    np.testing.assert_allclose(after, doremi_update(before, guide.last_losses, 1.0, 0.0, natural, 0.01), rtol=1e-9)

    # The sampler's distribution gives every group its new share; DSIR only reorders rows within a group.
    w = session.sampler.current_weights
    np.testing.assert_allclose(row_group_shares(w, ids, len(names)), after, rtol=1e-4)
    logic = ids == names.index("logic")
    assert w[logic].max() / w[logic].min() > 1.5

    # Metrics, and the state round-trips through JSON (as in trainer_state.json).
    metrics = guide.policy_metrics()
    assert np.isclose(metrics["sft/mixture/food"], after[food], rtol=1e-4)
    assert np.isclose(metrics["sft/validation/loss/food"], expected["food"], rtol=1e-5)
    assert np.isclose(metrics["sft/validation/excess/food"], expected["food"], rtol=1e-5)
    restored = ValidationGuidedResamplingCallback(group_column="domain", reference={d: 0.0 for d in DOMAINS})
    assert restored.config.method == "doremi"  # reference losses given: DoReMi's excess-loss update
    restored.load_policy_state(json.loads(json.dumps(guide.policy_state())))
    assert restored.mixture_dict() == pytest.approx(guide.mixture_dict())
    np.testing.assert_allclose(restored.rule.reference, guide.rule.reference)
    assert restored.updates == 1


def test_with_group_balance_the_product_rule_composes_the_two_mixtures(tmp_path, tokenizer, make_model):
    train, val = _train_rows(), _validation_rows(per_domain=2, corrupt="food")
    balance = GroupBalanceCallback(group_column="domain", beta=1.0)  # uniform over groups
    guide = ValidationGuidedResamplingCallback(group_column="domain", reference={d: 0.0 for d in DOMAINS})
    trainer = SFTTrainer(model=make_model(), args=_config(tmp_path, max_steps=2, eval_steps=2), train_dataset=train,
                         eval_dataset=val, processing_class=tokenizer, callbacks=[balance, guide])
    trainer.train()
    session = guide.session
    ids, names = group_ids(session.columns["domain"])
    natural = np.bincount(ids) / len(ids)
    p = np.array([balance.shares[names.index(n)] for n in names])
    alpha = np.array([guide.mixture_dict()[n] for n in names])
    effective = p * alpha / natural
    drawn = row_group_shares(session.sampler.current_weights, ids, len(names))
    np.testing.assert_allclose(drawn, effective / effective.sum(), rtol=1e-4)
    # Both report the same drawn mixture under sft/mixture/<group>.
    assert balance.policy_metrics()["sft/mixture/food"] == pytest.approx(guide.policy_metrics()["sft/mixture/food"])


def test_plateau_raises_hard_boost_and_first_eval_is_the_reference(tmp_path, tokenizer, make_model, caplog):
    # science_mcq only in eval: warned about and ignored. learning_rate=0: the eval loss cannot improve.
    train = _train_rows(exclude=("radio_exam", "science_mcq"))
    val = _validation_rows(per_domain=2)
    guide = ValidationGuidedResamplingCallback(group_column="domain", method="doremi", paced_difficulty=True,
                                               patience=1)
    # max_steps a multiple of eval_steps: transformers 4.x does not add an evaluation at the last step, 5.x does
    args = _config(tmp_path, max_steps=6, eval_steps=2, logging_steps=1, learning_rate=0.0)
    trainer = SFTTrainer(model=make_model(), args=args,
                         train_dataset=train, eval_dataset=val, processing_class=tokenizer, callbacks=[guide])
    with caplog.at_level(logging.WARNING, logger="sft_callbacks.policies.validation"):
        trainer.train()
    assert "['science_mcq'] appear in the eval dataset but not in the training data" in caplog.text
    evals = [h["step"] for h in trainer.state.log_history if "eval_loss" in h]
    assert evals == [2, 4, 6] and guide.updates == 3
    assert guide.hard_boost == 0.5  # the first evaluation sets the best loss; the next two do not improve on it
    np.testing.assert_allclose(guide.last_excess, 0.0, atol=1e-6)  # reference = first evaluation
    ids, _ = group_ids(guide.session.columns["domain"])
    natural = np.bincount(ids) / len(ids)
    np.testing.assert_allclose(list(guide.mixture_dict().values()), floor_shares(natural, 0.01), rtol=1e-9)
    # Logged with the next logging step after each evaluation (the Trainer logs a step before it evaluates).
    logged = {h["step"]: h["sft/validation/hard_boost"] for h in trainer.state.log_history if "sft/validation/hard_boost" in h}
    assert logged == {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0, 5: 0.25, 6: 0.25}


def test_eval_dataset_without_the_group_column_is_refused(tmp_path, tokenizer, make_model):
    val = _validation_rows(per_domain=1).remove_columns(["domain"])
    trainer = SFTTrainer(model=make_model(), args=_config(tmp_path, max_steps=2), train_dataset=_train_rows(),
                         eval_dataset=val, processing_class=tokenizer,
                         callbacks=[ValidationGuidedResamplingCallback(group_column="domain")])
    with pytest.raises(ValueError, match="needs the group column 'domain' in the eval dataset 'eval'"):
        trainer.train()
    assert trainer.state.global_step == 0  # refused before any training step
