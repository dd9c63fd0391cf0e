"""Measure a fine-tuned model the way the benchmarks do: greedy answers, exact match, and intervals over seeds.

A user asks whether a callback makes *their* run better, with error bars, against the run they would have made:
train both with the same seeds, score each run's test answers with :func:`score_answers`, and put the per-seed
differences through :func:`mean_ci`. The package's benchmarks (``scripts/``) use exactly these functions.

Example:
    >>> score_answers(["Yes.", "maybe"], ["yes", "no"], ["a", "a"], {"a": ["yes", "no"]})["exact_match"]
    0.5
    >>> mean_ci([0.02, 0.05, 0.03])["n"]
    3
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from transformers import TrainerCallback

from .curation.model_io import inference

__all__ = ["EvalCurveCallback", "greedy_answers", "mean_ci", "normalize_answer", "score_answers"]

# Two-sided 95% t quantiles by degrees of freedom (seeds - 1); 1.96 beyond.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def normalize_answer(text: str) -> str:
    """An answer without its trivial format: first line, stripped, lower case, no surrounding quotes or markdown
    emphasis, no trailing punctuation. (Not :func:`~sft_callbacks.curation.preference_pairs.normalize_response`,
    which compares whole responses for preference pairs.)

    Example:
        >>> normalize_answer(" Spanish.\\n") == normalize_answer('"spanish"')
        True
    """
    text = str(text).strip().split("\n")[0].strip()
    return text.strip("\"'`*").rstrip(".!?,;:").strip().lower()


def greedy_answers(model, tokenizer, prompts: Sequence, batch_size: int = 32, max_new_tokens: int = 6,
                   bf16: bool = False) -> list[str]:
    """Greedy completions of chat ``prompts`` (lists of messages): left-padded batches, bf16 autocast if asked, each
    cut at the end-of-turn token. The model's train/eval mode and the tokenizer's padding side come back after.

    Example:
        >>> greedy_answers(model, tokenizer, [[{"role": "user", "content": "2+2?"}]])  # doctest: +SKIP
        ['4']
    """
    import torch

    end = tokenizer.eos_token
    out = []
    with inference(model, tokenizer):
        tokenizer.padding_side = "left"
        texts = [tokenizer.apply_chat_template(list(p), add_generation_prompt=True, tokenize=False) for p in prompts]
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False, return_token_type_ids=False).to(model.device)
            with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            for t in tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=False):
                out.append(t.split(end)[0].replace(tokenizer.pad_token or "", ""))
    return out


def score_answers(predictions: Sequence[str], references: Sequence[str], groups: Sequence[str],
                  labels: dict[str, Sequence[str]]) -> dict:
    """Exact match (after :func:`normalize_answer`) overall and per group, and format failures: answers outside
    their group's label set ``labels[group]``.

    Example:
        >>> score_answers(["Yes.", "maybe"], ["yes", "no"], ["a", "a"], {"a": ["yes", "no"]})["format_failures"]
        0.5
    """
    groups = np.asarray(groups)
    pred = np.array([normalize_answer(p) for p in predictions], dtype=object)
    ref = np.array([normalize_answer(r) for r in references], dtype=object)
    hit = pred == ref
    valid = np.array([p in {normalize_answer(x) for x in labels[g]} for p, g in zip(pred, groups)])
    return {
        "exact_match": float(hit.mean()),
        "exact_match_by_domain": {g: float(hit[groups == g].mean()) for g in sorted(set(groups))},
        "format_failures": float((~valid).mean()),
        "format_failures_by_domain": {g: float((~valid)[groups == g].mean()) for g in sorted(set(groups))},
    }


def mean_ci(values) -> dict:
    """Mean and 95% t-interval over seeds (missing and non-finite values left out); the half-width is NaN with one
    value. Give it per-seed paired differences (arm minus reference, same seed) for a paired interval.

    Example:
        >>> c = mean_ci([1.0, 2.0, 3.0])
        >>> round(c["mean"], 3), round(c["hi"] - c["mean"], 3)
        (2.0, 2.484)
    """
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    if v.size == 1:
        return {"mean": float(v[0]), "lo": float("nan"), "hi": float("nan"), "n": 1}
    half = _T975.get(v.size - 1, 1.96) * v.std(ddof=1) / math.sqrt(v.size)
    return {"mean": float(v.mean()), "lo": float(v.mean() - half), "hi": float(v.mean() + half), "n": int(v.size)}


class EvalCurveCallback(TrainerCallback):
    """The validation curve a user reads to judge a run: per evaluation, the loss over every eval row (token-weighted,
    with its standard error), each group's loss, and the mixture of groups drawn since the previous evaluation.

    It reads the per-row losses that :class:`~sft_callbacks.TrainingDynamicsCallback` captured in that same
    evaluation (no second pass), so put it after that callback in ``callbacks``. ``curve`` holds one dict per
    evaluation: ``step``, ``target_loss`` and ``target_loss_se`` (the token-weighted mean over the eval rows and the
    standard error of that ratio estimate, rows as the sample), ``trainer_eval_loss`` (the Trainer's mean of batch
    means), ``domain_loss`` (``{group: loss}``) and ``drawn_since_last_eval`` (``{group: share of the training
    draws}``, read from the tracker's visit counts).

    Example:
        >>> dyn = TrainingDynamicsCallback()  # doctest: +SKIP
        >>> curve = EvalCurveCallback(dyn, eval_ds["domain"], train_ds["domain"])  # doctest: +SKIP
        >>> SFTTrainer(..., callbacks=[dyn, curve]).train(); curve.curve[-1]["target_loss"]  # doctest: +SKIP
        0.41
    """

    def __init__(self, dynamics, eval_groups: Sequence, train_groups: Sequence):
        from .policies.groups import group_ids

        self.dynamics = dynamics
        self.eval_ids, self.names = group_ids(list(eval_groups))
        self.train_groups = np.asarray(train_groups)
        self._seen_before = None
        self.curve: list[dict] = []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        result = self.dynamics.session.tracker.eval_results.get("eval")
        if result is None or metrics is None or "eval_loss" not in metrics:
            return
        from .policies.mixing import group_eval_losses

        index = result["index"]
        uid = np.asarray(index.seq_uid)
        loss = np.asarray(result["loss_by_uid"], dtype=np.float64)[uid]
        ntok = np.asarray(index.n_trained, dtype=np.float64)[uid]
        groups = self.eval_ids[np.asarray(index.seq_row)]
        per = dict(zip(self.names, group_eval_losses(loss, groups, ntok, num_groups=len(self.names)).tolist()))
        ok = np.isfinite(loss) & (ntok > 0)
        seen = np.nan_to_num(self.dynamics.dynamics()["times_seen"].to_numpy(np.float64))  # per training row
        new = seen - (self._seen_before if self._seen_before is not None else 0.0)
        self._seen_before = seen
        drawn = {str(d): float(new[self.train_groups == d].sum() / max(new.sum(), 1.0))
                 for d in sorted(set(self.train_groups.tolist()))}
        # The Trainer's eval_loss averages per-batch means; the target is the token-weighted mean over all rows.
        target = float((loss[ok] * ntok[ok]).sum() / ntok[ok].sum())
        w = ntok[ok] / ntok[ok].sum()
        se = float(np.sqrt(np.sum(w**2 * (loss[ok] - target) ** 2) * ok.sum() / max(ok.sum() - 1, 1)))
        self.curve.append({"step": int(state.global_step), "target_loss": target, "target_loss_se": se,
                           "trainer_eval_loss": float(metrics["eval_loss"]), "domain_loss": per,
                           "drawn_since_last_eval": drawn})
