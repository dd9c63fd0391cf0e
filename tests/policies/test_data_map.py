"""DataMapCallback: cartography from the training passes separates corrupted answers; flags; plot; denoising."""

from __future__ import annotations

import numpy as np
import pytest
from trl import SFTConfig, SFTTrainer

from sft_callbacks import DataMapCallback, TrainingDynamicsCallback, plot_data_map
from sft_callbacks.policies.data_map import assign_regions, data_map_coordinates, flag_noisy
from sft_callbacks.engine.compat import checkpointing_off

from ..support.helpers import FRUITS, TOOLS, corrupted_labels


def test_coordinates_regions_and_flags_on_arrays():
    loss = np.array([[0.05, 0.04, 0.03], [3.0, 3.1, 2.9], [0.1, 2.5, 0.1], [np.nan, np.nan, 0.2]])
    c = data_map_coordinates(loss)
    assert c["confidence"][0] > 0.9 and c["confidence"][1] < 0.1
    assert c["variability"][2] > c["variability"][0] and c["epochs_seen"].tolist() == [3, 3, 3, 1]
    assert c["forgetting_events"].tolist() == [0, 0, 1, 0]
    regions = assign_regions(c["confidence"], c["variability"])
    assert regions[2] == "ambiguous" and regions[1] == "hard-to-learn"
    flags = flag_noisy(c["confidence"], c["variability"], c["epochs_seen"], rate=0.34)
    assert flags.tolist() == [False, True, False, False]  # row 3 was seen in only one epoch


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="noise_rate"):
        DataMapCallback(noise_rate=1.5)
    with pytest.raises(ValueError, match="min_epochs"):
        DataMapCallback(min_epochs=0)
    with pytest.raises(ValueError, match="noise_score must be one of"):
        DataMapCallback(noise_score="loss")
    with pytest.raises(ValueError, match="fallback_rate must be in"):
        DataMapCallback(fallback_rate=1.0)
    with pytest.raises(RuntimeError, match="not been attached"):
        DataMapCallback().data_map()


def test_plot_refuses_a_map_without_coordinates(tmp_path):
    import pandas as pd

    empty = pd.DataFrame({"confidence": [np.nan], "variability": [np.nan], "region": [""], "flag_noisy": [False]})
    with pytest.raises(ValueError, match="at least two epochs"):
        plot_data_map(empty, str(tmp_path / "m.png"))
    with pytest.raises(ValueError, match="lacks columns"):
        plot_data_map(pd.DataFrame({"loss": [1.0]}), str(tmp_path / "m.png"))
    assert not (tmp_path / "m.png").exists()


def test_data_map_separates_corrupted_answers_in_real_training(tmp_path, tokenizer, make_model):
    data = corrupted_labels(192)
    cb = DataMapCallback(noise_rate=0.25)
    args = SFTConfig(output_dir=str(tmp_path), num_train_epochs=8, per_device_train_batch_size=8, learning_rate=3e-3,
                     lr_scheduler_type="constant", report_to=[], use_cpu=True, save_strategy="no", max_length=160,
                     seed=0, **checkpointing_off(), logging_steps=5, disable_tqdm=True)
    trainer = SFTTrainer(model=make_model(hidden_size=128), args=args, train_dataset=data, processing_class=tokenizer,
                         callbacks=[TrainingDynamicsCallback(), cb])
    trainer.train()
    frame = cb.data_map()
    assert len(frame) == len(data)
    corrupted = np.asarray(data["corrupted"])
    ok = ~frame.dropped if "dropped" in frame else np.ones(len(frame), bool)
    score = frame["noise_score"].to_numpy()
    # AUROC of noise_score for corrupted vs clean rows (Mann-Whitney).
    pos, neg = score[corrupted & ok], score[~corrupted & ok]
    auroc = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    # A 0.2M-parameter model from scratch only half-learns the word -> label rule in 8 epochs; measured 0.68
    # (deterministic on CPU), chance is 0.5 +- 0.05 here. The real-model target (>= 0.95) is the noise benchmark's.
    assert auroc > 0.6, auroc
    precision = corrupted[frame["flag_noisy"].to_numpy()].mean()
    assert precision > corrupted.mean() * 1.3  # flags are richer in corrupted rows than the base rate
    assert set(frame["region"]) <= {"easy-to-learn", "ambiguous", "hard-to-learn", ""}
    path = plot_data_map(frame, str(tmp_path / "map.png"))
    assert (tmp_path / "map.png").stat().st_size > 5000 and path.endswith("map.png")
    plot_data_map(frame, str(tmp_path / "flags.png"), color_by="flag_noisy")


def test_denoising_downweights_flagged_samples_after_the_set_epoch(tmp_path, tokenizer, make_model):
    data = corrupted_labels(96, seed=1)
    cb = DataMapCallback(noise_rate=0.25, downweight_after_epochs=3, downweight=0.0)
    args = SFTConfig(output_dir=str(tmp_path), num_train_epochs=5, per_device_train_batch_size=8, learning_rate=3e-3,
                     report_to=[], use_cpu=True, save_strategy="no", max_length=160, seed=0,
                     **checkpointing_off(), logging_steps=5, disable_tqdm=True)
    trainer = SFTTrainer(model=make_model(hidden_size=96), args=args, train_dataset=data, processing_class=tokenizer,
                         callbacks=[TrainingDynamicsCallback(), cb])
    trainer.train()
    session = cb.session
    weights = session.sampler.current_weights
    per_sample_flags = cb._per_sample()["flag_noisy"]
    assert per_sample_flags.any() and (weights == 0).sum() >= 1  # flagged rows excluded from sampling
    assert session.weight_updates >= 1


def test_group_column_flags_within_each_group_so_a_hard_domain_does_not_take_every_flag(tmp_path, tokenizer,
                                                                                          make_model):
    import datasets

    # "labels": the learnable word -> label task with 25% flipped; "numbers": six-digit answers nobody can learn,
    # so every row there has low confidence and, without groups, takes the flags.
    labels = corrupted_labels(96, seed=2).add_column("group", ["labels"] * 96)
    # unique rows (identical rows share one sample, and so one flag): a row number after the word
    labels = labels.map(lambda r, i: {"prompt": [{"role": "user", "content": f"{r['prompt'][0]['content']} {i}"}]},
                        with_indices=True)
    rng = np.random.default_rng(0)
    numbers = datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": f"code {w}"}],
         "completion": [{"role": "assistant", "content": str(rng.integers(100000, 999999))}],
         "corrupted": False, "group": "numbers"} for w in FRUITS + TOOLS + [f"{w}s" for w in FRUITS + TOOLS]])  # fmt: skip
    data = datasets.concatenate_datasets([labels, numbers])
    groups = np.asarray(data["group"])

    def flags_of(rate=0.2, report=None, **kw):
        cb = DataMapCallback(noise_rate=rate, **kw)
        args = SFTConfig(output_dir=str(tmp_path), num_train_epochs=4, per_device_train_batch_size=8,
                         learning_rate=3e-3, lr_scheduler_type="constant", report_to=[], use_cpu=True,
                         save_strategy="no", max_length=160, seed=0, **checkpointing_off(),
                         disable_tqdm=True, logging_steps=50)  # fmt: skip
        SFTTrainer(model=make_model(hidden_size=96), args=args, train_dataset=data, processing_class=tokenizer,
                   callbacks=[cb]).train()
        frame = cb.data_map()
        if report is not None:
            report.update(cb.noise_report)
        return frame

    plain = flags_of()
    assert plain["flag_noisy"][groups == "numbers"].sum() > 0.9 * plain["flag_noisy"].sum()  # the failure mode
    grouped = flags_of(group_column="group")
    per_group = grouped.groupby(groups)
    eligible = per_group["epochs_seen"].apply(lambda s: int((s >= 2).sum()))
    flagged = per_group["flag_noisy"].sum()
    for g in ("labels", "numbers"):
        assert flagged[g] == round(0.2 * eligible[g])  # the noise rate applies within each group
    assert (plain["confidence"].to_numpy() == grouped["confidence"].to_numpy()).all()  # same map, other flags
    # Without a rate each group's is estimated, and used only where it can be trusted: a group with no separate
    # mode of wrong answers falls back to at most its few most suspicious rows, and the report says why.
    report = {}
    estimated = flags_of(rate=None, report=report, group_column="group")
    for g, r in report["groups"].items():
        assert r["rate_source"] in ("estimated", "fallback") and r["flagged"] == int(
            estimated["flag_noisy"][groups == g].sum())
        if r["rate_source"] == "fallback":
            assert r["reason"] and r["rate"] <= 0.1 and r["flagged"] <= round(0.1 * eligible[g])
        else:
            assert r["rate"] == r["estimated_rate"] <= 0.5
    # The unlearnable group has no wrong answers: whichever way its rate is decided (fallback, or a small mode the
    # mixture trusts, as on some CPUs' numerics) it flags only a few of its rows, never the share it took without
    # groups.
    assert estimated["flag_noisy"][groups == "numbers"].sum() <= 0.15 * eligible["numbers"]
    with pytest.raises(ValueError, match="missing|column"):
        flags_of(group_column="nope")
