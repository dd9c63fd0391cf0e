"""curate / training_annotations: what a real run learnt, attached to the user's rows, filtered, every drop counted."""

from __future__ import annotations

import datasets
import numpy as np
import pandas as pd
import pytest
from trl import SFTConfig, SFTTrainer

from sft_callbacks import (
    CurriculumCallback,
    DataMapCallback,
    GroupBalanceCallback,
    TrainingDynamicsCallback,
    curate,
    training_annotations,
)

from ..support.helpers import sft_rows
from sft_callbacks.engine.compat import checkpointing_off


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer):
    from sft_callbacks.models import build_tiny_llama

    data = sft_rows(40).remove_columns(["uid"])
    # One row TRL drops (no completion token survives truncation): curate must keep it, with NaN statistics.
    long_prompt = [{"role": "user", "content": "word " * 400}]
    data = datasets.concatenate_datasets([data, datasets.Dataset.from_list(
        [{"prompt": long_prompt, "completion": [{"role": "assistant", "content": "x"}], "domain": "logic"}])])
    callbacks = [TrainingDynamicsCallback(), DataMapCallback(noise_rate=0.2),
                 CurriculumCallback(difficulty="length", pacing="linear", start=0.5, duration=0.5),
                 GroupBalanceCallback(group_column="domain")]
    args = SFTConfig(output_dir=str(tmp_path_factory.mktemp("run")), num_train_epochs=3, per_device_train_batch_size=8,
                     learning_rate=3e-3, report_to=[], use_cpu=True, save_strategy="no", max_length=256, seed=0,
                     **checkpointing_off(), disable_tqdm=True, logging_steps=5)
    model = build_tiny_llama(tokenizer, hidden_size=64, num_layers=1, seed=0, attn_implementation="eager")
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=callbacks)
    trainer.train()
    data.prepared_labels = trainer.train_dataset["labels"]  # TRL's prepared rows (dropped ones removed, order kept)
    return data, callbacks


def test_annotations_come_from_every_callback_and_line_up_with_user_rows(trained):
    data, callbacks = trained
    dyn, data_map, curriculum, _ = callbacks
    ann = training_annotations(callbacks)
    assert len(ann) == len(data) and ann.index.name == "row"
    for col in ("times_seen", "loss_mean", "token_accuracy", "dropped_by_trl", "weight", "confidence",
                "variability", "region", "flag_noisy", "difficulty"):
        assert col in ann.columns, col
    dropped = ann["dropped_by_trl"].to_numpy()
    assert dropped[-1] and dropped.sum() < 10  # the over-long row (plus any other the 512-token vocab made too long)
    assert (np.isnan(ann["weight"]) == dropped).all() and (np.isnan(ann["difficulty"]) == dropped).all()
    kept = ann[~dropped]
    assert np.isclose(kept["weight"].mean(), 1.0)  # relative to uniform
    # Same numbers as each callback's own view.
    pd.testing.assert_series_equal(ann["loss_mean"], dyn.dynamics()["loss_mean"], check_names=False)
    assert ann["flag_noisy"].tolist() == data_map.data_map()["flag_noisy"].tolist()
    # Difficulty "length" = trained tokens per row, counted here independently from TRL's prepared labels.
    trained_tokens = [int((np.asarray(labels[1:]) != -100).sum()) for labels in data.prepared_labels]
    assert kept["difficulty"].tolist() == trained_tokens
    # Balance made rare domains weigh more per row than the most common one.
    domains = np.asarray(data["domain"])[~dropped]
    per_domain = kept.groupby(domains)["weight"].mean()
    counts = pd.Series(domains).value_counts()
    assert per_domain[counts.idxmin()] > per_domain[counts.idxmax()]


def test_to_dataset_carries_every_annotation_curate_would_and_all_of_them_have_a_meaning(trained):
    from sft_callbacks.engine.columns import COLUMN_MEANINGS

    data, callbacks = trained
    ann = training_annotations(callbacks)
    for cb in callbacks:  # any of the run's callbacks gives the whole run's annotations
        annotated = cb.to_dataset(data)
        assert annotated.num_rows == len(data) and annotated.column_names[: len(data.column_names)] == data.column_names
        added = [c for c in annotated.column_names if c not in data.column_names]
        assert set(ann.columns) <= set(added), set(ann.columns) - set(added)
        assert {"weight", "difficulty", "epochs_seen", "token_accuracy_mean", "n_duplicates"} <= set(added)
        missing = [c for c in added if c not in COLUMN_MEANINGS]
        assert not missing, f"annotation columns without a meaning in sft_callbacks.engine.columns: {missing}"
    frame = annotated.to_pandas()
    for c in ("weight", "difficulty", "confidence", "loss_mean"):  # the same numbers as curate's
        np.testing.assert_allclose(frame[c].to_numpy(float), ann[c].to_numpy(float), rtol=1e-6, equal_nan=True)
    assert frame["flag_noisy"].tolist() == ann["flag_noisy"].tolist()
    assert frame["dropped_by_trl"].tolist() == ann["dropped_by_trl"].tolist()


def test_curate_drops_flags_applies_quotas_and_top_k_and_counts_every_drop(trained):
    data, callbacks = trained
    out = curate(data, callbacks, group_column="domain", quotas=4, top_k=10, score="loss_mean")
    n_flagged = int(training_annotations(callbacks)["flag_noisy"].sum())
    assert n_flagged > 0 and out.dropped["flag_noisy"] == n_flagged
    assert sum(out.dropped.values()) == out.rows_in - out.rows_out == len(data) - len(out.dataset)
    assert out.rows_out == 10
    ann = out.annotations
    assert (ann["drop_reason"] == "").sum() == 10 and ann["kept"].sum() == 10
    assert not ann.loc[ann.kept, "flag_noisy"].any()
    assert (ann[ann.kept].groupby("domain").size() <= 4).all()
    # Top-k by loss among what survived the quotas: nothing dropped by top_k has a higher loss than a kept row.
    topk_dropped = ann[ann.drop_reason == "top_k"]["loss_mean"]
    assert topk_dropped.max() <= ann[ann.kept]["loss_mean"].min()
    # Rows keep their input order, carry their source row, the user's columns and the annotations.
    src = out.dataset["source_row"][:]
    assert src == sorted(src) and out.dataset["prompt"][:] == [data[i]["prompt"] for i in src]
    assert {"weight", "confidence", "difficulty", "times_seen"} <= set(out.dataset.column_names)
    assert out.filters["drop"] == ["flag_noisy"] and [c["name"] for c in out.callbacks] == [
        "TrainingDynamicsCallback", "DataMapCallback", "CurriculumCallback", "GroupBalanceCallback"]
    assert out.callbacks[1]["config"]["noise_rate"] == 0.2
    counts = out.counts_by_group("domain")
    assert sum(v["before"] for v in counts.values()) == len(data)
    assert sum(v["after"] for v in counts.values()) == 10


def test_curate_without_callbacks_uses_columns_already_in_the_dataset():
    ds = datasets.Dataset.from_dict({"q": list("abcdef"), "g": list("xxyyzz"),
                                     "conflict": [True, False, False, False, False, True],
                                     "score": [0.1, 0.5, np.nan, 0.2, 0.9, 0.3]})
    out = curate(ds, group_column="g", quotas={"y": 1})
    assert out.dropped == {"conflict": 2, "quota": 1} and out.dataset["q"][:] in (["b", "c", "e"], ["b", "d", "e"])
    out = curate(ds, drop=(), top_k=2, score="score")
    assert out.dataset["q"][:] == ["b", "e"] and out.dropped == {"top_k": 4}  # NaN ranks last
    out = curate(ds, drop=(), top_k=2, score="score", ascending=True)
    assert out.dataset["q"][:] == ["a", "d"]
    # report_columns: data columns shown in the per-row report too, without being added to the data again
    out = curate(ds, drop=(), top_k=2, score="score", report_columns=["score", "g"])
    assert out.dataset.column_names == ["q", "g", "conflict", "score", "source_row"]
    assert out.annotations["score"].tolist()[:2] == [0.1, 0.5] and out.annotations["g"].tolist() == list("xxyyzz")
    assert out.annotations.loc[out.annotations.kept, "score"].tolist() == [0.5, 0.9]
    with pytest.raises(ValueError, match="report_columns .*'nope'"):
        curate(ds, report_columns=["nope"])


def test_bad_input_gets_clear_errors(trained):
    data, callbacks = trained
    ds = datasets.Dataset.from_dict({"q": list("abc"), "conflict": [1, 0, 0], "weight": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="empty"):
        curate(ds.select([]))
    with pytest.raises(ValueError, match="must be boolean"):
        curate(ds, drop=["conflict"])
    with pytest.raises(ValueError, match="no such column"):
        curate(ds, drop=["flag_noisy"])
    with pytest.raises(ValueError, match="quotas need group_column"):
        curate(ds, drop=(), quotas=1)
    with pytest.raises(ValueError, match="top_k needs score"):
        curate(ds, drop=(), top_k=1)
    with pytest.raises(ValueError, match="every row was dropped"):
        curate(ds.cast_column("conflict", datasets.Value("bool")).map(lambda r: {"conflict": True}))
    ann = pd.DataFrame({"loss": np.arange(3.0)})
    curate(ds, annotations=ann, drop=(), top_k=1, score="loss")
    assert list(ann.columns) == ["loss"]  # the caller's frame is not modified
    with pytest.raises(ValueError, match="cover 3 rows but the dataset has 41"):
        curate(data, annotations=pd.DataFrame({"x": [1, 2, 3]}))
    with pytest.raises(ValueError, match="already has columns"):
        curate(data.add_column("weight", [1.0] * len(data)), callbacks)
    with pytest.raises(ValueError, match="quotas name groups"):
        curate(data, callbacks, group_column="domain", quotas={"nope": 1})
    with pytest.raises(TypeError, match="not sft-callbacks callbacks"):
        curate(data, [object()])
    with pytest.raises(RuntimeError, match="not been attached"):
        curate(data, [DataMapCallback()])
