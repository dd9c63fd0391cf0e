"""With a frozen model (learning_rate=0), every captured per-sample loss equals an independent forward of that row."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import Trainer, TrainingArguments
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from sft_callbacks import TrainingDynamicsCallback

from ..support.helpers import plain_trainer_rows, reference_losses, reference_visit_stats, sft_rows, visits_by_row
from sft_callbacks.engine.compat import checkpointing_off


def _sft_config(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path),
        max_steps=6,
        per_device_train_batch_size=4,
        learning_rate=0.0,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=2,
        max_length=96,
        seed=0,
        **checkpointing_off(),
    )
    base.update(kw)
    return SFTConfig(**base)


CONFIGS = {
    "padded": {},
    "padding_free": {"padding_free": True, "max_length": None},
    "grad_accum_2": {"gradient_accumulation_steps": 2, "max_steps": 3},
    "workers_2": {"dataloader_num_workers": 2},
    "packed": {"packing": True, "max_length": 256, "max_steps": 4, "per_device_train_batch_size": 2},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_sft_losses_match_independent_forward(name, tmp_path, tokenizer, make_model, small_sft):
    model = make_model()
    cb = TrainingDynamicsCallback()
    trainer = SFTTrainer(
        model=model,
        args=_sft_config(tmp_path, **CONFIGS[name]),
        train_dataset=small_sft,
        processing_class=tokenizer,
        callbacks=[cb],
    )
    trainer.train()
    frame = cb.dynamics()
    prepared = trainer.train_dataset
    if name == "packed":
        # Statistics per packed sample; check each against a forward of that sample alone.
        seen = frame[frame.times_seen > 0]
        assert len(seen) >= 8
        ids, labels = [], []
        for _, row in seen.iterrows():
            pack = prepared[int(row["pack"])]
            starts = np.concatenate([[0], np.cumsum(pack["seq_lengths"])])
            k = int(row.name) - int(np.flatnonzero(frame["pack"].to_numpy() == int(row["pack"]))[0])
            ids.append(pack["input_ids"][starts[k] : starts[k + 1]])
            labels.append(pack["labels"][starts[k] : starts[k + 1]])
        ref = reference_losses(model, ids, labels)
        np.testing.assert_allclose(seen["loss_last"].to_numpy(), ref[:, 0], atol=1e-4, rtol=0)
        np.testing.assert_allclose(seen["token_accuracy"].to_numpy(), ref[:, 1], atol=1e-6)
        return
    # Unpacked: map via the `uid` column TRL kept (independent of how the tracker maps rows).
    assert len(frame) == len(small_sft)
    seen = frame[frame.times_seen > 0]
    assert len(seen) >= 12
    by_uid = {u: i for i, u in enumerate(prepared["uid"])}
    rows = [prepared[by_uid[int(u)]] for u in seen.index]  # user row r has uid r
    ref = reference_losses(model, [r["input_ids"] for r in rows], [r["labels"] for r in rows])
    np.testing.assert_allclose(seen["loss_last"].to_numpy(), ref[:, 0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(seen["loss_mean"].to_numpy(), ref[:, 0], atol=1e-4, rtol=0)
    # The visit log: one entry per pass, each equal to the independent forward (float16 storage).
    tracker = cb.session.tracker
    assert len(tracker.visits) == int(frame["times_seen"].sum()) == tracker.observed
    visits = visits_by_row(tracker)
    extra = reference_visit_stats(model, [r["input_ids"] for r in rows], [r["labels"] for r in rows])
    for i, row in enumerate(seen.index):
        for v in visits[int(row)]:
            assert abs(float(v["loss"]) - ref[i, 0]) <= 2e-3 * max(1.0, ref[i, 0])
            assert bool(v["correct"]) == bool(extra[i, 0])
            assert abs(float(v["min_logp"]) - extra[i, 1]) <= 2e-3 * max(1.0, abs(extra[i, 1]))
            assert np.isnan(v["margin"])  # TRL's fused head gives no runner-up logit
    np.testing.assert_allclose(seen["token_accuracy"].to_numpy(), ref[:, 1], atol=1e-6)
    # Every drawn sample was attributed: draws = steps x batch (x accumulation).
    args = trainer.args
    assert frame.times_seen.sum() == args.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps
    assert cb.session.tracker.unmatched == 0
    assert np.isfinite(seen["entropy_mean"]).all()
    mem = cb.session.tracker.memory_per_sample()
    assert mem["fixed"] <= 52 and mem["fixed"] + mem["mapping"] <= 64  # flat arrays, <= 64 bytes per sample
    assert mem["history"] == 6  # one epoch: float32 loss sum + uint16 count
    # the visit log: 15 bytes per visit
    assert mem["visits"] * len(cb.session.tracker.index.keys) == 15 * len(cb.session.tracker.visits) == 15 * frame.times_seen.sum()


def test_plain_trainer_losses_match(tmp_path, tokenizer, make_model, small_sft):
    data = plain_trainer_rows(small_sft, tokenizer, drop=("prompt", "completion", "domain"))
    model = make_model()
    cb = TrainingDynamicsCallback()
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=4, learning_rate=0.0,
            report_to=[], use_cpu=True, save_strategy="no", seed=0,
        ),
        train_dataset=data,
        data_collator=DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id),
        callbacks=[cb],
    )
    trainer.train()
    frame = cb.dynamics()
    seen = frame[frame.times_seen > 0]
    assert len(seen) >= 10 and len(frame) == len(data)
    ref = reference_losses(model, [data[int(i)]["input_ids"] for i in seen.index], [data[int(i)]["labels"] for i in seen.index])
    np.testing.assert_allclose(seen["loss_last"].to_numpy(), ref[:, 0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(seen["token_accuracy"].to_numpy(), ref[:, 1], atol=1e-6)
    assert seen["entropy_mean"].isna().all()  # the plain Trainer's forward gives no entropy
    # With logits, every visit also carries the AUM margin (given token's logit minus the best other one).
    extra = reference_visit_stats(model, [data[int(i)]["input_ids"] for i in seen.index],
                                  [data[int(i)]["labels"] for i in seen.index])
    visits = visits_by_row(cb.session.tracker)
    for i, row in enumerate(seen.index):
        for v in visits[int(row)]:
            assert bool(v["correct"]) == bool(extra[i, 0])
            assert abs(float(v["min_logp"]) - extra[i, 1]) <= 2e-3 * max(1.0, abs(extra[i, 1]))
            assert abs(float(v["margin"]) - extra[i, 2]) <= 2e-3 * max(1.0, abs(extra[i, 2]))


def test_dropped_and_duplicate_rows(tmp_path, tokenizer, make_model, small_sft):
    import datasets

    base = sft_rows(20)
    # Row 20 duplicates row 3; row 21 has a prompt so long that truncation leaves no completion token.
    dup = base.select([3])
    long_prompt = [{"role": "user", "content": "word " * 600}]
    long_row = datasets.Dataset.from_list(
        [{"prompt": long_prompt, "completion": base[0]["completion"], "domain": "x", "uid": 21}], features=base.features
    )
    data = datasets.concatenate_datasets([base, dup, long_row])
    cb = TrainingDynamicsCallback()
    trainer = SFTTrainer(
        model=make_model(), args=_sft_config(tmp_path, max_steps=12, max_length=400), train_dataset=data,
        processing_class=tokenizer, callbacks=[cb],
    )
    trainer.train()
    frame = cb.dynamics()
    assert len(frame) == 22
    assert bool(frame.loc[21, "dropped"]) and np.isnan(frame.loc[21, "loss_last"])
    assert not frame.drop(index=21)["dropped"].any(), frame[frame.dropped]
    assert frame.loc[3, "n_duplicates"] == 2 and frame.loc[20, "n_duplicates"] == 2
    assert frame.loc[3, "times_seen"] == frame.loc[20, "times_seen"]
    annotated = cb.to_dataset(data)
    assert annotated.num_rows == 22 and annotated["uid"] == data["uid"]
    assert annotated["times_seen"] == frame["times_seen"].tolist()
