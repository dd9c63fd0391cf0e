"""InfoBatchCallback: the pruning rule and importance sampling on arrays (unbiased in expectation), then a real
SFTTrainer run (rows skipped in an epoch are not drawn in it, the kept learnt rows carry 1 / (1 - r) loss weights)
and an exact resume."""

from __future__ import annotations

import numpy as np
import pytest
from trl import SFTConfig, SFTTrainer

from sft_callbacks import InfoBatchCallback, TrainingDynamicsCallback, pruned_max_steps
from sft_callbacks.engine.compat import checkpointing_off
from sft_callbacks.policies.pruning import importance_weights, infobatch_prune

from ..support.helpers import BatchRecorder, sft_rows


def test_infobatch_skips_part_of_the_learnt_rows_and_keeps_the_gradient_unbiased():
    rng = np.random.default_rng(0)
    loss = rng.gamma(1.0, size=1000)
    keep, weight = infobatch_prune(loss, 0.5, np.random.default_rng(1))
    learnt = loss < loss.mean()
    assert keep[~learnt].all() and (weight[~learnt] == 1).all()  # the hard rows: always, at weight 1
    assert (~keep[learnt]).sum() == int(0.5 * learnt.sum())
    # Expected contribution of each learnt row over the random choice: kept share x weight = 1.
    assert (keep * weight)[learnt].sum() == pytest.approx(learnt.sum(), abs=2.0)
    # Per group, a scarce group with higher losses still has its own learnt rows skipped at the same ratio.
    groups = np.r_[np.zeros(900, int), np.ones(100, int)]
    loss2 = np.r_[rng.gamma(1.0, size=900) * 0.2, 3.0 + rng.gamma(1.0, size=100)]
    keep_all, _ = infobatch_prune(loss2, 0.5, np.random.default_rng(2))
    keep_grp, _ = infobatch_prune(loss2, 0.5, np.random.default_rng(2), groups)
    assert keep_all[900:].all() and not keep_grp[900:].all()
    # Rows never seen (NaN) are kept.
    keep3, w3 = infobatch_prune(np.array([np.nan, 0.1, 2.0]), 0.9, np.random.default_rng(0))
    assert keep3[0] and w3[0] == 1.0
    with pytest.raises(ValueError, match="prune_ratio"):
        infobatch_prune(loss, 1.0, rng)


def test_importance_sampling_is_unbiased_and_floored():
    p, w = importance_weights(np.array([0.0, 1.0, 3.0, np.nan]), floor=0.1)
    assert p.sum() == pytest.approx(1.0) and (p > 0).all()
    assert (p * w).sum() * 1 == pytest.approx(1.0)  # E_p[w] = mean over rows of 1: N p_i w_i = 1
    assert p[3] == pytest.approx(p[1] * 4 / 3, rel=1e-6)  # an unseen row gets the mean loss (4/3)
    assert pruned_max_steps(225, 0.6) == 135
    with pytest.raises(ValueError, match="compute_fraction"):
        pruned_max_steps(225, 0.0)


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), num_train_epochs=3, per_device_train_batch_size=8, learning_rate=3e-3,
                report_to=[], use_cpu=True, save_strategy="no", logging_steps=4, max_length=96, seed=0,
                disable_tqdm=True, **checkpointing_off())
    base.update(kw)
    return SFTConfig(**base)


class _Recording(InfoBatchCallback):
    """Keeps each epoch's decision (the callback itself keeps only the one in force)."""

    def _decide(self, ctx, reason):
        decided = super()._decide(ctx, reason)
        if decided:
            self.decisions = getattr(self, "decisions", {})
            key = ("step", ctx.step) if reason == "step" else self.epoch_decided
            self.decisions[key] = (self.keep.copy(), self.loss_weight.copy(), self.annealing)
        return decided


def _run(tmp_path, tokenizer, make_model, data, resume=None, delta=0.875, **kw):
    model = make_model()
    prune = _Recording(prune_ratio=0.5, delta=delta)
    dyn = TrainingDynamicsCallback()
    trainer = SFTTrainer(model=model, args=_args(tmp_path, **kw), train_dataset=data, processing_class=tokenizer,
                         callbacks=[dyn, prune])
    recorder = BatchRecorder(model, lambda: prune.session)
    trainer.train(resume_from_checkpoint=resume)
    recorder.handle.remove()
    return trainer, prune, recorder.batches


def test_skipped_rows_are_not_drawn_in_their_epoch_and_the_kept_learnt_ones_weigh_more(tmp_path, tokenizer,
                                                                                          make_model):
    data = sft_rows(48)
    trainer, prune, batches = _run(tmp_path, tokenizer, make_model, data)
    steps_per_epoch = 6
    assert len(batches) == 3 * steps_per_epoch
    session = prune.session
    index = session.tracker.index
    uid_of_row = np.empty(index.num_rows, dtype=np.int64)
    uid_of_row[np.asarray(index.seq_row)] = np.asarray(index.seq_uid)
    # Epoch 1 keeps everything (no losses yet); epochs 2 and 3 skip half of the rows below the mean loss, and
    # those are not drawn in their epoch once the decision takes effect (lag: GA + 2 micro-batches). After the
    # last epoch the callback anneals (nothing skipped, every weight 1).
    assert sorted(k for k in prune.decisions if isinstance(k, int)) == [0, 1, 2, 3]
    assert prune.decisions[0][0].all() and prune.decisions[3][2]
    for epoch in (1, 2):
        keep, weight, annealing = prune.decisions[epoch]
        assert not annealing and 0 < (~keep).mean() < 0.5
        drawn = [r for b in batches[epoch * steps_per_epoch + 3 : (epoch + 1) * steps_per_epoch] for r in b]
        assert not (~keep)[uid_of_row[np.asarray(drawn)]].any()
        learnt = weight > 1  # the kept learnt rows carry m / (m - skipped), about 1 / (1 - 0.5)
        skipped = (~keep).sum()
        assert set(np.round(np.unique(weight), 6).tolist()) == {1.0, round((learnt.sum() + skipped) / learnt.sum(), 6)}
        assert 1.8 < weight.max() <= 2.0 and (weight[~keep] == 1.0).all()
    logged = [h for h in trainer.state.log_history if "sft/prune/skipped_fraction" in h]
    assert logged and logged[-1]["sft/prune/rows_processed"] > 0


def test_annealing_starts_at_the_first_sync_after_delta_of_the_steps_even_inside_an_epoch(tmp_path, tokenizer,
                                                                                          make_model):
    # 44 rows (TRL drops 4 of the 48) in batches of 4: 11 steps an epoch, 33 in all; delta 0.7 -> step 23.1,
    # inside the third epoch (steps 22-32). The first sync point after it is the log at step 24: from then on
    # every row is drawn again and every weight is 1.
    data = sft_rows(48)
    trainer, prune, batches = _run(tmp_path, tokenizer, make_model, data, delta=0.7, per_device_train_batch_size=4)
    assert len(batches) == 33
    keep, _, annealing = prune.decisions[2]  # the third epoch's decision, at its start (step 22 < 23.1)
    assert not annealing and (~keep).sum() > 0
    keep_after, weight_after, annealed = prune.decisions[("step", 24)]
    assert annealed and keep_after.all() and (weight_after == 1.0).all() and prune.annealed_step == 24
    index = prune.session.tracker.index
    uid_of_row = np.empty(index.num_rows, dtype=np.int64)
    uid_of_row[np.asarray(index.seq_row)] = np.asarray(index.seq_uid)
    skipped = set(np.flatnonzero(~keep).tolist())
    before = {int(uid_of_row[r]) for b in batches[22 + 3 : 24 + 3] for r in b}  # lag: GA + 2 micro-batches
    after = {int(uid_of_row[r]) for b in batches[24 + 3 :] for r in b}
    assert before and not before & skipped  # still skipped until the switch takes effect
    assert len(after & skipped) >= len(skipped) / 2  # the rows skipped so far make up their quota in the rest
    logged = [h["sft/prune/annealing"] for h in trainer.state.log_history if "sft/prune/annealing" in h]
    assert logged[-1] == 1.0 and 0.0 in logged


def test_resume_mid_epoch_draws_the_uninterrupted_stream(tmp_path, tokenizer, make_model):
    data = sft_rows(48)
    _, _, full = _run(tmp_path / "full", tokenizer, make_model, data)
    _run(tmp_path / "a", tokenizer, make_model, data, save_strategy="steps", save_steps=9)
    _, _, resumed = _run(tmp_path / "a", tokenizer, make_model, data,
                         resume=str(tmp_path / "a" / "checkpoint-9"))
    assert resumed == full[9:]


def test_the_rescaled_loss_and_gradient_of_a_real_model_are_the_full_datas_in_expectation(tokenizer, make_model):
    import torch

    from benchmarks.denoise_tiny import colour_task

    model = make_model()
    rows = colour_task(0)[0].select(range(0, 240, 6))  # 40 plain-text rows
    per_row_loss, per_row_grad = [], []
    head = model.lm_head.weight
    for row in rows:  # each row's loss and its gradient on the LM head, on a fixed model
        ids = tokenizer(row["prompt"] + row["completion"])["input_ids"]
        start = len(tokenizer(row["prompt"])["input_ids"])
        labels = [-100] * start + ids[start:]
        model.zero_grad()
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        loss.backward()
        per_row_loss.append(loss.item())
        per_row_grad.append(head.grad.detach().flatten().clone())
    loss, grad = np.array(per_row_loss), torch.stack(per_row_grad).double().numpy()
    rng = np.random.default_rng(0)
    draws = [infobatch_prune(loss, 0.3, rng) for _ in range(4000)]  # 0.3: the skipped count is rounded
    scale = np.array([keep * w for keep, w in draws])  # each draw's per-row factor on the loss
    est_loss = scale @ loss / len(loss)
    full = loss.mean()
    assert abs(est_loss.mean() - full) <= 3 * est_loss.std(ddof=1) / np.sqrt(len(est_loss)) + 1e-12
    assert est_loss.std() > 0  # the draws do differ
    est_grad = scale @ grad / len(loss)  # (draws, params): linear in the per-row gradients
    # The coordinates share the same few random factors, so test along one direction: the error of the first
    # half of the draws, checked on the second half (a bias shows in both halves; noise does not repeat).
    first, second = est_grad[: len(draws) // 2], est_grad[len(draws) // 2 :]
    u = first.mean(0) - grad.mean(0)
    u /= np.linalg.norm(u)
    along = second @ u
    z = abs(along.mean() - grad.mean(0) @ u) / (along.std(ddof=1) / np.sqrt(len(along)))
    assert z < 3.5, z
