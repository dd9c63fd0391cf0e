"""The demo command end to end, and metrics reaching report_to integrations (TensorBoard event files)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import datasets
import numpy as np
import pytest
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
    assert annotated.num_rows == 48 and set(annotated["domain"]) == {"chat_kind", "language", "topic"}
    for col in ("prompt", "completion", "domain", "times_seen", "loss_last", "loss_mean", "loss_per_epoch",
                "token_accuracy", "corrupted", "confidence", "variability", "region", "flag_noisy", "weight"):
        assert col in annotated.column_names
    summary = json.loads((out / "summary.json").read_text())
    assert sum(annotated["corrupted"]) == summary["planted_noise"] == 12  # planted noise, recorded
    # 3 epochs of 48 rows at batch 8, rounded up to a multiple of the 4 evaluations
    assert summary["steps"] == 20 and sum(annotated["times_seen"]) == 20 * 8
    assert summary["strategies"] == ["ValidationGuidedResamplingCallback"]
    # The validation curve: one point per evaluation, the last at the last step, with its error and each domain.
    curve = summary["validation"]["curve"]
    assert [p["step"] for p in curve] == [5, 10, 15, 20] and all(p["se"] > 0 for p in curve)
    assert all(set(p["by_domain"]) == {"chat_kind", "language", "topic"} for p in curve)
    best = min(p["loss"] for p in curve)
    assert summary["validation"]["ended_within_best"] == (curve[-1]["loss"] <= best + summary["validation"]["best"]["se"])
    assert set(summary["test"]["exact_match_by_domain"]) == {"chat_kind", "language", "topic"}
    mix = summary["mixture"]
    assert np.isclose(sum(mix["drawn"].values()), 1.0, atol=1e-3) and mix["updates"]
    assert mix["why"][0].startswith(f"step {mix['updates'][0]['step']}: starts from the validation set's mix")
    assert "why the mixture moved:" in proc.stdout and mix["why"][0] in proc.stdout
    assert "test exact match: " in proc.stdout and "validation loss per evaluation" in proc.stdout
    # Data map: rows seen in >= 2 epochs are mapped; the listed flags are the annotated ones, checked against the
    # planted answers.
    dm = summary["data_map"]
    assert dm["rows_eligible"] > 0 and dm["rows_mapped"] >= dm["rows_eligible"]
    flagged_rows = [f["row"] for f in dm["flagged"]]
    assert sorted(flagged_rows) == [i for i, f in enumerate(annotated["flag_noisy"]) if f]
    assert all(f["planted"] == annotated[f["row"]]["corrupted"] for f in dm["flagged"])
    if flagged_rows:
        assert dm["precision"] == round(sum(f["planted"] for f in dm["flagged"]) / len(flagged_rows), 4)
    assert "flagged as likely mislabeled" in proc.stdout
    for png in ("data_map.png", "data_map_flags.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "data_map.csv").read_text().splitlines()[0].startswith("row,confidence,variability")


def test_demo_compare_prints_both_runs_and_their_differences(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "sft_callbacks.cli", "demo", "--tiny", "--compare", "--max-steps", "8",
         "--train-rows", "48", "--output-dir", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    a, b = summary["runs"]["with_callbacks"], summary["runs"]["plain"]
    assert a["strategies"] == ["ValidationGuidedResamplingCallback"] and b["strategies"] == []
    assert a["output_dir"] == str(out / "with_callbacks") and b["output_dir"] == str(out / "plain")
    assert (out / "plain" / "annotated").is_dir() and (out / "with_callbacks" / "annotated").is_dir()
    diff = summary["difference"]
    assert diff["validation_loss"] == round(a["validation"]["final"]["loss"] - b["validation"]["final"]["loss"], 4)
    assert diff["test_exact_match"] == round(a["test"]["exact_match"] - b["test"]["exact_match"], 4)
    # The plain run only observes: nothing moves its mixture, so it logs no update and no reason.
    assert b["mixture"]["updates"] == [] and b["mixture"]["why"] == []
    assert a["mixture"]["drawn"] != b["mixture"]["drawn"]  # the validation mix moved the run with callbacks
    side = proc.stdout.split("== side by side (with callbacks - plain) ==", 1)[1]
    assert f"{diff['validation_loss']:+.4f}" in side and f"{diff['test_exact_match']:+.3f}" in side
    assert "== with callbacks ==" in proc.stdout and "== plain run" in proc.stdout
    assert proc.stderr.count("with callbacks:") >= 1 and proc.stderr.count("plain:") >= 1  # one labelled bar each


def test_demo_console_has_no_setup_noise(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sft_callbacks.cli", "demo", "--tiny", "--max-steps", "4", "--train-rows", "24",
         "--output-dir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    for noise in ("real_accelerator", "Setting accelerator", "FutureWarning", "Loading weights", "[A"):
        assert noise not in text, noise
    bars = {m.group(1) for m in re.finditer(r"\|\s*\d+/(\d+) \[", proc.stderr)}
    assert bars == {"4"}  # one progress bar, over the training steps (no bar per evaluation)


def test_demo_rejects_bad_arguments(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sft_callbacks.cli", "demo", "--tiny", "--epochs", "0", "--output-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "epochs must be >= 1" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "sft_callbacks.cli", "demo", "--tiny", "--compare", "--no-strategies",
         "--output-dir", str(tmp_path)], capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "drop --no-strategies" in proc.stderr
    from sft_callbacks.demo import run_demo

    for kwargs, message in [({"max_steps": 0}, "max_steps must be >= 1"), ({"noise": 1.0}, "noise must be in"),
                            ({"compare": True, "push_to": "me/x"}, "--push without --compare"),
                            ({"train_rows": 5000}, "train_rows must be between 3 and 1200")]:
        with pytest.raises(ValueError, match=message):
            run_demo(str(tmp_path / "bad"), tiny=True, **kwargs)


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
