"""The per-step overhead benchmark (scripts/bench_overhead.py) times the domain-adaptation arm for real."""

from __future__ import annotations

import json

import pytest

from benchmarks import overhead as bench_overhead


def test_domain_adaptation_arm_runs_the_regulariser_in_the_timed_steps(tmp_path):
    out = tmp_path / "overhead.json"
    rc = bench_overhead.main(["--model", "tiny", "--steps", "4", "--warmup", "1", "--repeats", "1", "--seq-len", "64",
                              "--batch-size", "4", "--threads", "1", "--tiny-hidden", "64", "--tiny-layers", "2",
                              "--callbacks", "domain-adversarial", "--out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    (b,) = [r for r in result["runs"] if r["arm"] == "B"]
    assert b["callbacks"] == ["TrainingDynamicsCallback", "DomainAdaptationCallback"]
    metrics = b["domain_metrics"]  # the regulariser ran inside the timed steps, reversal on from step 1
    assert metrics["sft/domain/aux_loss"] > 0 and metrics["sft/domain/strength"] > 0
    assert 0 <= metrics["sft/domain/head_accuracy"] <= 1
    assert len(b["step_times_s"]) == 4 and result["summary"]["ratio_per_token_median_of_rounds"] > 0
    with pytest.raises(SystemExit):
        bench_overhead.main(["--callbacks", "domain-coral"])


def test_infobatch_arm_prunes_inside_the_timed_steps(tmp_path):
    # 16 rows in batches of 4: 4 steps an epoch, so 12 steps span three epochs and the last two prune.
    out = tmp_path / "overhead.json"
    rc = bench_overhead.main(["--model", "tiny", "--steps", "12", "--warmup", "1", "--repeats", "1", "--seq-len", "64",
                              "--batch-size", "4", "--rows", "16", "--threads", "1", "--tiny-hidden", "64",
                              "--tiny-layers", "2", "--callbacks", "infobatch", "--out", str(out)])
    assert rc == 0
    (b,) = [r for r in json.loads(out.read_text())["runs"] if r["arm"] == "B"]
    assert b["callbacks"] == ["TrainingDynamicsCallback", "InfoBatchRecorded"]
    assert b["sampler_installed"] and 0 < b["prune_max_skipped_fraction"] < 0.5  # half of the learnt rows at most
    assert len(b["step_times_s"]) == 12
