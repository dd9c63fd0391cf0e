"""Scores for finding corrupted answers, shared by ``benchmark.py noise`` and the evidence benchmark's noise section.

Rank metrics (AUROC, precision at the noise rate) and cleanlab's input: each row's probability of every
candidate answer of its domain, in-sample or out-of-sample (K folds).
"""

from __future__ import annotations

import numpy as np

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


def fold_ids(domains, k: int, seed: int) -> np.ndarray:
    """Fold of each row, stratified by domain: the package's own assignment (``out_of_sample_losses`` uses it)."""
    from sft_callbacks.curation.out_of_sample import fold_assignment

    return fold_assignment(len(domains), k, seed, groups=domains)
