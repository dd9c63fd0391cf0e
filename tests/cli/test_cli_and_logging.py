"""The demo command end to end, and metrics reaching report_to integrations (TensorBoard event files)."""

from __future__ import annotations

import json
import subprocess
import sys

import datasets
import numpy as np
from trl import SFTConfig, SFTTrainer

from sft_callbacks import SamplingPolicyCallback, TrainingDynamicsCallback

from ..support.helpers import sft_rows
from sft_callbacks.engine.compat import checkpointing_off


def test_demo_tiny_writes_annotated_dataset_and_data_map(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "sft_callbacks.cli", "demo", "--tiny", "--epochs", "3", "--train-rows", "48",
         "--noise", "0.25", "--output-dir", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "hardest samples" in proc.stdout and str(out / "annotated") in proc.stdout
    annotated = datasets.load_from_disk(str(out / "annotated"))
    assert annotated.num_rows == 48
    for col in ("prompt", "completion", "domain", "times_seen", "loss_last", "loss_mean", "loss_per_epoch",
                "token_accuracy", "corrupted", "confidence", "variability", "region", "flag_noisy"):
        assert col in annotated.column_names
    summary = json.loads((out / "summary.json").read_text())
    assert 10 <= sum(annotated["corrupted"]) == summary["planted_noise"] <= 12  # planted noise, recorded
    assert summary["steps"] == 3 * 6 and sum(annotated["times_seen"]) == 18 * 8
    assert set(summary["per_group_loss"]) <= set(annotated["domain"]) and len(summary["hardest"]) == 5
    assert set(summary["per_group_validation_loss"]) == set(annotated["domain"])  # every domain evaluated
    assert len(summary["strategies"]) == 4 and np.isclose(sum(summary["final_mixture"].values()), 1.0, atol=1e-3)
    assert "final training mixture" in proc.stdout
    # Data map: rows seen in >= 2 epochs are mapped; flags are the listed rows, at most the noise rate of them.
    dm = summary["data_map"]
    assert dm["rows_eligible"] > 0 and dm["rows_mapped"] >= dm["rows_eligible"]
    flagged_rows = [f["row"] for f in dm["flagged"]]
    assert 0 < len(flagged_rows) <= round(0.25 * dm["rows_eligible"])
    assert sorted(flagged_rows) == [i for i, f in enumerate(annotated["flag_noisy"]) if f]
    assert all(f["planted"] == annotated[f["row"]]["corrupted"] for f in dm["flagged"])
    assert "flagged as likely mislabeled" in proc.stdout and f"row {flagged_rows[0]}" in proc.stdout
    for png in ("data_map.png", "data_map_flags.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "data_map.csv").read_text().splitlines()[0].startswith("row,confidence,variability")


def test_demo_rejects_bad_arguments(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sft_callbacks.cli", "demo", "--tiny", "--epochs", "0", "--output-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "epochs must be >= 1" in proc.stderr


def test_cli_help_mentions_commands():
    proc = subprocess.run([sys.executable, "-m", "sft_callbacks.cli", "demo", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--tiny" in proc.stdout


class Uniformish(SamplingPolicyCallback):
    def compute_weights(self, ctx, reason):
        return np.linspace(1.0, 2.0, ctx.num_rows)


def test_metrics_reach_tensorboard(tmp_path, tokenizer, make_model):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "out"
    args = SFTConfig(
        output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=4, learning_rate=1e-3,
        report_to=["tensorboard"], logging_steps=2, use_cpu=True, save_strategy="no",
        max_length=96, **checkpointing_off(),
    )
    trainer = SFTTrainer(model=make_model(), args=args, train_dataset=sft_rows(32), processing_class=tokenizer,
                         callbacks=[TrainingDynamicsCallback(), Uniformish()])
    trainer.train()
    files = list(logdir.rglob("events.out.tfevents*"))
    assert files
    tags = set()
    for f in files:
        acc = EventAccumulator(str(f))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    for tag in ("train/sft/tracker/coverage", "train/sft/tracker/loss_last_mean", "train/sft/sampler/weight_updates",
                "train/sft/sampler/max_min_ratio"):
        assert tag in tags, sorted(tags)
    acc = EventAccumulator(str(files[0]))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("train/sft/tracker/coverage")]
    assert steps == [2, 4, 6]
