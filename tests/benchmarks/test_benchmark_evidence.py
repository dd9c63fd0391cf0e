"""The evidence benchmark's code path (scripts/benchmark.py evidence) on the tiny model, in seconds.

The real run (SmolLM2, every arm x 3 seeds) is a benchmark, not a test; this runs the same functions end to end on
a random 2-layer Llama and a twentieth of the benchmark data, and checks the statistics on arrays.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import commands as benchmark
from benchmarks import evidence as bench_evidence


def test_best_constant_is_the_strongest_constant_on_the_rows():
    out = bench_evidence.best_constant(["x", "y", "y", "z", "z", "z"], ["d", "d", "d", "e", "e", "e"])
    assert out["d"] == {"answer": "y", "test_accuracy": pytest.approx(2 / 3)}
    assert out["e"] == {"answer": "z", "test_accuracy": 1.0}


def test_steps_to_reach_takes_the_first_evaluation_at_or_below():
    curve = [{"step": 10, "target_loss": 2.0}, {"step": 20, "target_loss": 1.0}, {"step": 30, "target_loss": 0.9}]
    assert bench_evidence.steps_to_reach(curve, 1.0) == 20
    assert bench_evidence.steps_to_reach(curve, 0.5) is None


def test_paired_summary_differences_are_per_seed():
    def run(arm, seed, loss, em):
        return {"arm": arm, "seed": seed, "exact_match": em, "exact_match_by_domain": {"d": em},
                "curve": [{"step": 5, "target_loss": loss + 1, "domain_loss": {"d": loss + 1}},
                          {"step": 10, "target_loss": loss, "domain_loss": {"d": loss}}]}

    runs = [run("uniform", 0, 1.0, 0.5), run("uniform", 1, 2.0, 0.6),
            run("static_target", 0, 0.8, 0.6), run("static_target", 1, 1.9, 0.6),
            run("all", 0, 1.5, 0.4), run("all", 1, 2.5, 0.5)]
    s = bench_evidence.paired_summary(runs, ["uniform", "static_target", "all"], [0, 1])
    assert s["static_target"]["vs_uniform"]["target_loss"]["mean"] == pytest.approx(-0.15)  # (-0.2 - 0.1) / 2
    assert s["all"]["vs_static_target"]["target_loss"]["mean"] == pytest.approx(0.65)  # (0.7 + 0.6) / 2
    assert s["uniform"]["vs_uniform"]["exact_match"]["mean"] == 0.0
    assert s["static_target"]["steps_to_uniform_final"] == [10, 10]
    assert s["all"]["steps_to_uniform_final"] == [None, None]  # never reached the same seed's uniform final loss


def test_merge_reports_pools_runs_and_refuses_mismatches(tmp_path):
    def run(arm, seed, loss):
        return {"arm": arm, "seed": seed, "exact_match": 0.5, "exact_match_by_domain": {"d": 0.5},
                "format_failures_by_domain": {"d": 0.0}, "drawn_shares": {"d": 1.0},
                "curve": [{"step": 10, "target_loss": loss, "domain_loss": {"d": loss}}]}

    cfg = {"model": "smollm2", "steps": 10, "eval_steps": 10, "seeds": [0], "arms": ["uniform", "static_target"],
           "workdir": "a", "threads": None, "cv_folds": 2}
    first = {"config": cfg, "runs": [run("uniform", 0, 1.0), run("static_target", 0, 0.8)], "commit": "abc",
             "noise": {"methods": {}, "flags": {}}, "total_seconds": 60.0, "command": "one"}
    second = {"config": {**cfg, "seeds": [0, 1], "arms": ["uniform", "static_target", "validation"], "cv_folds": 0},
              "runs": [run("uniform", 0, 1.0), run("uniform", 1, 2.0), run("static_target", 1, 1.5),
                       run("validation", 0, 0.7), run("validation", 1, 1.4)],
              "commit": "def", "noise": None, "total_seconds": 30.0, "command": "two"}
    merged = bench_evidence.merge_reports([first, second])
    assert len(merged["runs"]) == 6 and merged["config"]["seeds"] == [0, 1]
    assert merged["config"]["arms"] == ["uniform", "static_target", "validation"]
    assert merged["summary"]["validation"]["vs_static_target"]["target_loss"]["mean"] == pytest.approx(-0.1)
    assert merged["commit"] == "abc, def" and merged["total_seconds"] == 90.0 and merged["noise"] == {"methods": {}, "flags": {}}
    with pytest.raises(ValueError, match="different results"):
        bench_evidence.merge_reports([first, {**second, "runs": [run("uniform", 0, 1.5)]}])
    with pytest.raises(ValueError, match=r"differ in \['steps'\]"):
        bench_evidence.merge_reports([first, {**second, "config": {**second["config"], "steps": 20}}])
    # The command-line entry writes the pooled report and its tables.
    paths = []
    for i, rep in enumerate((first, second)):
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps({**rep, "data": _fake_data()}))
    out, md = tmp_path / "m.json", tmp_path / "m.md"
    assert benchmark.main(["evidence-merge", *map(str, paths), "--out", str(out), "--markdown", str(md)]) == 0
    assert json.loads(out.read_text())["summary"]["validation"]["seeds"] == [0, 1]
    assert "| validation |" in md.read_text()


def _fake_data():
    return {"target_shares": {"d": 1.0}, "train_shares": {"d": 1.0}, "noise_rate": 0.2, "noise_rates": {"d": 0.2},
            "majority": {"d": {"answer": "x", "test_accuracy": 0.3}}, "labels": {"d": ["x", "y"]}, "corrupted": 1}


def test_evidence_benchmark_runs_end_to_end_on_the_tiny_model(tmp_path):
    out, md = tmp_path / "evidence.json", tmp_path / "evidence.md"
    rc = benchmark.main(["evidence", "--model", "tiny", "--steps", "12", "--batch-size", "8", "--eval-steps", "4",
                         "--seeds", "0", "1", "--arms", "uniform", "static_target", "all", "--cv-folds", "2",
                         "--workdir", str(tmp_path / "runs"), "--out", str(out), "--markdown", str(md),
                         "--plots", str(tmp_path / "plots")])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["command"].startswith("python scripts/benchmark.py evidence")
    assert report["versions"]["trl"] and report["hardware"]
    assert {(r["arm"], r["seed"]) for r in report["runs"]} == {(a, s) for a in ("uniform", "static_target", "all")
                                                               for s in (0, 1)}
    data = report["data"]
    assert data["corrupted"] == round(0.2 * data["train_rows"])
    target, train_shares = data["target_shares"], data["train_shares"]
    for r in report["runs"]:
        assert [p["step"] for p in r["curve"]] == [4, 8, 12]
        for p in r["curve"]:
            losses = list(p["domain_loss"].values())
            assert min(losses) - 1e-9 <= p["target_loss"] <= max(losses) + 1e-9  # a weighted mean of the domains'
            assert sum(p["drawn_since_last_eval"].values()) == pytest.approx(1.0)
        assert sum(r["drawn_shares"].values()) == pytest.approx(1.0)
        assert 0.0 <= r["exact_match"] <= 1.0
    # The static target mixture draws closer to the target than uniform does (the train mix is far from it).
    def dist(r):
        return sum(abs(r["drawn_shares"][d] - target[d]) for d in target)

    for seed in (0, 1):
        by = {r["arm"]: r for r in report["runs"] if r["seed"] == seed}
        assert dist(by["static_target"]) < dist(by["uniform"])
        assert sum(abs(by["uniform"]["drawn_shares"][d] - train_shares[d]) for d in target) < 0.25
    summary = report["summary"]
    assert summary["uniform"]["vs_uniform"]["target_loss"]["mean"] == 0.0
    assert summary["all"]["vs_static_target"]["target_loss"]["n"] == 2
    noise = report["noise"]
    assert {"loss_first", "loss_last", "1 - token_accuracy_mean"} <= set(noise["methods"])
    for by in noise["methods"].values():
        assert set(by) == set(target)
    assert noise["cleanlab"]["folds"] == 2 and set(noise["cleanlab"]["by_domain"]) == set(target)
    text = md.read_text()
    assert "target val loss" in text and "Noise section" in text and "cleanlab, 2-fold out-of-sample" in text
    assert (tmp_path / "plots" / "evidence_target_loss.png").stat().st_size > 0
    assert (tmp_path / "plots" / "evidence_mixture.png").stat().st_size > 0


def test_domain_shift_benchmark_runs_the_regulariser_arms_on_the_tiny_model(tmp_path):
    out, md = tmp_path / "domain.json", tmp_path / "domain.md"
    rc = benchmark.main(["evidence", "--model", "tiny", "--steps", "8", "--batch-size", "8", "--eval-steps", "4",
                         "--seeds", "0", "--arms", "uniform", "domain:adversarial", "domain:mmd@0.5", "--cv-folds", "0",
                         "--target-domain", "topic", "--target-train-rows", "4", "--noise", "0",
                         "--workdir", str(tmp_path / "runs"), "--out", str(out), "--markdown", str(md),
                         "--plots", ""])  # not the committed plots in docs/benchmarks
    assert rc == 0
    report = json.loads(out.read_text())
    data = report["data"]
    assert data["target_shares"] == {"chat_kind": 0.0, "language": 0.0, "topic": 1.0}  # validation: target only
    assert data["corrupted"] == 0 and report["noise"] is None
    assert {r["arm"] for r in report["runs"]} == {"uniform", "domain:adversarial", "domain:mmd@0.5"}
    for r in report["runs"]:
        assert set(r["curve"][-1]["domain_loss"]) == {"topic"}
        assert r["drawn_shares"]["topic"] < 0.2  # a few target rows among the sources
    by = {r["arm"]: r for r in report["runs"]}
    assert by["domain:mmd@0.5"]["curve"][-1]["target_loss"] != by["uniform"]["curve"][-1]["target_loss"]
    assert "domain:adversarial" in md.read_text()
    with pytest.raises(SystemExit):
        benchmark.main(["evidence", "--model", "tiny", "--arms", "domain:coral"])


def test_sentiment_shift_benchmark_runs_combined_arms_on_its_own_set(tmp_path):
    out, md = tmp_path / "sentiment.json", tmp_path / "sentiment.md"
    arms = ["uniform", "balance", "balance+domain:adversarial@0.01/1"]
    rc = benchmark.main(["evidence", "--model", "tiny", "--steps", "8", "--batch-size", "8", "--eval-steps", "4",
                         "--seeds", "0", "--arms", *arms, "--cv-folds", "0", "--data", "sentiment_shift",
                         "--target-domain", "movie_reviews", "--noise", "0",
                         "--workdir", str(tmp_path / "runs"), "--out", str(out), "--markdown", str(md), "--plots", ""])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["data"]["target_shares"] == {"movie_reviews": 1.0, "tweets": 0.0}
    assert report["config"]["data"] == "sentiment_shift"
    by = {r["arm"]: r for r in report["runs"]}
    assert set(by) == set(arms)
    # The combined arm ran both callbacks: balance's target share and the regulariser's loss term.
    assert by["balance+domain:adversarial@0.01/1"]["drawn_shares"]["movie_reviews"] > 2 * by["uniform"][
        "drawn_shares"]["movie_reviews"]
    assert by["balance+domain:adversarial@0.01/1"]["curve"][-1]["target_loss"] != by["balance"]["curve"][-1][
        "target_loss"]


def test_domain_arms_parse_weight_layer_and_combinations():
    assert bench_evidence.domain_candidate("domain:adversarial@0.01/15") == {"method": "adversarial", "weight": 0.01,
                                                                              "layer": 15}
    assert bench_evidence.domain_candidate("domain:mmd") == {"method": "mmd"}
    assert bench_evidence.is_arm("balance+domain:mmd@0.5/-2")
    assert not bench_evidence.is_arm("uniform+domain:mmd")  # uniform means no callback at all
    assert not bench_evidence.is_arm("balance+domain:coral") and not bench_evidence.is_arm("domain:mmd/last")
    policies = bench_evidence.make_policies("balance+domain:mmd/3", {"a": 1.0, "b": 0.0})
    assert [type(p).__name__ for p in policies] == ["GroupBalanceCallback", "DomainAdaptationCallback"]
    assert policies[1].config.target_group == "a" and policies[1].config.layer == 3


def test_sentiment_shift_set_is_one_task_in_two_sources():
    from sft_callbacks.demo_data import load_benchmark_dataset

    train = load_benchmark_dataset("train", name="sentiment_shift")
    validation, test = (load_benchmark_dataset(s, name="sentiment_shift") for s in ("validation", "test"))
    assert train["domain"].count("tweets") == 640 and train["domain"].count("movie_reviews") == 40
    assert set(validation["domain"]) == set(test["domain"]) == {"movie_reviews"}
    assert len(validation) == 64 and len(test) == 160
    for ds in (train, validation, test):
        assert set(ds["answer"]) == {"positive", "negative"}
        assert {p[0]["content"] for p in ds["prompt"]} == {"Is the sentiment of this text positive or negative?"}
    assert 0.47 <= test["answer"].count("positive") / len(test) <= 0.53  # balanced: majority baseline about 0.5
    with pytest.raises(ValueError, match="unknown benchmark set 'imdb'"):
        load_benchmark_dataset("train", name="imdb")


def test_load_benchmark_dataset_splits_mixes_and_bad_split():
    from sft_callbacks.demo_data import load_benchmark_dataset

    train, val = load_benchmark_dataset("train"), load_benchmark_dataset("validation")
    assert len(train) == 1200 and len(val) == 160 and len(load_benchmark_dataset("test")) == 300
    shares = lambda ds: {d: ds["domain"].count(d) / len(ds) for d in set(ds["domain"])}  # noqa: E731
    assert shares(train)["language"] > 3 * shares(val)["language"]  # the easiest domain: over-represented
    assert shares(train)["topic"] < shares(val)["topic"] / 2  # the 10-label domain: under-represented
    assert set(train[0]) >= {"prompt", "completion", "domain", "answer", "split", "source"}
    assert train[0]["prompt"][0]["role"] == "system"  # replaces SmolLM2's default system prompt
    with pytest.raises(ValueError, match="unknown benchmark split 'dev'"):
        load_benchmark_dataset("dev")


def test_validation_candidate_arms_parse_and_unknown_arms_are_refused():
    assert bench_evidence.validation_candidate("validation:exp3@3") == {"method": "exp3", "learning_rate": 3.0}
    assert bench_evidence.validation_candidate("validation:aioli") == {"method": "aioli"}
    assert all(bench_evidence.is_arm(a) for a in bench_evidence.ARMS + bench_evidence.VALIDATION_CANDIDATES)
    assert not bench_evidence.is_arm("validation:greedy") and not bench_evidence.is_arm("validation:exp3@fast")
    (cb,) = bench_evidence.make_policies("validation:scaling@0.25", {"d": 1.0})
    assert cb.config.method == "scaling" and cb.config.learning_rate == 0.25
    with pytest.raises(SystemExit):
        benchmark.main(["evidence", "--arms", "uniform", "validation:greedy"])


def test_evidence_noise_benchmark_and_merge_run_on_the_tiny_model(tmp_path):
    reports = []
    for seed in (0, 1):
        out, md = tmp_path / f"noise{seed}.json", tmp_path / f"noise{seed}.md"
        rc = benchmark.main(["evidence-noise", "--model", "tiny", "--epochs", "2", "--seeds", str(seed),
                             "--workdir", str(tmp_path / "runs"), "--out", str(out), "--markdown", str(md)])
        assert rc == 0
        reports.append(out)
    report = json.loads(reports[0].read_text())
    domains = report["data"]["domains"]
    entry = report["per_seed"]["0"]
    from sft_callbacks import NOISE_SCORES

    assert set(entry["scores"]) == set(NOISE_SCORES)
    for by in (*entry["scores"].values(), entry["cleanlab"]):
        assert set(by) == set(domains) and all(0.0 <= by[d]["auroc"] <= 1.0 or np.isnan(by[d]["auroc"])
                                               for d in domains)
    assert set(entry["flags"]) == set(domains) and set(entry["test_em"]) == set(domains)
    assert report["visits_bytes_per_row"][0] == pytest.approx(15 * 2, rel=0.05)  # two epochs: ~2 visits a row
    assert set(report["targets"]["vs_cleanlab"]["0"]) == set(domains)
    merged_md = tmp_path / "merged.md"
    assert benchmark.main(["evidence-noise-merge", *map(str, reports), "--out", str(tmp_path / "merged.json"),
                           "--markdown", str(merged_md)]) == 0
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert sorted(merged["per_seed"]) == ["0", "1"] and merged["config"]["seeds"] == [0, 1]
    assert merged["pooled"]["loss_first"][domains[0]]["auroc"]["n"] == 2
    assert "cleanlab (out-of-sample)" in merged_md.read_text()
    with pytest.raises(ValueError, match="two reports"):
        benchmark.main(["evidence-noise-merge", str(reports[0]), str(reports[0]), "--out", str(tmp_path / "x.json")])


def test_flat_arm_is_the_uniform_run_and_compare_pairs_before_with_after(tmp_path):
    out = tmp_path / "evidence.json"
    rc = benchmark.main(["evidence", "--model", "tiny", "--steps", "8", "--batch-size", "8", "--eval-steps", "4",
                         "--seeds", "0", "1", "--arms", "uniform", "flat", "balance", "clean", "--cv-folds", "0",
                         "--data-fraction", "0.1", "--workdir", str(tmp_path / "runs"), "--out", str(out),
                         "--markdown", str(tmp_path / "evidence.md"), "--plots", ""])
    assert rc == 0
    report = json.loads(out.read_text())
    by = {(r["arm"], r["seed"]): r for r in report["runs"]}
    for seed in (0, 1):  # equal weights through our sampler: the plain run, curve for curve
        assert by[("flat", seed)]["curve"] == by[("uniform", seed)]["curve"]
        assert by[("flat", seed)]["exact_match"] == by[("uniform", seed)]["exact_match"]
        # The oracle trains on the same rows with the planted wrong answers put right: another run.
        assert by[("clean", seed)]["curve"] != by[("uniform", seed)]["curve"]
    # An earlier measurement of the same arms (here: balance renamed, its losses shifted by +0.1).
    before = {"runs": [dict(r, arm="balance_old", curve=[{**p, "target_loss": p["target_loss"] + 0.1} for p in r["curve"]])
                       if r["arm"] == "balance" else r for r in report["runs"]]}
    (tmp_path / "before.json").write_text(json.dumps(before))
    rc = benchmark.main(["evidence-compare", "--before", str(tmp_path / "before.json"), "--after", str(out),
                         "--arms", "flat", "balance", "--alias", "balance=balance_old", "--labels", "replacement",
                         "without", "--out", str(tmp_path / "cmp.json"), "--markdown", str(tmp_path / "cmp.md")])
    assert rc == 0
    cmp = json.loads((tmp_path / "cmp.json").read_text())["arms"]
    assert cmp["balance"]["seeds"] == [0, 1] and cmp["balance"]["before_arm"] == "balance_old"
    assert cmp["balance"]["after_minus_before"]["target_loss"]["mean"] == pytest.approx(-0.1)
    assert cmp["flat"]["after_minus_before"]["target_loss"]["mean"] == 0.0
    assert cmp["flat"]["after_vs_uniform"]["exact_match"]["mean"] == 0.0
    assert "Δ after - before" in (tmp_path / "cmp.md").read_text()


def test_convergence_reads_the_last_third_against_the_standard_error():
    def curve(losses, se=0.01):
        return [{"step": 10 * (i + 1), "target_loss": v, "target_loss_se": se} for i, v in enumerate(losses)]

    assert bench_evidence.convergence(curve([0.9, 0.6, 0.4, 0.30, 0.31, 0.305]))["converged"]
    falling = bench_evidence.convergence(curve([0.9, 0.6, 0.4, 0.35, 0.32, 0.28]))
    assert falling["converged"]  # the last is the lowest
    rising = bench_evidence.convergence(curve([0.9, 0.6, 0.4, 0.25, 0.30, 0.33]))
    assert not rising["converged"] and rising["lowest_last_third"] == 0.25
    assert not bench_evidence.convergence([{"step": 5, "target_loss": 0.3}])["converged"]  # no standard error recorded


def test_the_converged_budget_trains_on_half_of_each_domain_and_old_reports_still_merge():
    cfg = benchmark.evidence_config(benchmark.build_parser().parse_args(["evidence", "--budget", "converged"]))
    assert (cfg.train_fraction, cfg.steps, cfg.eval_steps, cfg.batch_size) == (0.5, 225, 25, 8)
    short = benchmark.evidence_config(benchmark.build_parser().parse_args(["evidence"]))
    assert (short.train_fraction, short.steps) == (1.0, bench_evidence.CPU_STEPS)
    data = bench_evidence.load_data(cfg)
    rows = np.asarray(data["train"]["domain"])
    assert {d: int((rows == d).sum()) for d in data["domains"]} == {"chat_kind": 260, "language": 280, "topic": 60}
    assert len(data["validation"]) == 160 and len(data["test"]) == 300  # the evaluation sets stay whole
    assert bench_evidence.config_value({}, "train_fraction") == 1.0  # a report written before the field
    assert bench_evidence.config_value({"train_fraction": 0.5}, "train_fraction") == 0.5


def test_arms_take_callback_options():
    assert bench_evidence.arm_options("static_target,max_passes=4") == ("static_target", {"max_passes": 4})
    assert bench_evidence.arm_options("validation,max_passes=none,reward=evidence,learning_rate=0.2") == (
        "validation", {"max_passes": None, "reward": "evidence", "learning_rate": 0.2})
    assert bench_evidence.arm_options("denoise,readmit=True,action=downweight") == (
        "denoise", {"readmit": True, "action": "downweight"})
    assert bench_evidence.is_arm("validation:exp3,stall_patience=3") and bench_evidence.is_arm("static_target,max_passes=4")
    assert not bench_evidence.is_arm("uniform,max_passes=4") and not bench_evidence.is_arm("static_target,max_passes")
    (balance,) = bench_evidence.make_policies("static_target,max_passes=4", {"a": 0.5, "b": 0.5})
    assert balance.config.max_passes == 4.0 and balance.config.strategy == "target"
    (guide,) = bench_evidence.make_policies("validation,max_passes=none,stall_patience=none", {"a": 1.0})
    assert guide.config.max_passes is None and guide.config.stall_patience is None
    assert bench_evidence.make_policies("clean", {"a": 1.0}) == []
    (prune,) = bench_evidence.make_policies("infobatch,prune_ratio=0.3", {"a": 1.0})
    assert prune.config.prune_ratio == 0.3
    with pytest.raises(ValueError, match="max_passes must be a number > 0"):
        bench_evidence.make_policies("validation,max_passes=0", {"a": 1.0})


def test_plausible_noise_gives_each_wrong_answer_its_confusable_label_and_the_oracle_trains_on_the_truth():
    from sft_callbacks.demo_data import load_benchmark_dataset

    cfg = bench_evidence.EvidenceConfig(noise=0.3, noise_kind="plausible", train_fraction=0.5)
    data = bench_evidence.load_data(cfg)
    train, clean = data["train"], data["clean_train"]
    bad = np.asarray(train["corrupted"])
    assert abs(bad.mean() - 0.3) < 0.01 and not any(clean["corrupted"])
    truth = dict(zip(range(len(clean)), clean["answer"]))
    for i in np.flatnonzero(bad):
        row = train[int(i)]
        assert row["answer"] == bench_evidence.CONFUSIONS[row["domain"]][truth[int(i)]]
        assert row["completion"][0]["content"] == row["answer"]
    # The same rows are corrupted as under uniform noise; only the wrong answer differs.
    uniform = bench_evidence.load_data(bench_evidence.EvidenceConfig(noise=0.3, train_fraction=0.5))["train"]
    assert uniform["corrupted"] == train["corrupted"] and uniform["answer"] != train["answer"]
    # Every confusable label is one of the domain's answers, never the answer itself.
    full = load_benchmark_dataset("train")
    for domain, pairs in bench_evidence.CONFUSIONS.items():
        labels = set(np.asarray(full["answer"])[np.asarray(full["domain"]) == domain].tolist())
        assert set(pairs) == labels and set(pairs.values()) <= labels
        assert all(k != v for k, v in pairs.items())
    with pytest.raises(ValueError, match="noise_kind"):
        bench_evidence.load_data(bench_evidence.EvidenceConfig(noise_kind="adversarial", data_fraction=0.05))


def test_the_cleaning_arms_run_and_report_their_compute_on_the_tiny_model(tmp_path):
    pytest.importorskip("cleanlab")
    out = tmp_path / "evidence.json"
    rc = benchmark.main(["evidence", "--model", "tiny", "--steps", "20", "--batch-size", "8", "--eval-steps", "10",
                         "--seeds", "0", "--arms", "uniform", "clean", "denoise,act_after_epochs=1,noise_rate=0.2",
                         "cleanlab",
                         "denoise,method=small_loss,noise_rate=0.2",
                         "--cv-folds", "2", "--data-fraction", "0.1", "--workdir", str(tmp_path / "runs"),
                         "--out", str(out), "--markdown", str(tmp_path / "evidence.md"), "--plots", ""])
    assert rc == 0
    report = json.loads(out.read_text())
    by = {r["arm"]: r for r in report["runs"]}
    rows = report["data"]["train_rows"]
    assert by["uniform"]["rows_processed"] == 160
    assert by["cleanlab"]["rows_processed"] == 3 * 160 and 0 < by["cleanlab"]["dropped_rows"] < rows
    held = by["denoise,act_after_epochs=1,noise_rate=0.2"]["withheld"]
    assert held["rows"] == pytest.approx(0.2 * rows, abs=2) and 0 <= held["precision"] <= 1 and held["step"] > 0
    left_out = by["denoise,method=small_loss,noise_rate=0.2"]["withheld"]  # what it leaves out at the end
    assert 0 < left_out["rows"] <= 0.2 * rows and left_out["step"] is None
    assert by["denoise,method=small_loss,noise_rate=0.2"]["rows_processed"] == 160  # the plain run's stream
    md = (tmp_path / "evidence.md").read_text()
    assert "**Compute and cleaning.**" in md and "**Denoising.**" in md
    table = report["denoising"]  # each arm against the plain run, the oracle and cleanlab, with its compute
    assert table["denoise,act_after_epochs=1,noise_rate=0.2"]["compute_vs_cleanlab"] == pytest.approx(1 / 3)
    assert table["cleanlab"]["compute_vs_cleanlab"] == 1.0 and "vs_cleanlab" not in table["cleanlab"]
    assert table["clean"]["vs_uniform"]["exact_match"]["mean"] == pytest.approx(
        by["clean"]["exact_match"] - by["uniform"]["exact_match"])


def test_the_denoising_table_pairs_each_arm_with_the_plain_run_the_oracle_and_cleanlab():
    from benchmarks.evidence_denoising import denoising_summary

    def run(arm, seed, em, rows=1800):
        return {"arm": arm, "seed": seed, "exact_match": em, "rows_processed": rows,
                "curve": [{"target_loss": 2.0 - em}]}

    plain, oracle, cl, new = [0.60, 0.70, 0.65], [0.80, 0.82, 0.85], [0.70, 0.72, 0.75], [0.72, 0.78, 0.73]
    runs = [run("uniform", s, v) for s, v in enumerate(plain)] + [run("clean", s, v) for s, v in enumerate(oracle)]
    runs += [run("cleanlab", s, v, 5400) for s, v in enumerate(cl)] + [run("denoise", s, v) for s, v in enumerate(new)]
    runs.append(run("denoise", 7, 0.99))  # no plain run of seed 7: not paired, left out
    table = denoising_summary(runs)
    e = table["denoise"]
    assert e["seeds"] == [0, 1, 2]
    assert e["vs_uniform"]["exact_match"]["mean"] == pytest.approx(np.mean(np.subtract(new, plain)))
    assert e["vs_uniform"]["target_loss"]["mean"] == pytest.approx(-np.mean(np.subtract(new, plain)))
    assert e["vs_cleanlab"]["exact_match"]["mean"] == pytest.approx(np.mean(np.subtract(new, cl)))
    assert e["gap_closed"] == pytest.approx(np.mean(np.subtract(new, plain)) / np.mean(np.subtract(oracle, plain)))
    assert e["compute_vs_cleanlab"] == pytest.approx(1 / 3)
    assert table["uniform"]["gap_closed"] == 0.0 and table["clean"]["gap_closed"] == 1.0
    assert denoising_summary([r for r in runs if r["arm"] != "clean"]) == {}  # no oracle: no table


def test_recorded_runs_of_the_same_configuration_are_reused_from_another_workdir(tmp_path, capsys):
    base = ["evidence", "--model", "tiny", "--steps", "4", "--batch-size", "8", "--eval-steps", "2", "--seeds", "0",
            "--cv-folds", "0", "--data-fraction", "0.1", "--plots", ""]
    assert benchmark.main(base + ["--arms", "uniform", "--workdir", str(tmp_path / "a"), "--out",
                                  str(tmp_path / "a.json"), "--markdown", ""]) == 0
    capsys.readouterr()
    assert benchmark.main(base + ["--arms", "uniform", "balance", "--workdir", str(tmp_path / "b"),
                                  "--reuse-runs", str(tmp_path / "a" / "partial_runs.json"),
                                  "--out", str(tmp_path / "b.json"), "--markdown", ""]) == 0
    out = capsys.readouterr().out
    assert "[uniform seed=0] taken from a recorded run" in out and "[balance seed=0] taken" not in out
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert [r for r in b["runs"] if r["arm"] == "uniform"][0]["curve"] == a["runs"][0]["curve"]
    # Another configuration's runs are not taken.
    assert benchmark.main([*base[:4], "6", *base[5:], "--arms", "uniform", "--workdir", str(tmp_path / "c"),
                           "--reuse-runs", str(tmp_path / "a" / "partial_runs.json"),
                           "--out", str(tmp_path / "c.json"), "--markdown", ""]) == 0
    assert "no runs of this configuration" in capsys.readouterr().out


def test_cleanlabs_folds_do_not_keep_the_plain_runs_from_being_reused_and_its_probabilities_are_kept(tmp_path, capsys):
    pytest.importorskip("cleanlab")
    base = ["evidence", "--model", "tiny", "--steps", "4", "--batch-size", "8", "--eval-steps", "2", "--seeds", "0",
            "--data-fraction", "0.1", "--plots", "", "--markdown", ""]
    assert benchmark.main(base + ["--arms", "uniform", "--cv-folds", "0", "--workdir", str(tmp_path / "a"),
                                  "--out", str(tmp_path / "a.json")]) == 0
    capsys.readouterr()
    run_b = base + ["--arms", "uniform", "cleanlab", "--cv-folds", "2", "--workdir", str(tmp_path / "b"),
                    "--reuse-runs", str(tmp_path / "a" / "partial_runs.json"), "--out", str(tmp_path / "b.json")]
    assert benchmark.main(run_b) == 0
    out = capsys.readouterr().out
    assert "[uniform seed=0] taken from a recorded run" in out
    # The cleanlab arm trained the folds once; the noise section of the same seed read them back.
    assert out.count("[cleanlab fold 1/2]") == 1 and "out-of-sample probabilities taken from" in out
    assert (tmp_path / "b" / "oos-2fold-0.json").exists()
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["noise"]["cleanlab"]["folds"] == 2
    assert next(r for r in report["runs"] if r["arm"] == "cleanlab")["cv_folds"] == 2
    # A cleanlab run recorded with other folds is not taken for this one.
    assert benchmark.main([*run_b[:-6], "--cv-folds", "3", "--workdir", str(tmp_path / "b"),
                           "--out", str(tmp_path / "c.json")]) == 0
    assert "[cleanlab seed=0] taken" not in capsys.readouterr().out


def test_a_workdir_keeps_every_invocations_runs(tmp_path):
    base = ["evidence", "--model", "tiny", "--steps", "4", "--batch-size", "8", "--eval-steps", "2", "--seeds", "0",
            "--cv-folds", "0", "--data-fraction", "0.1", "--plots", "", "--workdir", str(tmp_path / "w"),
            "--out", str(tmp_path / "r.json"), "--markdown", ""]
    assert benchmark.main(base + ["--arms", "uniform"]) == 0
    assert benchmark.main(base + ["--arms", "balance"]) == 0
    saved = json.loads((tmp_path / "w" / "partial_runs.json").read_text())
    assert sorted(r["arm"] for r in saved["runs"]) == ["balance", "uniform"]
    assert "_rows" in next(r for r in saved["runs"] if r["arm"] == "uniform")  # the noise section's scores


def test_the_pruning_table_pairs_shorter_runs_with_the_full_uniform_run_on_the_tiny_model(tmp_path):
    common = ["--model", "tiny", "--batch-size", "8", "--seeds", "0", "1", "--data-fraction", "0.1", "--cv-folds",
              "0", "--plots", "", "--markdown", ""]
    assert benchmark.main(["evidence", "--steps", "20", "--eval-steps", "20", "--arms", "uniform",
                           "--workdir", str(tmp_path / "full"), "--out", str(tmp_path / "full.json"), *common]) == 0
    assert benchmark.main(["evidence", "--steps", "12", "--eval-steps", "12", "--arms", "uniform", "infobatch",
                           "--workdir", str(tmp_path / "short"), "--out", str(tmp_path / "short.json"),
                           *common]) == 0
    out = tmp_path / "pruning.json"
    assert benchmark.main(["evidence-pruning", "--full", str(tmp_path / "full.json"), "--short",
                           str(tmp_path / "short.json"), "--out", str(out),
                           "--markdown", str(tmp_path / "pruning.md")]) == 0
    table = {e["arm"]: e for e in json.loads(out.read_text())["table"]}
    full = {r["seed"]: r for r in json.loads((tmp_path / "full.json").read_text())["runs"]}
    short = {(r["arm"], r["seed"]): r for r in json.loads((tmp_path / "short.json").read_text())["runs"]}
    ib = table["infobatch"]
    assert ib["steps"] == 12 and ib["seeds"] == [0, 1] and ib["rows_fraction"] == pytest.approx(12 / 20)
    assert ib["vs_full"]["exact_match"]["mean"] == pytest.approx(
        np.mean([short[("infobatch", s)]["exact_match"] - full[s]["exact_match"] for s in (0, 1)]))
    assert ib["vs_same_budget"]["target_loss"]["mean"] == pytest.approx(np.mean(
        [short[("infobatch", s)]["curve"][-1]["target_loss"] - short[("uniform", s)]["curve"][-1]["target_loss"]
         for s in (0, 1)]))
    assert "vs_same_budget" not in table["uniform"]
    # each run counts the tokens it trained on, so the per-step cost splits into tokens per step and time per token
    assert all(r["input_tokens"] > 12 * 8 for r in short.values())
    tokens = [short[("infobatch", s)]["input_tokens"] / short[("uniform", s)]["input_tokens"] for s in (0, 1)]
    assert ib["tokens_vs_same_budget"]["mean"] == pytest.approx(np.mean(tokens))
    assert ib["seconds_per_token_vs_same_budget"]["mean"] == pytest.approx(np.mean(
        [short[("infobatch", s)]["train_seconds"] / short[("uniform", s)]["train_seconds"] / t
         for s, t in zip((0, 1), tokens)]))
    assert "**Less compute.**" in (tmp_path / "pruning.md").read_text()
    with pytest.raises(ValueError, match="no uniform runs"):
        from benchmarks.evidence_pruning import pruning_summary
        pruning_summary({"runs": []}, [])


def test_the_pruning_table_pools_one_report_per_seed_and_refuses_a_run_recorded_twice():
    from benchmarks.evidence_pruning import pruning_summary

    def report(steps, seed, arms):
        return {"config": {"steps": steps},
                "runs": [{"arm": a, "seed": seed, "exact_match": em, "rows_processed": steps * 8,
                          "train_seconds": float(steps), "curve": [{"target_loss": 1 - em}]} for a, em in arms]}

    full = [report(225, s, [("uniform", 0.80 + 0.01 * s)]) for s in range(3)]
    short = [report(135, s, [("uniform", 0.75), ("infobatch", 0.78 + 0.01 * s)]) for s in range(3)]
    short.append(report(180, 0, [("infobatch", 0.90)]))
    table = {(e["steps"], e["arm"]): e for e in pruning_summary(full, short)}
    ib = table[(135, "infobatch")]
    assert ib["seeds"] == [0, 1, 2]
    assert ib["vs_full"]["exact_match"]["mean"] == pytest.approx(-0.02)
    assert ib["vs_same_budget"]["exact_match"]["mean"] == pytest.approx(0.04)
    assert ib["vs_full"]["exact_match"]["per_seed"] == pytest.approx([-0.02, -0.02, -0.02])
    assert ib["vs_same_budget"]["exact_match"]["per_seed"] == pytest.approx([0.03, 0.04, 0.05])
    assert table[(180, "infobatch")]["seeds"] == [0] and "vs_same_budget" not in table[(180, "infobatch")]
    assert "tokens_vs_same_budget" not in ib  # reports that did not count their tokens: no token split
    from benchmarks.evidence_pruning import pruning_markdown
    md = pruning_markdown(pruning_summary(full, short), 225)
    assert "| infobatch @ 135 | 0, 1, 2 | -0.020, -0.020, -0.020 | +0.0200, +0.0200, +0.0200 | +0.030, +0.040, +0.050 |" in md
    assert "| infobatch @ 180 | 0 | +0.100 | -0.1000 | — | — |" in md
    with pytest.raises(ValueError, match="infobatch seed 0 at 135 steps is recorded in two reports"):
        pruning_summary(full, short + [report(135, 0, [("infobatch", 0.5)])])
    with pytest.raises(ValueError, match="uniform seed 1 at 225 steps is recorded in two reports"):
        pruning_summary(full + [full[1]], short)
    with pytest.raises(ValueError, match=r"full reports are at different steps \[180, 225\]"):
        pruning_summary(full + [report(180, 3, [("uniform", 0.7)])], short)
