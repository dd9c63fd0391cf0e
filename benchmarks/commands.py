"""Benchmarks on real data with known ground truth.

``python scripts/benchmark.py evidence``: the evidence benchmark (code in ``benchmarks/evidence.py``).
SmolLM2-135M-Instruct learns three real tasks from an imbalanced training mix with 20% corrupted answers; the
target is a validation / test mix that differs from it. Arms: uniform, the static target mixture
(``GroupBalanceCallback`` with the validation mix as target shares), each strategy alone, all together; 3 seeds;
paired differences with 95% intervals; the noise section (the package's scores vs cleanlab on K-fold
out-of-sample probabilities) from the uniform runs. ``--quick``: 1 seed, uniform + static target + all, no
cleanlab folds. ``--model tiny``: the same code path on a random 2-layer model in seconds (the test suite runs it).

``python scripts/benchmark.py evidence-pruning``: evidence reports at fewer steps (uniform and a pruning strategy,
each on its own schedule) against uniform at the full budget, seed by seed (code in ``benchmarks/evidence_pruning.py``).

``python scripts/benchmark.py evidence-noise``: finding the wrong answers on the evidence data (code in
``benchmarks/evidence_noise.py``): a uniform mapping run of ``--epochs`` epochs per seed, every noise score of
``DataMapCallback`` against cleanlab on K-fold out-of-sample probabilities (same epochs), per domain, beside the
run's clean test accuracy.

``python scripts/benchmark.py screen``: uniform SFT on the balanced pool of every candidate domain
(``scripts/build_benchmark_data.py --candidates``): which domains the model learns within the budget.

``python scripts/benchmark.py noise``: the packaged demo set with 20% corrupted answers, trained uniformly for
``--epochs`` epochs with ``TrainingDynamicsCallback`` + ``DataMapCallback(noise_rate=...)``. Scores every row by
data-map confidence (raw and normalised within each domain), ``flag_noisy``, and loss-only baselines, and compares
them with cleanlab (``pip install "sft-callbacks[bench]"``) on the classification domains, fed the model's
normalised probability of each candidate answer: zero-shot, fine-tuned (in-sample) and, with ``--cv-folds K``,
out-of-sample from K models. Tiny model by default; ``--model smollm2`` uses SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from benchmarks import evidence as bench_evidence
import numpy as np
from benchmarks.scores import (
    castable_domains,
    candidate_probs,
    cleanlab_scores,
    fold_ids,
    score_metrics,
    within_groups,
)
from sft_callbacks.engine.compat import checkpointing_off


def model_and_lr(args, train, seed):
    """A fresh model, its tokenizer and learning rate: the tiny Llama (BPE trained on ``train``) or SmolLM2."""
    from sft_callbacks.models import model_for

    model, tokenizer = model_for(args.model, train, seed=seed)
    return model, tokenizer, args.lr or (3e-3 if args.model == "tiny" else 5e-5)


# ------------------------------------------------------------------------------------------------------------
# noise: finding the corrupted answers (demo set)
# ------------------------------------------------------------------------------------------------------------


def noise_config(args, lr, output_dir):
    """Uniform SFT for ``--epochs`` epochs: every row seen once per epoch (what the data map needs)."""
    import torch
    from trl import SFTConfig

    return SFTConfig(
        output_dir=output_dir,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=lr,
        lr_scheduler_type="constant",
        eval_strategy="no",
        logging_steps=25,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(),
        max_length=256,
        seed=args.seed,
        **checkpointing_off(),
        disable_tqdm=True,
    )


def stratified_rows(domains, per_domain: int | None, seed: int) -> np.ndarray:
    """At most ``per_domain`` rows of each domain (seeded), in dataset order; all rows without a cap."""
    domains = np.asarray(domains)
    if not per_domain:
        return np.arange(len(domains))
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(domains == d))[:per_domain] for d in np.unique(domains)]
    return np.sort(np.concatenate(keep))


def cross_validated_probs(train, castable, args) -> tuple[dict, float]:
    """Out-of-sample candidate probabilities: K models, each trained on the other folds, score their held-out
    fold (the textbook input of cleanlab)."""
    from trl import SFTTrainer

    folds = fold_ids(train["domain"], args.cv_folds, args.seed)
    merged: dict = {}
    t0 = time.perf_counter()
    for k in range(args.cv_folds):
        fit = train.select(np.flatnonzero(folds != k))
        held_idx = np.flatnonzero(folds == k)
        model, tokenizer, lr = model_and_lr(args, fit, args.seed)
        trainer = SFTTrainer(model=model, args=noise_config(args, lr, os.path.join(args.workdir, f"cv{k}")),
                             train_dataset=fit, processing_class=tokenizer)
        trainer.train()
        part = candidate_probs(trainer.model, tokenizer, train.select(held_idx), castable, args.score_batch_size)
        for d, p in part.items():
            m = merged.setdefault(d, {"rows": [], "labels": [], "pred_probs": []})
            m["rows"].append(held_idx[p["rows"]])
            m["labels"].append(p["labels"])
            m["pred_probs"].append(p["pred_probs"])
        print(f"[cv fold {k + 1}/{args.cv_folds}] {time.perf_counter() - t0:.0f}s", flush=True)
    out = {d: {key: np.concatenate(v) for key, v in m.items()} for d, m in merged.items()}
    return out, time.perf_counter() - t0


def noise(args) -> dict:
    """Train once with the data map on noisy answers; score every row by each method against the planted noise."""
    import datasets
    from trl import SFTTrainer

    from sft_callbacks import DataMapCallback, TrainingDynamicsCallback
    from sft_callbacks.demo_data import corrupt_answers, load_demo_dataset

    datasets.disable_progress_bars()
    from benchmarks.env import cpu_name, git_state

    commit = git_state()  # the code measured: taken before the runs
    full = corrupt_answers(load_demo_dataset("train"), args.noise, seed=1234)
    train = full.select(stratified_rows(full["domain"], args.train_rows, args.seed))
    timings = {}
    t_all = time.perf_counter()
    castable = castable_domains(full)  # on all 900 rows: a --train-rows cap must not make free-form answers a label set

    model, tokenizer, lr = model_and_lr(args, train, args.seed)
    t0 = time.perf_counter()
    zero_shot = candidate_probs(model, tokenizer, train, castable, args.score_batch_size)
    timings["score_zero_shot_s"] = time.perf_counter() - t0
    print(f"[zero-shot candidate probs] {timings['score_zero_shot_s']:.0f}s", flush=True)

    dyn, data_map = TrainingDynamicsCallback(), DataMapCallback(noise_rate=args.noise)
    trainer = SFTTrainer(model=model, args=noise_config(args, lr, os.path.join(args.workdir, "main")),
                         train_dataset=train, processing_class=tokenizer, callbacks=[dyn, data_map])
    t0 = time.perf_counter()
    trainer.train()
    timings["train_s"] = time.perf_counter() - t0
    print(f"[train] {args.epochs} epochs on {len(train)} rows: {timings['train_s']:.0f}s", flush=True)

    t0 = time.perf_counter()
    fine_tuned = candidate_probs(trainer.model, tokenizer, train, castable, args.score_batch_size)
    timings["score_fine_tuned_s"] = time.perf_counter() - t0
    cv = None
    if args.cv_folds:
        cv, timings["cv_s"] = cross_validated_probs(train, castable, args)

    frame, dynamics = data_map.data_map(), dyn.dynamics()
    domains = np.asarray(train["domain"])
    corrupted = np.asarray(train["corrupted"], dtype=bool)
    conf_score = frame["noise_score"].to_numpy()
    ours = {
        "data map: 1 - confidence (noise_score)": (conf_score, frame["flag_noisy"].to_numpy()),
        "data map: confidence, per-domain rank": (within_groups(conf_score, domains, "rank"), None),
        "data map: confidence, per-domain z-score": (within_groups(conf_score, domains, "z"), None),
        "loss only: last loss (loss_last)": (dynamics["loss_last"].to_numpy(np.float64), None),
        "loss only: first-pass loss (loss_first)": (dynamics["loss_first"].to_numpy(np.float64), None),
        "loss only: first-pass loss, per-domain rank":
            (within_groups(dynamics["loss_first"].to_numpy(np.float64), domains, "rank"), None),
    }
    t0 = time.perf_counter()
    theirs = {"cleanlab, zero-shot probs": cleanlab_scores(zero_shot, len(train)),
              "cleanlab, fine-tuned (in-sample) probs": cleanlab_scores(fine_tuned, len(train))}
    if cv is not None:
        theirs[f"cleanlab, {args.cv_folds}-fold out-of-sample probs"] = cleanlab_scores(cv, len(train))
    timings["cleanlab_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_all

    in_castable = np.isin(domains, list(castable))
    results = []
    for name, (score, flags) in list(ours.items()) + list(theirs.items()):
        is_ours = name in ours
        r = {"method": name, "family": "sft_callbacks" if is_ours else "cleanlab"}
        if is_ours:  # cleanlab cannot score the rows that are not classification
            r["all_rows"] = score_metrics(score, corrupted, domains, args.noise, flags)
        sub = in_castable
        r["castable_rows"] = score_metrics(score[sub], corrupted[sub], domains[sub], args.noise,
                                           None if flags is None else flags[sub])
        results.append(r)
    return {
        "benchmark": "noise",
        "command": "python scripts/benchmark.py noise " + " ".join(args.raw_argv),
        "commit": commit,
        "hardware": "cuda" if trainer.args.device.type == "cuda" else f"CPU {cpu_name()}",
        "data": {"train_rows": len(train), "corrupted": int(corrupted.sum()), "noise": args.noise,
                 "corruption_seed": 1234, "train_rows_per_domain_cap": args.train_rows,
                 "rows_by_domain": {str(d): int((domains == d).sum()) for d in np.unique(domains)},
                 "corrupted_by_domain": {str(d): int(corrupted[domains == d].sum()) for d in np.unique(domains)},
                 "castable_domains": castable, "castable_rows": int(in_castable.sum()),
                 "castable_corrupted": int(corrupted[in_castable].sum()),
                 "dropped_rows": int(dynamics["dropped"].sum())},
        "config": {"model": args.model, "epochs": args.epochs, "batch_size": args.batch_size, "lr": lr,
                   "seed": args.seed, "cv_folds": args.cv_folds, "max_length": 256,
                   "data_map": {"noise_rate": args.noise, "min_epochs": 2}},
        "timings": timings,
        "results": results,
        "_frame": frame.assign(domain=domains, corrupted=corrupted),  # for the plot; not written to JSON
    }


def _fmt(x, spec=".3f") -> str:
    return "—" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def noise_table(report: dict) -> str:
    """Markdown: one row per method, all rows and the classification-castable rows side by side."""
    def flags(m):
        return f"{_fmt(m['flag_precision'], '.2f')} / {_fmt(m['flag_recall'], '.2f')}" if "flagged" in m else "—"

    head = ["method", "AUROC (all)", "P@noise (all)", "flags P / R (all)", "AUROC (castable)", "P@noise (castable)",
            "flags P / R (castable)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["results"]:
        a, c = r.get("all_rows", {}), r["castable_rows"]
        lines.append("| " + " | ".join([r["method"], _fmt(a.get("auroc")), _fmt(a.get("precision_at_noise_rate")),
                                        flags(a) if a else "—", _fmt(c["auroc"]),
                                        _fmt(c["precision_at_noise_rate"]), flags(c)]) + " |")
    return "\n".join(lines)


def noise_domain_table(report: dict) -> str:
    """Markdown: AUROC per domain and method (all rows for ours, castable rows for cleanlab)."""
    domains = list(report["data"]["rows_by_domain"])
    head = ["method"] + [f"{d} ({report['data']['corrupted_by_domain'][d]}/{report['data']['rows_by_domain'][d]})"
                         for d in domains]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["results"]:
        by = r.get("all_rows", r["castable_rows"])["auroc_by_domain"]
        lines.append("| " + " | ".join([r["method"]] + [_fmt(by.get(d), ".2f") for d in domains]) + " |")
    return "\n".join(lines)


def plot_noise_map(report: dict, path: str) -> None:
    """Data map per domain, corrupted rows in red, flag_noisy rows ringed; the domain's AUROC in the title."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    frame = report["_frame"]
    domains = list(report["data"]["rows_by_domain"])
    by = report["results"][0]["all_rows"]["auroc_by_domain"]
    cols = 3
    fig, axes = plt.subplots((len(domains) + cols - 1) // cols, cols, figsize=(12, 7), sharex=True, sharey=True,
                             squeeze=False)
    for ax, d in zip(axes.ravel(), domains):
        part = frame[frame["domain"] == d]
        for is_bad, color, label in ((False, "tab:blue", "clean"), (True, "tab:red", "corrupted")):
            p = part[part["corrupted"] == is_bad]
            ax.scatter(p["variability"], p["confidence"], s=10, alpha=0.6, c=color, label=f"{label} ({len(p)})")
        f = part[part["flag_noisy"]]
        ax.scatter(f["variability"], f["confidence"], s=40, facecolors="none", edgecolors="k", linewidths=0.6,
                   label=f"flag_noisy ({len(f)})")
        ax.set_title(f"{d}: AUROC {_fmt(by.get(d), '.2f')}", fontsize=10)
        ax.legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("variability")
    for ax in axes[:, 0]:
        ax.set_ylabel("confidence")
    cfg = report["config"]
    fig.suptitle(f"Data map, {cfg['model']}, {cfg['epochs']} epochs, {report['data']['noise']:.0%} corrupted answers")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _arm(text: str) -> str:
    if not bench_evidence.is_arm(text):
        raise argparse.ArgumentTypeError(f"unknown arm {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``scripts/benchmark.py``: one subcommand per benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="benchmark", required=True)
    ev = sub.add_parser("evidence", help="arms x seeds on SmolLM2: paired differences, plots, noise section")
    ev.add_argument("--quick", action="store_true", help="1 seed; uniform, static_target, all; no cleanlab folds")
    ev.add_argument("--budget", choices=["short", "converged"], default="short",
                    help="short: 80 steps over all 1,200 training rows (half an epoch); converged: half of each "
                         "domain's training rows, 3 epochs (225 steps), evaluated every 25 (CPU)")
    ev.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    ev.add_argument("--tuning", choices=["full", "lora"], default=None, help="default: lora")
    ev.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ev.add_argument("--steps", type=int, default=None)
    ev.add_argument("--batch-size", type=int, default=None)
    ev.add_argument("--eval-steps", type=int, default=None)
    ev.add_argument("--lr", type=float, default=None)
    ev.add_argument("--seeds", type=int, nargs="+", default=None)
    ev.add_argument("--arms", nargs="+", default=None, type=_arm,
                    help=f"arms among {list(bench_evidence.ARMS)}, validation:<method>[@<learning_rate>], "
                         "domain:<adversarial|mmd>[@<weight>][/<layer>] "
                         f"(e.g. {', '.join(bench_evidence.VALIDATION_CANDIDATES[:2])}, validation:exp3@3)")
    ev.add_argument("--cv-folds", type=int, default=None, help="cleanlab's out-of-sample folds (0: skip)")
    ev.add_argument("--data-fraction", type=float, default=None, help="keep this fraction of every split")
    ev.add_argument("--threads", type=int, default=None, help="torch threads")
    ev.add_argument("--noise", type=float, default=None, help="share of training answers corrupted (default 0.2)")
    ev.add_argument("--noise-kind", choices=["uniform", "plausible"], default=None,
                    help="wrong answers drawn uniformly from the domain's others (default), or each the label its "
                         "true one is most easily confused with")
    ev.add_argument("--target-domain", default=None,
                    help="domain shift: validation and test on this domain only; arms domain:<method>")
    ev.add_argument("--target-train-rows", type=int, default=None,
                    help="with --target-domain: keep only this many of its training rows")
    ev.add_argument("--data", choices=["benchmark", "sentiment_shift"], default=None,
                    help="the evidence set (default) or the sentiment domain shift (tweets -> movie reviews)")
    ev.add_argument("--workdir", default="bench_results/evidence_runs")
    ev.add_argument("--reuse-runs", action="append", default=[], metavar="PARTIAL_JSON",
                    help="take the runs of this configuration from another workdir's partial_runs.json (repeatable)")
    ev.add_argument("--out", default="bench_results/evidence.json")
    ev.add_argument("--markdown", default="bench_results/evidence.md")
    ev.add_argument("--plots", default="docs/benchmarks", help="folder for the two plots ('' for none)")
    cp = sub.add_parser("evidence-compare", help="the same arms measured twice (before / after a change): paired "
                                                  "differences per arm, and each side against its own uniform")
    cp.add_argument("--before", nargs="+", required=True, help="JSON reports of the earlier runs")
    cp.add_argument("--after", nargs="+", required=True, help="JSON reports of the later runs")
    cp.add_argument("--arms", nargs="+", required=True)
    cp.add_argument("--alias", nargs="*", default=[], metavar="ARM=BEFORE_ARM",
                    help="an arm's name on the before side, e.g. validation=validation:exp3")
    cp.add_argument("--labels", nargs=2, default=["before", "after"])
    cp.add_argument("--out", default="bench_results/evidence_compare.json")
    cp.add_argument("--markdown", default="bench_results/evidence_compare.md")
    mg = sub.add_parser("evidence-merge", help="pool several evidence runs (other arms / seeds) into one report")
    mg.add_argument("reports", nargs="+", help="JSON reports written by `evidence --out`")
    mg.add_argument("--out", default="bench_results/evidence_merged.json")
    mg.add_argument("--markdown", default="bench_results/evidence_merged.md")
    pr = sub.add_parser("evidence-pruning", help="evidence runs at fewer steps against uniform at the full budget, "
                                                 "seed by seed: quality, rows processed and wall-clock")
    pr.add_argument("--full", nargs="+", required=True,
                    help="JSON reports (or partial_runs.json) holding uniform at N steps, e.g. one per seed")
    pr.add_argument("--short", nargs="+", required=True, help="JSON reports at fewer steps (uniform and the strategy)")
    pr.add_argument("--out", default="bench_results/evidence_pruning.json")
    pr.add_argument("--markdown", default="bench_results/evidence_pruning.md")
    sc = sub.add_parser("screen", help="which candidate domains the model learns (uniform, balanced pool)")
    sc.add_argument("--pool", default="bench_results/candidates.jsonl")
    sc.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    sc.add_argument("--tuning", choices=["full", "lora"], default="full")
    sc.add_argument("--steps", type=int, default=60)
    sc.add_argument("--batch-size", type=int, default=8)
    sc.add_argument("--lr", type=float, default=None)
    sc.add_argument("--seed", type=int, default=0)
    sc.add_argument("--out", default="bench_results/screen.json")
    en = sub.add_parser("evidence-noise", help="finding the wrong answers on the evidence data: every noise score "
                                              "vs cleanlab on K-fold out-of-sample probabilities, per seed")
    en.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    en.add_argument("--epochs", type=int, default=3)
    en.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    en.add_argument("--batch-size", type=int, default=8)
    en.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    en.add_argument("--cv-folds", type=int, default=2, help="cleanlab's out-of-sample folds on every seed (0: skip)")
    en.add_argument("--data-fraction", type=float, default=None, help="default: 1 (tiny: 0.05)")
    en.add_argument("--threads", type=int, default=None)
    en.add_argument("--workdir", default="bench_results/evidence_noise_runs")
    en.add_argument("--out", default="bench_results/evidence_noise.json")
    en.add_argument("--markdown", default="bench_results/evidence_noise.md")
    enm = sub.add_parser("evidence-noise-merge", help="pool evidence-noise reports (other seeds) into one")
    enm.add_argument("reports", nargs="+")
    enm.add_argument("--out", default="bench_results/evidence_noise_merged.json")
    enm.add_argument("--markdown", default="bench_results/evidence_noise_merged.md")
    noi = sub.add_parser("noise", help="finding the corrupted answers: data map and loss vs cleanlab")
    noi.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    noi.add_argument("--epochs", type=int, default=3, help="training epochs (the data map needs >= 2)")
    noi.add_argument("--batch-size", type=int, default=8)
    noi.add_argument("--lr", type=float, default=None)
    noi.add_argument("--noise", type=float, default=0.2, help="fraction of corrupted answers (and DataMap noise_rate)")
    noi.add_argument("--seed", type=int, default=0)
    noi.add_argument("--train-rows", type=int, default=None,
                     help="at most this many training rows per domain (stratified; default: all 900)")
    noi.add_argument("--cv-folds", type=int, default=0,
                     help="also give cleanlab out-of-sample probabilities from K models trained on the other folds")
    noi.add_argument("--score-batch-size", type=int, default=16)
    noi.add_argument("--workdir", default="bench_results/noise_runs")
    noi.add_argument("--out", default="bench_results/noise.json")
    noi.add_argument("--plot", default="docs/benchmarks/noise_data_map.png")
    return parser


def main(argv=None) -> int:
    import sys

    parser = build_parser()
    args = parser.parse_args(argv)
    args.raw_argv = (argv if argv is not None else sys.argv[1:])[1:]
    if args.benchmark == "noise":
        if args.epochs < 2:
            parser.error("the data map needs --epochs >= 2")
        report = noise(args)
        frame = report.pop("_frame")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(noise_table(report))
        print()
        print(noise_domain_table(report))
        if args.plot:
            plot_noise_map({**report, "_frame": frame}, args.plot)
        return 0
    if args.benchmark == "evidence-noise":
        from benchmarks import evidence_noise as bench_evidence_noise

        fraction = args.data_fraction if args.data_fraction is not None else (0.05 if args.model == "tiny" else 1.0)
        cfg = bench_evidence_noise.NoiseConfig(model=args.model, device=args.device, batch_size=args.batch_size,
                                               epochs=args.epochs, seeds=args.seeds,
                                               cv_folds=args.cv_folds, data_fraction=fraction, threads=args.threads,
                                               workdir=args.workdir)  # fmt: skip
        report = bench_evidence_noise.run(cfg, report_path=args.out)
        report["command"] = "python scripts/benchmark.py " + " ".join((argv if argv is not None else sys.argv[1:]))
        _write_report(args.out, args.markdown, report, bench_evidence_noise.markdown(report))
        return 0
    if args.benchmark == "evidence-noise-merge":
        from benchmarks import evidence_noise as bench_evidence_noise

        report = bench_evidence_noise.merge([json.loads(Path(p).read_text()) for p in args.reports])
        _write_report(args.out, args.markdown, report, bench_evidence_noise.markdown(report))
        return 0
    if args.benchmark == "evidence-compare":
        load = lambda paths: [r for p in paths for r in json.loads(Path(p).read_text())["runs"]]  # noqa: E731
        aliases = dict(a.split("=", 1) for a in args.alias)
        table = bench_evidence.compare_runs(load(args.before), load(args.after), args.arms, aliases)
        report = {"benchmark": "evidence-compare", "before": args.before, "after": args.after, "labels": args.labels,
                  "aliases": aliases, "arms": table}
        _write_report(args.out, args.markdown, report, bench_evidence.comparison_markdown(table, *args.labels))
        return 0
    if args.benchmark == "evidence-merge":
        report = bench_evidence.merge_reports([json.loads(Path(p).read_text()) for p in args.reports])
        _write_report(args.out, args.markdown, report, bench_evidence.markdown_report(report))
        return 0
    if args.benchmark == "evidence-pruning":
        from benchmarks import evidence_pruning

        full = [json.loads(Path(p).read_text()) for p in args.full]
        table = evidence_pruning.pruning_summary(full, [json.loads(Path(p).read_text()) for p in args.short])
        steps = evidence_pruning.full_steps(full)
        text = evidence_pruning.pruning_markdown(table, steps)
        _write_report(args.out, args.markdown, {"benchmark": "evidence-pruning", "full_steps": steps,
                                                "table": table}, text)
        return 0
    if args.benchmark == "screen":
        cfg = bench_evidence.EvidenceConfig(model=args.model, tuning=args.tuning, steps=args.steps,
                                            batch_size=args.batch_size, lr=args.lr, seeds=[args.seed],
                                            workdir="bench_results/screen_runs")
        report = bench_evidence.screen_candidates(cfg, args.pool)
        report["command"] = "python scripts/benchmark.py " + " ".join((argv if argv is not None else sys.argv[1:]))
        _write_json(args.out, report)
        return 0
    cfg = evidence_config(args)
    report = bench_evidence.run_benchmark(cfg, reuse=tuple(args.reuse_runs))
    report["command"] = "python scripts/benchmark.py " + " ".join((argv if argv is not None else sys.argv[1:]))
    if args.plots:
        bench_evidence.plot_target_loss(report, os.path.join(args.plots, "evidence_target_loss.png"))
        bench_evidence.plot_mixture(report, os.path.join(args.plots, "evidence_mixture.png"))
    _write_report(args.out, args.markdown, report, bench_evidence.markdown_report(report))
    return 0


def evidence_config(args) -> "bench_evidence.EvidenceConfig":
    """The run's configuration: the full CPU defaults, ``--quick``'s, or the GPU's; explicit flags win."""
    if args.device == "cuda":  # larger budget, more seeds (the machine is ~50x faster)
        base = dict(steps=600, batch_size=16, eval_steps=25, seeds=[0, 1, 2, 3, 4], cv_folds=5)
    else:
        base = dict(steps=bench_evidence.CPU_STEPS, batch_size=bench_evidence.CPU_BATCH,
                    eval_steps=bench_evidence.CPU_EVAL_STEPS, seeds=[0, 1, 2], cv_folds=2)
    if getattr(args, "budget", "short") == "converged" and args.device == "cpu":
        base.update(bench_evidence.CONVERGED_BUDGET)
    if args.quick:
        base.update(seeds=[0], arms=list(bench_evidence.QUICK_ARMS), cv_folds=0)
    if args.model == "tiny":  # the smoke test: a twentieth of the data, same mixes
        base.update(data_fraction=0.05)
    given = {k: getattr(args, k) for k in ("steps", "batch_size", "eval_steps", "lr", "seeds", "arms", "cv_folds",
                                           "data_fraction", "train_fraction", "threads", "tuning", "noise",
                                           "noise_kind", "target_domain",
                                           "target_train_rows", "data")
             if getattr(args, k, None) is not None}
    return bench_evidence.EvidenceConfig(model=args.model, device=args.device, workdir=args.workdir,
                                         **{**base, **given})


def _write_report(json_path: str, markdown_path: str | None, report: dict, text: str) -> None:
    """The report as JSON, its markdown beside it (unless ``markdown_path`` is empty), and the markdown printed."""
    _write_json(json_path, report)
    if markdown_path:
        Path(markdown_path).parent.mkdir(parents=True, exist_ok=True)
        Path(markdown_path).write_text(text + "\n")
    print(text)


def _write_json(path: str, report: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=1, default=_jsonable))


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-able: {type(value).__name__}")
