"""What repetition costs, on real SFTTrainer runs: the validation-guided default withdraws a group whose validation
loss stops responding (random answers from a fixed word list) and keeps boosting a rare group that still learns;
the static target mixture with a repetition budget stops at its budget."""

from __future__ import annotations

import json
import logging

import datasets
import numpy as np
import pytest
from trl import SFTConfig, SFTTrainer

from sft_callbacks import GroupBalanceCallback, ValidationGuidedResamplingCallback
from sft_callbacks.engine.compat import checkpointing_off
from sft_callbacks.policies.groups import group_ids

_WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "lemon", "piano", "house", "storm", "glass", "bread",
          "chair", "field", "ocean", "paper"]
_COLOURS = ["red", "blue", "green", "gold"]


def _three_groups(seed: int = 0) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Train: 400 easy rows (one short answer), 40 rare rows whose answer is a long word sequence fixed by the
    prompt's number (learnable, slowly: still learning when the run ends), 100 rows whose answer is one word drawn
    at random from four. Validation: 8 rows per group, the rare ones among the training prompts, the random group's
    answers drawn by the same rule (only their format can be learnt; no draw lowers their loss further)."""
    rng = np.random.default_rng(seed)

    def rows(n_easy, n_rare, n_random):
        out = [{"prompt": f"Greet number {i}.", "completion": " hello there friend", "group": "easy"}
               for i in range(n_easy)]
        for i in range(n_rare):
            words = " ".join(_WORDS[(i * 7 + k * 3) % len(_WORDS)] for k in range(8))
            out.append({"prompt": f"Recite line {i}.", "completion": " " + words, "group": "rare"})
        for i in range(n_random):
            out.append({"prompt": f"Pick a colour {i}.", "completion": " " + str(rng.choice(_COLOURS)),
                        "group": "random"})
        return datasets.Dataset.from_list(out)

    return rows(400, 40, 100), rows(8, 8, 8)


def _args(tmp_path, steps, eval_steps=8, **kw):
    base = dict(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=8, report_to=[], use_cpu=True,
                save_strategy="no", logging_steps=8, max_length=64, seed=0, eval_strategy="steps",
                eval_steps=eval_steps, per_device_eval_batch_size=8, disable_tqdm=True, **checkpointing_off())
    base.update(kw)
    return SFTConfig(**base)


def test_default_withdraws_a_group_that_stops_responding_and_boosts_one_that_learns(tmp_path, tokenizer, make_model,
                                                                                     caplog):
    train, val = _three_groups()
    guide = ValidationGuidedResamplingCallback(group_column="group")
    trainer = SFTTrainer(model=make_model(), args=_args(tmp_path, 100, eval_steps=10, learning_rate=5e-3), train_dataset=train, eval_dataset=val,
                         processing_class=tokenizer, callbacks=[guide])
    with caplog.at_level(logging.INFO, logger="sft_callbacks.policies.validation"):
        trainer.train()
    names = guide.group_names
    ids, _ = group_ids(guide.session.columns["group"])
    natural = dict(zip(names, np.bincount(ids) / len(ids)))
    draws = np.array([h["draws"] for h in guide.history])  # rows of each group drawn before each evaluation
    total = dict(zip(names, draws[-1] / draws[-1].sum()))
    # The rare group, still learning, takes well over twice its natural share of the run's draws, within its
    # repetition budget (a 1.5-epoch run: 4 passes over its rows are 20% of the draws) ...
    assert total["rare"] > 2 * natural["rare"], total
    assert draws[-1][names.index("rare")] / 40 <= guide.config.max_passes + 0.1
    # ... the random group, whose loss stopped falling with its draws, is withdrawn and ends at or below its
    # natural share, and is drawn at no more than that once withdrawn, whatever its first evaluations rewarded.
    r = names.index("random")
    assert guide.withdrawn[r] and guide.mixture_dict()["random"] <= natural["random"] + 1e-9
    first = next(i for i, h in enumerate(trainer.state.log_history) if h.get("sft/validation/withdrawn/random") == 1)
    step = trainer.state.log_history[first]["step"]
    since = [i for i, h in enumerate(guide.history) if h["step"] >= step + 10]
    later = draws[-1] - draws[since[0]]
    assert later[r] / later.sum() <= natural["random"] + 0.03, later
    # The logs say when and why: per group flags under sft/validation/, and one INFO line when it happens.
    logged = [h for h in trainer.state.log_history if "sft/validation/withdrawn/random" in h]
    assert logged[-1]["sft/validation/withdrawn/random"] == 1.0 and "sft/validation/passes/rare" in logged[-1]
    assert any("'random' withdrawn" in m.getMessage() and "standard error" in m.getMessage() for m in caplog.records)
    assert any("'rare' capped by the repetition budget" in m.getMessage() for m in caplog.records)
    # The passes are the tracker's draws over each group's rows.
    assert guide.passes[names.index("rare")] == pytest.approx(draws[-1][names.index("rare")] / 40)
    assert 0 < logged[-1]["sft/validation/passes/rare"] <= guide.passes[names.index("rare")]
    # Withdrawn and capped flags are checkpoint state.
    restored = ValidationGuidedResamplingCallback(group_column="group")
    restored.load_policy_state(json.loads(json.dumps(guide.policy_state())))
    assert restored.withdrawn.tolist() == guide.withdrawn.tolist()


def test_static_target_with_a_repetition_budget_stops_at_it(tmp_path, tokenizer, make_model):
    train, _ = _three_groups()
    target = {"easy": 0.3, "rare": 0.5, "random": 0.2}  # 400 of 800 draws on 40 rows: 10 passes without a budget
    balance = GroupBalanceCallback(group_column="group", strategy="target", target_shares=target, max_passes=2)
    args = SFTConfig(output_dir=str(tmp_path), max_steps=100, per_device_train_batch_size=8, learning_rate=1e-3,
                     report_to=[], use_cpu=True, save_strategy="no", logging_steps=50, max_length=64, seed=0,
                     **checkpointing_off(), disable_tqdm=True)
    trainer = SFTTrainer(model=make_model(), args=args, train_dataset=train, processing_class=tokenizer,
                         callbacks=[balance])
    trainer.train()
    tracker = balance.session.tracker
    ids, names = group_ids(balance.session.columns["group"])
    groups = ids[np.asarray(tracker.index.seq_row)][np.argsort(np.asarray(tracker.index.seq_uid))]
    drawn = np.bincount(groups, weights=tracker.stats.times_seen.astype(float), minlength=3)
    passes = dict(zip(names, drawn / np.bincount(ids)))
    assert drawn.sum() >= 790  # the tracker folds in the last steps at its sync points
    # The rare group stops at its budget (quotas: within one draw of it); the others take its excess in proportion
    # to their targets, until random (100 rows) is full too.
    assert 1.95 <= passes["rare"] <= 2.0 + 1 / 40, passes
    assert passes["random"] <= 2.0 + 1 / 100 and passes["easy"] > 1.0, passes
    logged = [h for h in trainer.state.log_history if "sft/balance/capped/rare" in h]
    assert logged[-1]["sft/balance/capped/rare"] == 1.0 and logged[-1]["sft/balance/target/rare"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="max_passes limits resampling"):
        GroupBalanceCallback(group_column="group", loss_weighting=True, max_passes=2)
    with pytest.raises(ValueError, match="max_passes must be a number > 0"):
        ValidationGuidedResamplingCallback(group_column="group", max_passes=0)


@pytest.mark.parametrize("which", ["validation", "balance"])
def test_a_resume_between_updates_draws_the_uninterrupted_stream(tmp_path, tokenizer, make_model, which):
    """The budget is planned from the draws so far; a resume hands back the shares in force, not a new plan."""
    from ..support.helpers import BatchRecorder

    train, val = _three_groups()

    def run(out, resume=None, **kw):
        if which == "validation":
            policy = ValidationGuidedResamplingCallback(group_column="group", max_passes=1)
        else:
            policy = GroupBalanceCallback(group_column="group", strategy="target", max_passes=1,
                                          target_shares={"easy": 0.2, "rare": 0.5, "random": 0.3})
        model = make_model()
        trainer = SFTTrainer(model=model, args=_args(out, 40, eval_steps=10, learning_rate=5e-3, **kw),
                             train_dataset=train, eval_dataset=val, processing_class=tokenizer, callbacks=[policy])
        recorder = BatchRecorder(model, lambda: policy.session)
        trainer.train(resume_from_checkpoint=resume)
        recorder.handle.remove()
        return policy, recorder.batches

    policy, full = run(tmp_path / "full")
    assert policy.capped is not None and policy.capped.any()  # the budget binds in this run
    run(tmp_path / "a", save_strategy="steps", save_steps=15)
    _, resumed = run(tmp_path / "a", resume=str(tmp_path / "a" / "checkpoint-15"))
    assert resumed == full[15:]
