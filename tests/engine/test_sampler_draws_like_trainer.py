"""In real SFTTrainer runs the sampler draws like the Trainer shuffles: equal weights are the plain run's stream,
unequal weights are quotas (each row within one of its expected count), a change mid-epoch keeps them, resume too."""

from __future__ import annotations

import numpy as np
import pytest
from trl import SFTConfig, SFTTrainer

from sft_callbacks import SamplingPolicyCallback, TrainingDynamicsCallback
from sft_callbacks.engine.compat import checkpointing_off
from sft_callbacks.engine.row_keys import padded_keys

from ..support.helpers import BatchRecorder, sft_rows

BATCH = 4


class EqualWeights(SamplingPolicyCallback):
    """Every row the same weight: the stream a user who adds a flat policy expects (the plain run's)."""

    def compute_weights(self, ctx, reason):
        return np.full(ctx.num_rows, 2.5)


class ThreeToOne(SamplingPolicyCallback):
    """From optimizer step ``start`` on, rows of the small group weigh 3, rows of the large group 1."""

    def __init__(self, start: int = 0, group_column: str = "size"):
        super().__init__(start=start, group_column=group_column)
        self.start = start
        self.group_column = group_column

    def compute_weights(self, ctx, reason):
        if ctx.step < self.start:
            return None
        return np.where(np.asarray(ctx.column(self.group_column)) == "small", 3.0, 1.0)


def _data():
    data = sft_rows(64)
    return data.add_column("size", ["small" if uid < 16 else "large" for uid in data["uid"]])


def _config(path, **kw):
    base = dict(output_dir=str(path), per_device_train_batch_size=BATCH, learning_rate=1e-3, report_to=[],
                use_cpu=True, save_strategy="no", logging_steps=50, max_length=128, seed=3, **checkpointing_off())
    base.update(kw)
    return SFTConfig(**base)


class KeyRecorder:
    """Content keys of every training micro-batch: compares streams of runs with and without our callbacks."""

    def __init__(self, model):
        self.keys: list[int] = []
        self.handle = model.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        if module.training:
            keys = padded_keys(kwargs["input_ids"], kwargs["labels"], kwargs.get("attention_mask"))
            self.keys.extend(keys.numpy().view(np.uint64).tolist())


def _run(path, tokenizer, make_model, callbacks, data, resume=None, **kw):
    model = make_model()
    trainer = SFTTrainer(model=model, args=_config(path, **kw), train_dataset=data, processing_class=tokenizer,
                         callbacks=callbacks)
    keys = KeyRecorder(model)
    rows = BatchRecorder(model, lambda: callbacks[0].session) if callbacks else None
    trainer.train(resume_from_checkpoint=resume)
    keys.handle.remove()
    if rows is not None:
        rows.handle.remove()
    return trainer, keys.keys, (rows.batches if rows is not None else None)


def test_equal_weights_are_the_plain_trainers_stream_every_row_once_per_epoch(tmp_path, tokenizer, make_model):
    data = _data()
    plain, plain_keys, _ = _run(tmp_path / "plain", tokenizer, make_model, [], data, num_train_epochs=3)
    cbs = [TrainingDynamicsCallback(), EqualWeights()]
    ours, our_keys, batches = _run(tmp_path / "ours", tokenizer, make_model, cbs, data, num_train_epochs=3)
    session = cbs[0].session
    assert session.sampler is not None and session.weight_updates == 1  # the policy ran and scheduled its weights
    assert ours.state.global_step == plain.state.global_step
    assert our_keys == plain_keys  # the very permutation the plain Trainer drew, epoch after epoch
    n = len(session.sampler)
    flat = [r for b in batches for r in b]
    assert len(flat) == 3 * n
    for epoch in range(3):
        assert sorted(flat[epoch * n : (epoch + 1) * n]) == list(range(n))
    # And the same losses: the run is the plain run.
    losses = lambda t: [h["loss"] for h in t.state.log_history if "loss" in h]  # noqa: E731
    assert losses(ours) == losses(plain)


def _deviation_from_quota(flat, weights_before, weights_after, change):
    """Largest |visits - expected| over all rows and every prefix of the stream; expected counts follow the
    weights in force at each position (``weights_before`` up to ``change``, then ``weights_after``)."""
    p0 = weights_before / weights_before.sum()
    p1 = weights_after / weights_after.sum()
    counts = np.zeros(len(p0))
    worst = 0.0
    for k, row in enumerate(flat, 1):
        counts[row] += 1
        expected = min(k, change) * p0 + max(0, k - change) * p1
        worst = max(worst, float(np.abs(counts - expected).max()))
    return worst


def _repeats_while_peers_wait(flat, weights_before, weights_after, change):
    """Draws of a row while a row of the same weight (at that position) has been drawn fewer times."""
    counts = np.zeros(len(weights_before), dtype=int)
    bad = 0
    for k, row in enumerate(flat):
        w = weights_before if k < change else weights_after
        peers = w == w[row]
        bad += int(counts[row] > counts[peers].min())
        counts[row] += 1
    return bad


def test_fixed_three_to_one_weights_keep_every_row_within_one_of_its_quota(tmp_path, tokenizer, make_model):
    data = _data()
    cbs = [TrainingDynamicsCallback(), ThreeToOne(start=0)]
    trainer, _, batches = _run(tmp_path, tokenizer, make_model, cbs, data, num_train_epochs=3)
    session = cbs[0].session
    small = np.asarray(session.columns["size"]) == "small"
    w = np.where(small, 3.0, 1.0)
    flat = [r for b in batches for r in b]
    assert session.sampler.num_groups == 2
    assert _deviation_from_quota(flat, w, w, 0) < 1
    counts = np.bincount(flat, minlength=len(w))
    expected = len(flat) * w / w.sum()
    assert np.abs(counts - expected).max() < 1
    assert counts[small].min() >= 4 and counts[~small].max() <= 3  # 3 epochs: about 4.5 vs 1.5 visits each


@pytest.mark.parametrize("ga", [1, 2])
def test_a_change_mid_epoch_follows_the_new_quotas_and_resume_keeps_the_stream(tmp_path, tokenizer, make_model, ga):
    data = _data()
    kw = dict(max_steps=36 // ga, gradient_accumulation_steps=ga, save_strategy="steps", save_steps=3)
    cbs = [TrainingDynamicsCallback(sync_every=1), ThreeToOne(start=3)]
    trainer, _, batches = _run(tmp_path / "a", tokenizer, make_model, cbs, data, **kw)
    session = cbs[0].session
    small = np.asarray(session.columns["size"]) == "small"
    after = np.where(small, 3.0, 1.0)
    before = np.ones(len(after))
    # Decided at the end of step 3, in force from micro-batch 3 * GA + lag, in the middle of the first epoch.
    change = (3 * ga + session.lag_micro_batches) * BATCH
    assert 0 < change < len(session.sampler)
    flat = [r for b in batches for r in b]
    assert _deviation_from_quota(flat, before, after, change) < 1
    assert _repeats_while_peers_wait(flat, before, after, change) == 0
    # The small group's share moves from its natural 1/4 to 1/2 from the scheduled position on.
    tail = np.asarray(flat[change:])
    assert len(tail) > 60 and abs(small[tail].mean() - 0.5) < 0.05
    # Resuming from the checkpoint written at that step continues the same stream, index for index.
    cbs_b = [TrainingDynamicsCallback(sync_every=1), ThreeToOne(start=3)]
    _, _, resumed = _run(tmp_path / "b", tokenizer, make_model, cbs_b, data, resume=str(tmp_path / "a" / "checkpoint-3"),
                         **kw)
    assert resumed == batches[3 * ga :]
