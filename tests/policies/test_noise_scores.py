"""Noise scores from the visit history: pure functions on arrays, the visit log in checkpoints, real training runs
on a learnable task with planted wrong answers, and the out-of-sample (K-fold) option."""

from __future__ import annotations

import numpy as np
import pytest
from trl import SFTConfig, SFTTrainer

from sft_callbacks import DataMapCallback, TrainingDynamicsCallback, estimate_noise_rate, out_of_sample_losses
from sft_callbacks.curation.out_of_sample import fold_assignment
from sft_callbacks.policies.noise import NOISE_SCORES, flag_by_score, history_scores, window_of_trust
from sft_callbacks.engine.tracking import VisitLog

from sft_callbacks.engine.compat import checkpointing_off

from ..support.helpers import corrupted_labels


def _auroc(score, positive) -> float:
    score, positive = np.asarray(score, dtype=np.float64), np.asarray(positive, dtype=bool)
    pos, neg = score[positive], score[~positive]
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def _synthetic_run(n=200, noisy=40, steps=40, learn_at=10, memorise_at=30, seed=0):
    """Every sample visited once per step. Clean samples are learnt at ``learn_at``; wrong answers stay wrong
    until ``memorise_at``, then are fitted. Before ``learn_at`` every loss is high and random."""
    rng = np.random.default_rng(seed)
    wrong = np.zeros(n, dtype=bool)
    wrong[:noisy] = True
    uid = np.tile(np.arange(n), steps)
    step = np.repeat(np.arange(steps), n)
    learnt = step >= learn_at
    fitted = np.where(wrong[uid], step >= memorise_at, learnt)
    loss = np.where(fitted, rng.uniform(0.01, 0.2, uid.size), rng.uniform(1.0, 4.0, uid.size))
    return {"uid": uid, "step": step, "loss": loss, "correct": fitted}, wrong


def test_window_of_trust_opens_when_the_task_is_learnt_and_closes_at_memorisation():
    visits, wrong = _synthetic_run()
    start, end = window_of_trust(visits, 200, rate=0.2, bins=40)
    assert start == 10 and end == 30
    scores = history_scores(visits, 200, start=start, end=end)
    assert set(scores) == set(NOISE_SCORES) - {"min_token_after_burn_in", "aum"}  # those need their fields
    assert _auroc(scores["confidence_after_burn_in"], wrong) == 1.0
    assert _auroc(scores["wrong_visits"], wrong) == 1.0
    assert _auroc(scores["loss_last"], wrong) < 0.7  # memorised: the last reading no longer separates
    assert _auroc(scores["loss_first"], wrong) < 0.7  # an untrained model's reading


def test_window_keeps_a_visit_of_every_sample():
    visits, _ = _synthetic_run()
    late = visits["uid"] != 7
    late |= visits["step"] < 5  # sample 7 is drawn only in the first five steps
    visits = {k: v[late] for k, v in visits.items()}
    start, end = window_of_trust(visits, 200, rate=0.2, bins=40)
    assert start <= 4
    assert np.isfinite(history_scores(visits, 200, start=start, end=end)["confidence_after_burn_in"]).all()
    assert window_of_trust({k: v[:0] for k, v in visits.items()}, 5) == (0, None)


def test_estimate_noise_rate_recovers_the_share_of_a_separated_mode():
    rng = np.random.default_rng(0)
    for rate in (0.05, 0.2, 0.4):
        clean = 1 - np.exp(-rng.gamma(1.0, 0.05, int(2000 * (1 - rate))))  # piled near 0, with a tail
        noisy = rng.uniform(0.7, 0.99, int(2000 * rate))
        score = np.concatenate([clean, noisy, [np.nan]])
        estimated, post = estimate_noise_rate(score)
        assert abs(estimated - rate) < 0.03, (rate, estimated)
        assert np.isnan(post[-1]) and post[len(clean):-1].min() > 0.9 and np.median(post[: len(clean)]) < 0.01
        flags = flag_by_score(score, estimated)
        assert flags[len(clean):-1].mean() > 0.95 and flags[: len(clean)].mean() < 0.01
    assert estimate_noise_rate(np.zeros(50))[0] == 0.0  # one value: nothing to separate


def test_flag_by_score_within_groups_and_eligibility():
    score = np.array([0.9, 0.1, 0.8, 0.2, np.nan, 0.95])
    groups = np.array(["a", "a", "b", "b", "b", "b"])
    # group b has three scored rows: round(1.5) = 2 flags
    assert flag_by_score(score, 0.5, groups=groups).tolist() == [True, False, True, False, False, True]
    eligible = np.array([True, True, True, True, True, False])
    assert flag_by_score(score, 0.5, groups=groups, eligible=eligible).tolist() == [True, False, True, False, False,
                                                                                      False]
    with pytest.raises(ValueError, match="noise rate"):
        flag_by_score(score, 1.5)
    with pytest.raises(ValueError, match="labels"):
        flag_by_score(score, 0.5, groups=groups[:3])


def test_visit_log_round_trips_through_its_state():
    log = VisitLog()
    log.append(np.array([1, 2]), np.array([3, 4]), np.array([0.5, 70000.0]), np.array([True, False]),
               np.array([-0.1, -9.0]), np.array([np.nan, 1.5]))
    log.append(np.array([1]), np.array([5]), np.array([0.25]), np.array([True]), np.array([-0.01]), np.array([2.0]))
    fresh = VisitLog.from_state_dict(log.state_dict())
    a, b = log.arrays(), fresh.arrays()
    assert len(fresh) == 3 and fresh.nbytes == 3 * VisitLog.BYTES_PER_VISIT
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert np.isinf(b["loss"][1])  # float16 saturates to inf, never to a wrapped value
    assert b["step"].tolist() == [3, 4, 5] and b["uid"].tolist() == [1, 2, 1]
    assert len(VisitLog.from_state_dict(VisitLog().state_dict())) == 0


def _args(tmp_path, epochs, **kw):
    base = dict(output_dir=str(tmp_path), num_train_epochs=epochs, per_device_train_batch_size=8, learning_rate=3e-3,
                lr_scheduler_type="constant", report_to=[], use_cpu=True, save_strategy="no", max_length=160, seed=0,
                **checkpointing_off(), logging_steps=1000, disable_tqdm=True)
    return SFTConfig(**{**base, **kw})


def test_default_noise_score_finds_the_wrong_answers_of_a_learnt_task(tmp_path, tokenizer, make_model):
    data = corrupted_labels(192)
    data_map = DataMapCallback(noise_rate=0.25)
    trainer = SFTTrainer(model=make_model(hidden_size=128), args=_args(tmp_path, 16),
                         train_dataset=data, processing_class=tokenizer,
                         callbacks=[TrainingDynamicsCallback(), data_map])  # fmt: skip
    trainer.train()
    corrupted = np.asarray(data["corrupted"])
    frame = data_map.data_map()
    scores = data_map.noise_scores()
    # Measured 0.97 (deterministic on CPU). The data map's old score, confidence over every epoch, reads the
    # untrained model's first epochs too (0.92); the first-visit loss reads only those (0.20).
    assert _auroc(frame["noise_score"], corrupted) >= 0.95
    assert _auroc(frame["noise_score"], corrupted) > _auroc(scores["confidence"], corrupted)
    assert _auroc(frame["noise_score"], corrupted) > _auroc(scores["loss_first"], corrupted) + 0.3
    start, end = data_map.noise_report["window"]
    assert 0 < start < trainer.state.global_step
    precision = corrupted[frame["flag_noisy"].to_numpy()].mean()
    assert precision >= 0.8
    assert set(scores.columns) == set(NOISE_SCORES) and scores["aum"].isna().all()  # fused head: no margin
    logs = [h for h in trainer.state.log_history if "sft/data_map/expected_precision" in h]
    assert logs and 0 < logs[-1]["sft/data_map/expected_precision"] <= 1


def _four_words(n: int):
    """Four words, a quarter of the answers flipped, every prompt unique (a row number after the word): each row
    is its own sample, and the word -> label rule is learnt within a few epochs."""
    import datasets

    rng = np.random.default_rng(0)
    words = [("apple", "fruit"), ("banana", "fruit"), ("hammer", "tool"), ("wrench", "tool")]
    rows = []
    for i in range(n):
        word, label = words[i % 4]
        flipped = bool(rng.random() < 0.25)
        answer = {"fruit": "tool", "tool": "fruit"}[label] if flipped else label
        rows.append({"prompt": [{"role": "user", "content": f"{word} {i}"}],
                     "completion": [{"role": "assistant", "content": answer}], "corrupted": flipped})
    return datasets.Dataset.from_list(rows)


def test_estimated_rate_flags_and_reports_expected_precision(tmp_path, tokenizer, make_model):
    data = _four_words(96)
    data_map = DataMapCallback()  # no noise rate: estimated from the scores
    SFTTrainer(model=make_model(hidden_size=128), args=_args(tmp_path, 20), train_dataset=data,
               processing_class=tokenizer, callbacks=[data_map]).train()
    corrupted = np.asarray(data["corrupted"])
    frame = data_map.data_map()
    report = data_map.noise_report["groups"]["all"]
    assert not report["rate_given"] and 0.1 < report["estimated_rate"] < 0.4  # planted: 0.25
    flags = frame["flag_noisy"].to_numpy()
    assert flags.sum() == report["flagged"] > 0
    precision = corrupted[flags].mean()
    auroc = _auroc(frame["noise_score"], corrupted)
    assert precision >= 0.7, (precision, auroc, report)
    assert abs(report["expected_precision"] - precision) < 0.25  # the mixture's own estimate is near the truth
    eligible = frame["noise_probability"].notna()
    assert eligible.all() and ((frame["noise_probability"] >= 0) & (frame["noise_probability"] <= 1)).all()


def test_rows_seen_in_one_epoch_are_not_placed_on_the_map(tmp_path, tokenizer, make_model, small_sft):
    from sft_callbacks import plot_data_map

    data_map = DataMapCallback()
    args = _args(tmp_path, 1)
    args.max_steps = 9  # 48 rows, 6 steps an epoch: half the rows are seen in a second epoch
    SFTTrainer(model=make_model(), args=args, train_dataset=small_sft, processing_class=tokenizer,
               callbacks=[data_map]).train()
    frame = data_map.data_map()
    once = frame["epochs_seen"] == 1
    twice = frame["epochs_seen"] == 2
    assert once.sum() >= 10 and twice.sum() >= 10
    assert frame.loc[once, "variability"].isna().all() and (frame.loc[once, "region"] == "").all()
    assert not frame.loc[once, "flag_noisy"].any() and frame.loc[once, "noise_probability"].isna().all()
    assert frame.loc[twice, "variability"].notna().all() and (frame.loc[twice, "region"] != "").all()
    plot_data_map(frame, str(tmp_path / "map.png"))
    assert (tmp_path / "map.png").stat().st_size > 5000


def test_out_of_sample_losses_read_each_row_with_a_model_that_never_trained_on_it(tmp_path, tokenizer, make_model):
    data = corrupted_labels(192).map(lambda r, i: {"domain": "ab"[i % 2]}, with_indices=True)
    built = []

    def make_trainer(train, held_out):
        built.append((len(train), len(held_out)))
        args = _args(tmp_path / str(len(built)), 8)
        return SFTTrainer(model=make_model(hidden_size=128), args=args, train_dataset=train, eval_dataset=held_out,
                          processing_class=tokenizer)

    scores = out_of_sample_losses(make_trainer, data, folds=2, group_column="domain")
    assert built == [(96, 96), (96, 96)] and len(scores) == 192
    assert scores["loss"].notna().all() and set(scores["fold"]) == {0, 1}
    domains = np.asarray(data["domain"])
    for k in (0, 1):
        assert (domains[scores["fold"] == k] == "a").sum() == 48  # each fold keeps the group mix
    corrupted = np.asarray(data["corrupted"])
    assert _auroc(scores["noise_score"], corrupted) > 0.75  # the learnable task's wrong answers stand out
    with pytest.raises(ValueError, match="eval_dataset"):
        out_of_sample_losses(lambda train, held: SFTTrainer(model=make_model(), args=_args(tmp_path, 1),
                                                            train_dataset=train, processing_class=tokenizer),
                             data, folds=2)
    with pytest.raises(ValueError, match="group_column"):
        out_of_sample_losses(make_trainer, data, group_column="nope")
    with pytest.raises(ValueError, match="folds"):
        fold_assignment(10, 1)


def test_folds_balance_the_groups_odd_rows():
    groups = [g for g in range(10) for _ in range(3)]  # ten groups of three: each has an odd row over two folds
    fold = fold_assignment(30, 2, groups=groups)
    assert np.bincount(fold).tolist() == [15, 15]  # not 20 and 10: the odd rows go to alternate folds
    for folds, n_groups, size in ((3, 7, 5), (4, 5, 1), (2, 3, 7)):
        fold = fold_assignment(n_groups * size, folds, seed=1, groups=[g for g in range(n_groups) for _ in range(size)])
        counts = np.bincount(fold, minlength=folds)
        assert counts.max() - counts.min() <= 1  # every fold model trains on about (K - 1) / K of the rows
        for g in range(n_groups):
            per_group = np.bincount(fold[g * size:(g + 1) * size], minlength=folds)
            assert per_group.max() - per_group.min() <= 1  # and each fold keeps the group mix


def test_out_of_sample_losses_with_single_row_groups_trains_every_fold(tmp_path, tokenizer, make_model):
    data = corrupted_labels(24).map(lambda r, i: {"domain": f"d{i}"}, with_indices=True)  # every group one row
    built = []

    def make_trainer(train, held_out):
        built.append((len(train), len(held_out)))
        return SFTTrainer(model=make_model(), args=_args(tmp_path / str(len(built)), 1), train_dataset=train,
                          eval_dataset=held_out, processing_class=tokenizer)

    scores = out_of_sample_losses(make_trainer, data, folds=2, group_column="domain")
    assert built == [(12, 12), (12, 12)] and scores["loss"].notna().all()

    def drops_every_row(train, held_out):  # the trainer's own preprocessing leaves nothing to train on
        return SFTTrainer(model=make_model(), args=_args(tmp_path / "empty", 1),
                          train_dataset=train.filter(lambda r: False), eval_dataset=held_out,
                          processing_class=tokenizer)

    with pytest.raises(ValueError, match="fold 0: the trainer has no training rows left of the 12"):
        out_of_sample_losses(drops_every_row, data, folds=2)


def test_history_score_holds_up_when_the_model_memorises_the_wrong_answers(tmp_path, tokenizer, make_model):
    # Each word 12 times: the model learns word -> label within a few epochs; over 100 epochs it then fits the
    # flipped rows one by one.
    data = _four_words(48)
    data_map = DataMapCallback()
    trainer = SFTTrainer(model=make_model(hidden_size=256), args=_args(tmp_path, 100, learning_rate=1e-3),
                         train_dataset=data, processing_class=tokenizer, callbacks=[data_map])  # fmt: skip
    trainer.train()
    corrupted = np.asarray(data["corrupted"])
    scores = data_map.noise_scores()
    tracker = data_map.session.tracker
    per_epoch = tracker.stats.epoch_loss_matrix()[tracker.index.user_uid()]
    by_epoch = [_auroc(per_epoch[:, e], corrupted) for e in range(per_epoch.shape[1])]
    last = _auroc(scores["loss_last"], corrupted)
    ours = _auroc(data_map.data_map()["noise_score"], corrupted)
    # Measured (deterministic per CPU): per-epoch loss AUROC 0.96 at its best, 0.63 at the last visit; the window
    # closes when the suspects start to be fitted, and the default score keeps 0.99 on one CPU, 0.93 on another
    # (where every epoch's confidence reached 0.94: the numerics differ, the gap to the last visit does not).
    assert max(by_epoch) >= 0.9 and last < 0.75  # separated early, not at the end: memorised
    start, end = data_map.noise_report["window"]
    assert end is not None and end < trainer.state.global_step  # memorisation seen, the window closed before it
    assert ours >= 0.9 and ours > last + 0.15
    assert ours > _auroc(scores["confidence"], corrupted) - 0.05  # every epoch's, memorised ones included


def test_the_time_normalised_score_keeps_the_early_evidence_of_a_long_run(tmp_path, tokenizer, make_model):
    from benchmarks.denoise_tiny import colour_task
    from benchmarks.scores import auroc

    # 160 rows, each with its own tag (every row can be memorised), 30% wrong, 60 epochs: clean answers are learnt
    # long before the window of trust opens, so a score that reads only the window loses that evidence.
    data, wrong = colour_task(0, 0.3)
    data = data.select(range(160)).map(lambda r, i: {"prompt": f"Tag {i:03d}." + r["prompt"][8:]}, with_indices=True)
    wrong = wrong[:160]
    dyn = TrainingDynamicsCallback()
    args = SFTConfig(output_dir=str(tmp_path), num_train_epochs=60, per_device_train_batch_size=8, learning_rate=3e-3,
                     report_to=[], use_cpu=True, save_strategy="no", logging_steps=10_000, max_length=64, seed=0,
                     disable_tqdm=True, **checkpointing_off())
    SFTTrainer(model=make_model(), args=args, train_dataset=data, processing_class=tokenizer, callbacks=[dyn]).train()
    tracker = dyn.session.tracker
    visits, n = tracker.visits.arrays(), tracker.stats.size
    row_uid = np.empty(len(data), dtype=np.int64)
    row_uid[np.asarray(tracker.index.seq_row)] = np.asarray(tracker.index.seq_uid)
    start, end = window_of_trust(visits, n)
    scores = history_scores(visits, n, start=start, end=end)
    got = {k: auroc(v[row_uid], wrong) for k, v in scores.items() if np.isfinite(v).all()}
    assert got["confidence_time_normalised"] >= 0.9, got
    assert got["confidence_time_normalised"] >= max(got["confidence"], got["confidence_after_burn_in"]) - 0.01, got


def test_scores_of_an_empty_visit_log_are_all_unknown():
    empty = {"uid": np.zeros(0, int), "step": np.zeros(0, int), "loss": np.zeros(0), "correct": np.zeros(0, bool)}
    scores = history_scores(empty, 3)
    assert all(np.isnan(v).all() for v in scores.values())
