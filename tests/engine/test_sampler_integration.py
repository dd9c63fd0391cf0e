"""The adaptive sampler inside real SFTTrainer runs: weight changes, determinism, resume, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from trl import SFTConfig, SFTTrainer

from sft_callbacks import AdaptiveSampler, SamplingPolicyCallback, TrainingDynamicsCallback

from ..support.helpers import BatchRecorder, sft_rows
from sft_callbacks.engine.compat import checkpointing_off


class EvenRowsAfter(SamplingPolicyCallback):
    """From optimizer step ``start`` on, draw only rows whose user-row number is even."""

    def __init__(self, start: int = 3):
        super().__init__(start=start)
        self.start = start

    def compute_weights(self, ctx, reason):
        if ctx.step < self.start:
            return None
        return (ctx.index.row_user % 2 == 0).astype(float)


class LossWeighted(SamplingPolicyCallback):
    """Weights from the latest losses (unseen rows at the mean); counts its updates (state to checkpoint)."""

    def __init__(self, power: float = 4.0):
        super().__init__(power=power)
        self.power = power
        self.updates = 0

    def compute_weights(self, ctx, reason):
        loss = ctx.stats.loss_last.astype(float)
        if np.isnan(loss).all():
            return None
        loss = np.where(np.isnan(loss), np.nanmean(loss), loss)
        self.updates += 1
        return ctx.rows_from_samples(loss**self.power)

    def policy_state(self):
        return {"updates": self.updates}

    def load_policy_state(self, state):
        self.updates = state.get("updates", 0)


def _config(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path), max_steps=10, per_device_train_batch_size=4, learning_rate=1e-3,
        report_to=[], use_cpu=True, save_strategy="no", logging_steps=5, max_length=128, seed=0,
        **checkpointing_off(),
    )
    base.update(kw)
    return SFTConfig(**base)


def _run(tmp_path, tokenizer, make_model, callbacks, data, resume=None, **kw):
    model = make_model()
    trainer = SFTTrainer(model=model, args=_config(tmp_path, **kw), train_dataset=data,
                         processing_class=tokenizer, callbacks=callbacks)
    recorder = BatchRecorder(model, lambda: callbacks[0].session)
    trainer.train(resume_from_checkpoint=resume)
    recorder.handle.remove()
    return trainer, recorder.batches


@pytest.mark.parametrize("ga,workers", [(1, 0), (2, 0), (1, 2)])
def test_weight_change_shows_within_documented_bound(tmp_path, tokenizer, make_model, ga, workers):
    data = sft_rows(64)
    policy = EvenRowsAfter(start=3)
    trainer, batches = _run(tmp_path, tokenizer, make_model, [TrainingDynamicsCallback(sync_every=1), policy],
                            data, gradient_accumulation_steps=ga, dataloader_num_workers=workers, max_steps=16)
    session = policy.session
    row_user = session.tracker.index.row_user
    # Weights decided at the end of step 3 apply from micro-batch 3*GA + lag (documented bound).
    first = 3 * ga + session.lag_micro_batches
    assert session.lag_micro_batches == ga + 2 + workers * 2
    after = [r for b in batches[first:] for r in b]
    before = [r for b in batches[:first] for r in b]
    assert after and all(row_user[r] % 2 == 0 for r in after)
    assert any(row_user[r] % 2 == 1 for r in before)
    # What was drawn is exactly the sampler's stream: uniform weights (seed 0) up to the change, then the new ones.
    flat = [r for b in batches for r in b]
    change = first * 4
    uniform = AdaptiveSampler(len(row_user), seed=0).draw(0, change).tolist()
    assert flat[:change] == uniform
    assert flat[change:] == session.sampler.draw(change, len(flat)).tolist()


def test_same_seed_same_stream_different_seed_differs(tmp_path, tokenizer, make_model):
    data = sft_rows(64)
    _, a = _run(tmp_path / "a", tokenizer, make_model, [TrainingDynamicsCallback(), LossWeighted()], data)
    _, b = _run(tmp_path / "b", tokenizer, make_model, [LossWeighted(), TrainingDynamicsCallback()], data)
    _, c = _run(tmp_path / "c", tokenizer, make_model, [TrainingDynamicsCallback(), LossWeighted()], data, seed=1)
    assert a == b  # same seed, callbacks in another order: same stream
    assert a != c


@pytest.mark.parametrize("save_at,total", [(6, 12), (18, 24)])  # mid first epoch; in the second epoch
def test_resume_reproduces_stream_weights_and_statistics(tmp_path, tokenizer, make_model, save_at, total):
    data = sft_rows(64)  # 16 steps per epoch
    kw = dict(max_steps=total, save_strategy="steps", save_steps=save_at)
    cbs_a = [TrainingDynamicsCallback(sync_every=2), LossWeighted()]
    trainer_a, full = _run(tmp_path / "a", tokenizer, make_model, cbs_a, data, **kw)
    ckpt = tmp_path / "a" / f"checkpoint-{save_at}"
    assert ckpt.is_dir()
    cbs_b = [TrainingDynamicsCallback(sync_every=2), LossWeighted()]
    trainer_b, resumed = _run(tmp_path / "b", tokenizer, make_model, cbs_b, data, resume=str(ckpt), **kw)
    assert resumed == full[save_at:]  # the resumed run draws the uninterrupted run's remaining stream
    sa, sb = cbs_a[0].session, cbs_b[0].session
    np.testing.assert_allclose(sb.sampler.current_weights, sa.sampler.current_weights, rtol=1e-5)
    fa, fb = cbs_a[0].dynamics(), cbs_b[0].dynamics()  # the user's own callback objects still answer
    assert (fa.times_seen.to_numpy() == fb.times_seen.to_numpy()).all()
    np.testing.assert_allclose(fb.loss_mean.to_numpy(), fa.loss_mean.to_numpy(), rtol=1e-4, equal_nan=True)
    va, vb = sa.tracker.visits.arrays(), sb.tracker.visits.arrays()  # the visit history survives the checkpoint
    for k in ("uid", "step", "correct"):
        np.testing.assert_array_equal(vb[k], va[k])
    np.testing.assert_allclose(vb["loss"].astype(float), va["loss"].astype(float), rtol=2e-3)
    restored_policy = [cb for cb in sb.members if isinstance(cb, LossWeighted)][0]
    assert restored_policy.updates == [cb for cb in sa.members if isinstance(cb, LossWeighted)][0].updates


def test_iterable_dataset_is_refused_with_a_clear_error(tmp_path, tokenizer, make_model):
    data = sft_rows(32).to_iterable_dataset()
    trainer = SFTTrainer(model=make_model(), args=_config(tmp_path, max_steps=2), train_dataset=data,
                         processing_class=tokenizer, callbacks=[TrainingDynamicsCallback()])
    with pytest.raises(ValueError, match="map-style `datasets.Dataset`"):
        trainer.train()


def test_dataset_smaller_than_a_batch_is_refused(tmp_path, tokenizer, make_model):
    trainer = SFTTrainer(model=make_model(), args=_config(tmp_path, max_steps=2, per_device_train_batch_size=8),
                         train_dataset=sft_rows(5), processing_class=tokenizer, callbacks=[TrainingDynamicsCallback()])
    with pytest.raises(ValueError, match="fewer than one batch"):
        trainer.train()


def test_policy_returning_nan_is_refused(tmp_path, tokenizer, make_model):
    class Broken(SamplingPolicyCallback):
        def compute_weights(self, ctx, reason):
            w = np.ones(ctx.num_rows)
            w[0] = np.nan
            return w

    trainer = SFTTrainer(model=make_model(), args=_config(tmp_path, max_steps=3), train_dataset=sft_rows(32),
                         processing_class=tokenizer, callbacks=[Broken()])
    with pytest.raises(ValueError, match="Broken.policy_weights returned 1 non-finite"):
        trainer.train()


def test_nan_loss_never_enters_statistics(tmp_path, tokenizer, make_model):
    model = make_model()
    cb = TrainingDynamicsCallback(sync_every=1)
    trainer = SFTTrainer(model=model, args=_config(tmp_path, max_steps=4, learning_rate=0.0), train_dataset=sft_rows(32),
                         processing_class=tokenizer, callbacks=[cb])
    # Poison the first two forwards' output the way an fp16 overflow would.
    calls = {"n": 0}

    def poison(module, args, kwargs, output):
        calls["n"] += 1
        if calls["n"] <= 2 and module.training:
            output.log_probs = output.log_probs * float("nan")
        return output

    handle = model.register_forward_hook(poison, with_kwargs=True, prepend=True)
    try:
        trainer.train()
    except Exception:
        pass  # the Trainer may or may not tolerate NaN losses; statistics must stay clean either way
    handle.remove()
    frame = cb.dynamics()
    assert cb.session.tracker.nonfinite >= 8
    assert np.isfinite(frame.loss_mean[frame.times_seen > 0]).all()


class RareDomainsFirst(SamplingPolicyCallback):
    """Weights from a user column (kept through TRL's preparation): inverse domain frequency."""

    def __init__(self, column: str = "domain"):
        super().__init__(column=column)
        self.column = column

    def required_columns(self):
        return [self.column]

    def compute_weights(self, ctx, reason):
        values = np.asarray(ctx.column(self.column))
        _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
        return 1.0 / counts[inverse]


def test_policies_read_user_columns_and_missing_columns_are_refused(tmp_path, tokenizer, make_model):
    data = sft_rows(64)
    policy = RareDomainsFirst()
    _run(tmp_path / "ok", tokenizer, make_model, [policy], data, max_steps=2)
    domains = np.asarray(policy.session.columns["domain"])
    w = policy.session.sampler.current_weights
    _, inv, counts = np.unique(domains, return_inverse=True, return_counts=True)
    np.testing.assert_allclose(w / w.sum(), (1.0 / counts[inv]) / (1.0 / counts[inv]).sum(), rtol=1e-5)
    trainer = SFTTrainer(model=make_model(), args=_config(tmp_path / "bad", max_steps=2), train_dataset=data,
                         processing_class=tokenizer, callbacks=[RareDomainsFirst(column="task")])
    with pytest.raises(ValueError, match=r"told to use column\(s\) \['task'\].*'domain'"):
        trainer.train()


def test_weights_decided_at_an_epoch_end_land_in_the_next_epoch(tmp_path, tokenizer, make_model):
    # 62 rows after TRL's preparation: not a multiple of the batch size, so the last micro-batch is partial.
    data = sft_rows(64)
    policy = LossWeighted()
    trainer, batches = _run(tmp_path, tokenizer, make_model, [TrainingDynamicsCallback(sync_every=1), policy], data,
                            max_steps=40)
    session = policy.session
    n = len(session.sampler)
    assert n % 4 != 0 and trainer.state.epoch > 2
    per_epoch = session.micro_per_epoch
    # Position of micro-batch k of epoch e: e*n + 4k; decisions near an epoch end are scheduled L micro-batches
    # later counting into the next epoch, never inside a micro-batch already drawn.
    assert session._micro_batch_position(0, per_epoch - 1 + session.lag_micro_batches) == n + 4 * (session.lag_micro_batches - 1)
    flat = [r for b in batches for r in b]
    assert len(flat) == 40 * 4 - 2 * 2  # two partial micro-batches of 2 rows (epochs 1 and 2 ended)
