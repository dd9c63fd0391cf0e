"""Active learning: choose which unlabelled prompts to send for annotation next.

:func:`select_for_annotation` takes a pool of prompts **without** responses and returns the ``k``
rows most worth labelling, as a ``datasets.Dataset`` ready to push to an annotation tool:

* ``"uncertainty"``: the model answers every prompt greedily; rows are ranked by the mean
  per-token entropy of that answer (``uncertainty="entropy"``, in nats) or by its least
  confidence (``uncertainty="least_confidence"``: ``1 -`` the geometric mean probability of the
  answer's tokens);
* ``"diversity"``: k-center greedy (Sener & Savarese, 2018) on prompt embeddings: each pick is the
  prompt farthest from those already picked. Embeddings are the model's mean-pooled last hidden
  states over the prompt tokens, or those of any sentence-embedding model passed as ``embedder``;
* ``"hybrid"``: the ``candidate_factor * k`` most uncertain prompts, then k-center greedy among
  them (starting from the most uncertain one): uncertain *and* not redundant;
* ``"error_driven"``: a quota per group (``group_column``) proportional to the group's validation
  error (``group_errors`` given, or the model's mean loss on a ``validation`` set), then the most
  uncertain prompts within each group.

Output columns: all of the pool's columns plus ``al_score`` (float), ``al_rank`` (0 = first
pick), ``al_reason`` (readable), ``al_strategy`` and ``al_source_row`` (row index in the pool).

The lower-level pieces are public too: :func:`uncertainty_scores`, :func:`prompt_embeddings`,
:func:`k_center_greedy`, :func:`allocate_quotas` and :func:`group_validation_errors`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch

from .model_io import inference, is_messages, model_device, pad_token_id, progress

logger = logging.getLogger(__name__)

STRATEGIES = ("uncertainty", "diversity", "hybrid", "error_driven")
UNCERTAINTY_MEASURES = ("entropy", "least_confidence")
#: Columns that hold a response; a pool row with a non-empty value in one of them is refused.
RESPONSE_COLUMNS = (
    "completion", "response", "responses", "answer", "answers", "output", "target", "chosen", "rejected",
)
AL_COLUMNS = ("al_score", "al_rank", "al_reason", "al_strategy", "al_source_row")


# --------------------------------------------------------------------------------------------------
# Pool formats
# --------------------------------------------------------------------------------------------------


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, tuple, dict)):
        return len(value) == 0
    return False


def _as_dataset(pool: Any, name: str = "pool") -> datasets.Dataset:
    if isinstance(pool, datasets.Dataset):
        return pool
    if isinstance(pool, dict) or not isinstance(pool, Sequence):
        raise ValueError(f"{name} must be a datasets.Dataset or a list of row dicts, got {type(pool).__name__}")
    return datasets.Dataset.from_list(list(pool)) if len(pool) else datasets.Dataset.from_dict({})


def _resolve_prompt_column(pool: datasets.Dataset, prompt_column: str | None) -> str:
    if prompt_column is not None:
        if prompt_column not in pool.column_names:
            raise ValueError(
                f"prompt_column {prompt_column!r} is not a column of the pool; columns: {pool.column_names}"
            )
        return prompt_column
    for name in ("prompt", "messages"):
        if name in pool.column_names:
            return name
    raise ValueError(
        "the pool needs a 'prompt' column (messages or strings) or a 'messages' column, or pass "
        f"prompt_column=...; got columns {pool.column_names}"
    )


def _check_no_responses(pool: datasets.Dataset, prompt_column: str) -> list[Any]:
    """The prompts of the pool; ValueError if the pool already holds responses."""
    filled = [c for c in RESPONSE_COLUMNS if c in pool.column_names and c != prompt_column
              and any(not _is_empty(v) for v in pool[c])]
    if filled:
        raise ValueError(
            f"the pool already has responses in column(s) {filled}: select_for_annotation expects prompts "
            f"without responses. Drop them first, e.g. pool = pool.remove_columns({filled})"
        )
    prompts = list(pool[prompt_column])
    for i, p in enumerate(prompts):
        if is_messages(p):
            if p[-1].get("role") == "assistant":
                raise ValueError(
                    f"row {i}: {prompt_column!r} ends with an assistant turn, i.e. it already holds a response. "
                    f"Strip it first, e.g. pool = pool.map(lambda r: {{{prompt_column!r}: r[{prompt_column!r}][:-1]}})"
                )
        elif not isinstance(p, str):
            raise ValueError(
                f"row {i}: {prompt_column!r} must be a string or a list of {{'role', 'content'}} messages, "
                f"got {type(p).__name__}"
            )
    return prompts


def _plain_text(prompt: Any) -> str:
    # What a sentence embedder sees: the messages' contents, not the chat template's markup.
    if is_messages(prompt):
        return "\n".join(str(m.get("content") or "") for m in prompt)
    return str(prompt)


def _render(tokenizer, prompt: Any, add_generation_prompt: bool = True) -> tuple[str, bool]:
    """(text, add_special_tokens) the model should see for one prompt."""
    if not is_messages(prompt):
        return str(prompt), True
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=add_generation_prompt)
        return text, False  # the template already holds the special tokens
    # No template: a readable fallback rather than failing on base models.
    text = "".join(f"{m.get('role', 'user')}: {m.get('content') or ''}\n" for m in prompt)
    return text + ("assistant: " if add_generation_prompt else ""), True


def _tokenize_prompts(tokenizer, prompts: Sequence[Any]) -> list[list[int]]:
    out = []
    for p in prompts:
        text, special = _render(tokenizer, p)
        out.append(list(tokenizer(text, add_special_tokens=special)["input_ids"]))
    return out


# --------------------------------------------------------------------------------------------------
# Model plumbing
# --------------------------------------------------------------------------------------------------


def _eos_ids(model, tokenizer) -> list[int]:
    ids: set[int] = set()
    for value in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return sorted(ids)


def _length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    # Longest first (an out-of-memory shows at once) and similar lengths together (little padding).
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _pad(tokenizer, rows: list[list[int]], side: str, device) -> dict[str, torch.Tensor]:
    tokenizer.padding_side = side
    enc = tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt")
    if tokenizer.pad_token_id is None:  # pad() used no id: fill with the fallback pad id
        enc["input_ids"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, pad_token_id(tokenizer))
    return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}


# --------------------------------------------------------------------------------------------------
# Uncertainty of the model's own greedy answer
# --------------------------------------------------------------------------------------------------


def _answer_uncertainty(
    step_logits: Sequence[torch.Tensor], new_tokens: torch.Tensor, eos_ids: list[int], measure: str
) -> torch.Tensor:
    """Per row: the uncertainty of one generated batch, over the steps up to and including the first EOS."""
    is_eos = torch.isin(new_tokens, torch.tensor(eos_ids, dtype=new_tokens.dtype, device=new_tokens.device))
    # A step counts if no EOS came before it: the EOS itself is part of the answer, padding after it is not.
    valid = (torch.cumsum(is_eos.int(), dim=1) - is_eos.int()) == 0
    total = torch.zeros(new_tokens.shape[0], dtype=torch.float64, device=new_tokens.device)
    for t, logits in enumerate(step_logits):  # one step at a time: never a (batch, steps, vocab) tensor
        logp = torch.log_softmax(logits.float(), dim=-1)
        if measure == "entropy":
            value = -(logp.exp() * logp).sum(-1)
        else:
            value = logp.gather(1, new_tokens[:, t : t + 1])[:, 0]
        total += torch.where(valid[:, t], value.double(), torch.zeros_like(total))
    mean = total / valid.sum(1).clamp_min(1)
    return mean if measure == "entropy" else 1.0 - torch.exp(mean)


def uncertainty_scores(
    model,
    tokenizer,
    prompts: Sequence[Any],
    measure: str = "entropy",
    max_new_tokens: int = 32,
    batch_size: int = 8,
    show_progress: bool = True,
) -> np.ndarray:
    """Uncertainty of the model's greedy answer to each prompt (higher = less sure).

    ``measure="entropy"``: mean over the answer's tokens of the entropy (nats) of the next-token
    distribution. ``measure="least_confidence"``: ``1 - exp(mean log p(token))``, one minus the
    geometric-mean probability of the greedy tokens (length-normalised, so long answers are not
    penalised for their length). Both use the raw logits of every generated step, up to and
    including the first EOS. Prompts are message lists (rendered with the chat template,
    ``add_generation_prompt=True``) or strings; generation is batched with left padding.

    Example::

        >>> scores = uncertainty_scores(model, tokenizer, [[{"role": "user", "content": "2+2?"}]],
        ...                             max_new_tokens=8)  # doctest: +SKIP
        >>> scores.shape  # doctest: +SKIP
        (1,)
    """
    if measure not in UNCERTAINTY_MEASURES:
        raise ValueError(f"unknown uncertainty measure {measure!r}; choose one of {list(UNCERTAINTY_MEASURES)}")
    pad_id, eos_ids, device = pad_token_id(tokenizer), _eos_ids(model, tokenizer), model_device(model)
    rows = _tokenize_prompts(tokenizer, prompts)
    scores = np.zeros(len(rows), dtype=np.float64)
    with inference(model, tokenizer):
        batches = _length_batches([len(r) for r in rows], batch_size)
        for idx in progress(batches, len(batches), f"active learning: {measure}", show_progress):
            enc = _pad(tokenizer, [rows[i] for i in idx], "left", device)
            out = model.generate(
                **enc, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                output_logits=True, return_dict_in_generate=True,
            )
            new_tokens = out.sequences[:, enc["input_ids"].shape[1] :]
            scores[idx] = _answer_uncertainty(out.logits, new_tokens, eos_ids, measure).cpu().numpy()
    return scores


# --------------------------------------------------------------------------------------------------
# Embeddings and k-center greedy
# --------------------------------------------------------------------------------------------------


def _last_hidden(model, enc: dict[str, torch.Tensor]) -> torch.Tensor:
    # The base model (e.g. LlamaModel inside LlamaForCausalLM) skips the vocabulary projection.
    base = getattr(model, "base_model", None)
    target = base if isinstance(base, torch.nn.Module) and base is not model else model
    out = target(**enc, output_hidden_states=True)
    hidden = getattr(out, "last_hidden_state", None)
    return hidden if hidden is not None else out.hidden_states[-1]


def prompt_embeddings(
    model,
    tokenizer,
    prompts: Sequence[Any],
    batch_size: int = 8,
    show_progress: bool = True,
) -> np.ndarray:
    """The model's mean-pooled last hidden states over each prompt's tokens, shape ``(n, hidden)``.

    Prompts are rendered like for generation (chat template with ``add_generation_prompt=True``
    for message lists). Batches are right-padded and pooled with the attention mask, so padding
    changes nothing (causal attention: real tokens never see the padding after them).

    Example::

        >>> emb = prompt_embeddings(model, tokenizer, ["first prompt", "second prompt"])  # doctest: +SKIP
        >>> emb.shape  # doctest: +SKIP
        (2, 64)
    """
    rows = _tokenize_prompts(tokenizer, prompts)
    device = model_device(model)
    out: np.ndarray | None = None
    with inference(model, tokenizer):
        batches = _length_batches([len(r) for r in rows], batch_size)
        for idx in progress(batches, len(batches), "active learning: embeddings", show_progress):
            enc = _pad(tokenizer, [rows[i] for i in idx], "right", device)
            hidden = _last_hidden(model, enc).float()
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            if out is None:
                out = np.zeros((len(rows), pooled.shape[-1]), dtype=np.float32)
            out[idx] = pooled.cpu().numpy()
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def _embed_with(embedder: Any, texts: list[str]) -> np.ndarray:
    # sentence-transformers models (and similar) have .encode; anything else is called.
    fn = embedder.encode if hasattr(embedder, "encode") else embedder
    emb = fn(texts)
    if isinstance(emb, torch.Tensor):
        emb = emb.detach().float().cpu().numpy()
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(texts):
        raise ValueError(f"embedder must return an array of shape ({len(texts)}, d), got {emb.shape}")
    if not np.isfinite(emb).all():
        raise ValueError("embedder returned NaN or infinite values")
    return emb


def _unit_rows(emb: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.maximum(norms, 1e-12)


def _distances_to(x: np.ndarray, sq_norms: np.ndarray, centre: int) -> np.ndarray:
    # ||x - c||^2 = ||x||^2 + ||c||^2 - 2 x.c : one matrix-vector product per pick.
    d2 = sq_norms + sq_norms[centre] - 2.0 * (x @ x[centre]).astype(np.float64)
    return np.sqrt(np.maximum(d2, 0.0))


def k_center_greedy(
    embeddings: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    first: int | None = None,
) -> tuple[list[int], list[float]]:
    """Greedy k-center selection: each pick is the point farthest from the points picked before it.

    Returns ``(order, distances)``: the picked row indices in pick order and, for each pick, its
    Euclidean distance to the nearest earlier pick (``nan`` for the first). The first centre is
    ``first``, or a row drawn with ``seed``; ties are broken in a random order fixed by ``seed``,
    so the result is deterministic. It is the 2-approximation of the k-center (minimax cover)
    problem used for active learning by Sener & Savarese (2018).

    Example::

        >>> x = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [0.0, 3.0]])
        >>> order, dist = k_center_greedy(x, 3, first=0)
        >>> order, [round(d, 2) for d in dist[1:]]
        ([0, 2, 3], [5.0, 3.0])
    """
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of points ({n}), got {k}")
    perm = np.random.default_rng(seed).permutation(n)
    start = int(perm[0]) if first is None else int(first)
    sq_norms = np.einsum("ij,ij->i", x, x).astype(np.float64)
    min_dist = _distances_to(x, sq_norms, start)
    min_dist[start] = -1.0  # never picked twice
    order, dists = [start], [float("nan")]
    for _ in range(k - 1):
        # argmax in the seeded order: among equal distances, the one that comes first in perm wins.
        nxt = int(perm[int(np.argmax(min_dist[perm]))])
        order.append(nxt)
        dists.append(float(max(min_dist[nxt], 0.0)))
        min_dist = np.minimum(min_dist, _distances_to(x, sq_norms, nxt))
        min_dist[order] = -1.0
    return order, dists


# --------------------------------------------------------------------------------------------------
# Error-driven quotas
# --------------------------------------------------------------------------------------------------


def allocate_quotas(group_errors: dict[Any, float], group_sizes: dict[Any, int], k: int) -> dict[Any, int]:
    """Split ``k`` picks across groups in proportion to their error, capped by group size.

    Largest-remainder (Hamilton) rounding: each group gets the floor of its share
    ``k * error / sum(errors)``, and the picks still missing go to the largest fractional parts
    (ties: higher error, then the order of ``group_sizes``). A group capped at its size gives its
    surplus back, and the surplus is shared the same way among the groups with room left (in
    proportion to their errors; equally if their errors are all 0). The quotas sum to ``k``.

    Example::

        >>> allocate_quotas({"a": 0.6, "b": 0.3, "c": 0.1}, {"a": 100, "b": 100, "c": 100}, 10)
        {'a': 6, 'b': 3, 'c': 1}
        >>> allocate_quotas({"a": 0.6, "b": 0.3, "c": 0.1}, {"a": 2, "b": 100, "c": 100}, 10)
        {'a': 2, 'b': 6, 'c': 2}
    """
    groups = list(group_sizes)
    if k > sum(group_sizes.values()):
        raise ValueError(f"k={k} is larger than the {sum(group_sizes.values())} rows of all groups together")
    quota = {g: 0 for g in groups}
    position = {g: i for i, g in enumerate(groups)}
    while (missing := k - sum(quota.values())) > 0:
        open_groups = [g for g in groups if quota[g] < group_sizes[g]]
        weights = np.array([float(group_errors[g]) for g in open_groups])
        if weights.sum() <= 0:
            weights = np.ones(len(open_groups))  # only zero-error groups left: share equally
        ideal = missing * weights / weights.sum()
        share = np.floor(ideal).astype(int)
        by_remainder = sorted(range(len(open_groups)),
                              key=lambda i: (-(ideal[i] - share[i]), -weights[i], position[open_groups[i]]))
        for i in by_remainder[: missing - int(share.sum())]:
            share[i] += 1
        for g, s in zip(open_groups, share):
            quota[g] = min(group_sizes[g], quota[g] + int(s))  # each round fills or caps a group
    return quota


def _validation_pairs(validation: datasets.Dataset) -> tuple[list[Any], list[Any]]:
    """(prompts, completions) of a validation set in a TRL prompt-completion or messages format."""
    cols = validation.column_names
    if "prompt" in cols and "completion" in cols:
        return validation["prompt"], validation["completion"]
    if "messages" in cols:
        prompts, completions = [], []
        for i, msgs in enumerate(validation["messages"]):
            if not is_messages(msgs) or len(msgs) < 2 or msgs[-1].get("role") != "assistant":
                raise ValueError(
                    f"validation row {i}: 'messages' must end with an assistant turn (the reference answer)"
                )
            prompts.append(msgs[:-1])
            completions.append(msgs[-1:])
        return prompts, completions
    raise ValueError(
        "validation needs 'prompt' + 'completion' columns or a 'messages' column ending with the "
        f"assistant's answer; got columns {cols}"
    )


def _prompt_completion_ids(tokenizer, prompt: Any, completion: Any) -> tuple[list[int], int]:
    """Token ids of prompt + completion and the number of prompt tokens (the loss starts after them)."""
    if is_messages(prompt):
        completion = completion if is_messages(completion) else [{"role": "assistant", "content": str(completion)}]
        p_text, special = _render(tokenizer, prompt, add_generation_prompt=True)
        f_text, _ = _render(tokenizer, list(prompt) + list(completion), add_generation_prompt=False)
    else:
        p_text, f_text, special = str(prompt), str(prompt) + _plain_text(completion), True
    p_ids = list(tokenizer(p_text, add_special_tokens=special)["input_ids"])
    f_ids = list(tokenizer(f_text, add_special_tokens=special)["input_ids"])
    # Like TRL: the completion starts where prompt and full sequence stop agreeing.
    common = 0
    while common < min(len(p_ids), len(f_ids)) and p_ids[common] == f_ids[common]:
        common += 1
    return f_ids, common


def group_validation_errors(
    model,
    tokenizer,
    validation: datasets.Dataset | Sequence[dict],
    group_column: str,
    batch_size: int = 8,
    show_progress: bool = True,
) -> dict[Any, float]:
    """Per group: the model's mean completion loss (mean NLL per token, averaged over rows) on ``validation``.

    ``validation`` holds reference answers (``prompt`` + ``completion``, or ``messages`` ending with
    the assistant's answer) and the ``group_column``. The loss covers the completion tokens only.

    Example::

        >>> errors = group_validation_errors(model, tokenizer, load_demo_dataset("validation"),
        ...                                  "domain")  # doctest: +SKIP
        >>> sorted(errors)  # doctest: +SKIP
        ['binary_math', 'food', 'logic', 'radio_exam', 'sarcasm', 'science_mcq']
    """
    validation = _as_dataset(validation, "validation")
    if len(validation) == 0:
        raise ValueError("validation is empty")
    if group_column not in validation.column_names:
        raise ValueError(f"validation has no group column {group_column!r}; columns: {validation.column_names}")
    prompts, completions = _validation_pairs(validation)
    encoded = [_prompt_completion_ids(tokenizer, p, c) for p, c in zip(prompts, completions)]
    losses = np.full(len(encoded), np.nan)
    device = model_device(model)
    with inference(model, tokenizer):
        batches = _length_batches([len(ids) for ids, _ in encoded], batch_size)
        for idx in progress(batches, len(batches), "active learning: validation loss", show_progress):
            enc = _pad(tokenizer, [encoded[i][0] for i in idx], "right", device)
            logits = model(**enc).logits[:, :-1].float()
            target = enc["input_ids"][:, 1:]
            nll = -torch.log_softmax(logits, -1).gather(-1, target[..., None])[..., 0]
            pos = torch.arange(target.shape[1], device=device)[None, :] + 1  # position of each target token
            starts = torch.tensor([encoded[i][1] for i in idx], device=device)[:, None]
            mask = (pos >= starts) & (enc["attention_mask"][:, 1:] == 1)
            row_loss = (nll * mask).sum(1) / mask.sum(1).clamp_min(1)
            losses[idx] = np.where(mask.sum(1).cpu().numpy() > 0, row_loss.cpu().numpy(), np.nan)
    groups = list(validation[group_column])
    out: dict[Any, list[float]] = {}
    for g, loss in zip(groups, losses):
        if np.isfinite(loss):
            out.setdefault(g, []).append(float(loss))
    return {g: float(np.mean(v)) for g, v in out.items()}


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _top_percent(rank: int, n: int) -> int:
    return max(1, math.ceil(100 * (rank + 1) / n))


def _describe(measure: str, score: float) -> str:
    if measure == "entropy":
        return f"mean entropy {score:.2f} nats"
    return f"least confidence {score:.2f}"


def _check_group_errors(errors: dict[Any, float], groups: list[Any]) -> dict[Any, float]:
    """Errors for every pool group; ValueError naming what is missing or invalid."""
    if not isinstance(errors, dict) or not errors:
        raise ValueError("group_errors must be a non-empty dict {group: validation error}")
    out, missing = {}, []
    for g in groups:
        value = errors.get(g, errors.get(str(g)))
        if value is None:
            missing.append(g)
            continue
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"group_errors[{g!r}] must be a number, got {value!r}") from None
        if math.isnan(value) or math.isinf(value):
            raise ValueError(f"group_errors[{g!r}] is {value}: give every group a finite error (0 to skip a group)")
        if value < 0:
            raise ValueError(f"group_errors[{g!r}] is negative ({value}); errors must be >= 0")
        out[g] = value
    if missing:
        raise ValueError(
            f"group_errors has no entry for pool group(s) {missing}; give every group an error "
            "(0 gives a group no quota unless the others run out of rows)"
        )
    if sum(out.values()) <= 0:
        raise ValueError("all group errors are 0: nothing to drive the quotas; use strategy='uncertainty' instead")
    return out


def _select_uncertainty(scores: np.ndarray, k: int, measure: str) -> tuple[list[int], list[float], list[str]]:
    """(rows, al_score, al_reason): the k highest scores, highest first."""
    order = np.argsort(-scores, kind="stable")[:k]  # ties: lower pool index first
    n = len(scores)
    reasons = [f"uncertainty: {_describe(measure, scores[i])} (top {_top_percent(r, n)}%)" for r, i in enumerate(order)]
    return order.tolist(), scores[order].tolist(), reasons


def _select_diversity(emb: np.ndarray, k: int, seed: int) -> tuple[list[int], list[float], list[str]]:
    """(rows, al_score, al_reason): k-center greedy on unit-normalised embeddings."""
    unit = _unit_rows(emb)
    order, dists = k_center_greedy(unit, k, seed=seed)
    to_mean = float(np.linalg.norm(unit[order[0]] - unit.mean(0)))
    reasons = [f"diversity: first centre (seeded start, seed={seed}), distance {to_mean:.2f} from the pool mean"]
    reasons += [f"diversity: farthest from selected set, distance {d:.2f}" for d in dists[1:]]
    return order, [to_mean] + dists[1:], reasons


def _select_hybrid(scores: np.ndarray, emb_of: Callable, k: int, candidate_factor: float, measure: str, seed: int):
    """(rows, al_score, al_reason): k-center greedy among the most uncertain candidates, most uncertain first."""
    n = len(scores)
    m = min(n, max(k, math.ceil(candidate_factor * k)))
    ranked = np.argsort(-scores, kind="stable")
    candidates = ranked[:m]
    unit = _unit_rows(emb_of(candidates.tolist()))
    local, dists = k_center_greedy(unit, k, seed=seed, first=0)  # candidates[0]: the most uncertain
    pool_rank = np.empty(n, dtype=np.int64)
    pool_rank[ranked] = np.arange(n)
    order = candidates[local].tolist()
    reasons = []
    for j, (i, d) in enumerate(zip(order, dists)):
        unc = f"{_describe(measure, scores[i])} (top {_top_percent(int(pool_rank[i]), n)}%)"
        if j == 0:
            reasons.append(f"hybrid: most uncertain of the top {m} candidates; {unc}")
        else:
            reasons.append(f"hybrid: {unc}, among the top {m}; distance {d:.2f} from selected set")
    return order, scores[order].tolist(), reasons


def _select_error_driven(groups: list, errors: dict, k: int, score_rows: Callable, measure: str):
    """(rows, al_score, al_reason): per-group quotas from the errors, the most uncertain rows within each group."""
    sizes: dict[Any, int] = {}
    for g in groups:
        sizes[g] = sizes.get(g, 0) + 1
    quota = allocate_quotas(errors, sizes, k)
    members: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    wanted = [i for g, q in quota.items() if q > 0 for i in members[g]]
    scores = dict(zip(wanted, score_rows(wanted)))  # the model scores only groups that get a quota
    picks = []  # (interleaving key, -error, -score, row, reason, score)
    for g, q in quota.items():
        ranked = sorted(members[g], key=lambda i: (-scores[i], i))[:q] if q else []
        for j, i in enumerate(ranked):
            reason = (f"error_driven: group {g!r} quota {q} (val error {errors[g]:.2f}); "
                      f"{_describe(measure, scores[i])} (#{j + 1} in group)")
            # (j + 0.5) / q spreads each group's picks evenly over the ranking: any prefix is near the quotas.
            picks.append(((j + 0.5) / q, -errors[g], -scores[i], i, reason, scores[i]))
    picks.sort(key=lambda p: p[:4])
    return [p[3] for p in picks], [p[5] for p in picks], [p[4] for p in picks]


def select_for_annotation(
    pool: datasets.Dataset | Sequence[dict],
    model=None,
    tokenizer=None,
    k: int = 100,
    strategy: str = "uncertainty",
    *,
    uncertainty: str = "entropy",
    max_new_tokens: int = 32,
    batch_size: int = 8,
    embedder: Any | Callable[[list[str]], Any] | None = None,
    candidate_factor: float = 4.0,
    group_column: str | None = None,
    group_errors: dict[Any, float] | None = None,
    validation: datasets.Dataset | Sequence[dict] | None = None,
    prompt_column: str | None = None,
    seed: int = 0,
    show_progress: bool = True,
) -> datasets.Dataset:
    """Pick the ``k`` prompts of ``pool`` most worth annotating next.

    Args:
        pool: prompts **without** responses: a ``prompt`` column (TRL conversational messages or
            plain strings) or a ``messages`` column whose last turn is not the assistant's. Other
            columns are kept. A non-empty ``completion`` / ``response`` / ``answer`` / ... column
            is refused (drop it first).
        model, tokenizer: a causal LM and its tokenizer; message prompts are rendered with the chat
            template (``add_generation_prompt=True``). Not needed for ``"diversity"`` with an
            ``embedder``.
        k: how many rows to return (1 <= k <= len(pool)).
        strategy: ``"uncertainty"``, ``"diversity"``, ``"hybrid"`` or ``"error_driven"`` (module
            docstring).
        uncertainty: ``"entropy"`` (mean token entropy, nats) or ``"least_confidence"``
            (``1 -`` geometric-mean token probability) of the greedy answer.
        max_new_tokens: length of the greedy answer that is scored.
        batch_size: prompts per forward / generate call.
        embedder: for ``"diversity"`` / ``"hybrid"``: an object with ``.encode(list_of_texts)``
            (e.g. ``sentence_transformers.SentenceTransformer``) or a callable ``texts -> (n, d)``
            array. It gets the prompts' message contents joined by newlines. Default: the model's
            mean-pooled last hidden states over the prompt tokens.
        candidate_factor: ``"hybrid"``: k-center greedy runs among the
            ``ceil(candidate_factor * k)`` most uncertain prompts (at least k, at most the pool).
        group_column: ``"error_driven"``: the pool column that defines groups.
        group_errors: ``"error_driven"``: ``{group: validation error}`` (e.g. per-group
            validation loss, or 1 - exact match); every pool group needs an entry.
        validation: ``"error_driven"``, instead of ``group_errors``: a dataset with reference
            answers and the same ``group_column``; the error is the model's mean completion loss
            per group (:func:`group_validation_errors`).
        prompt_column: the column holding the prompts (default ``prompt``, else ``messages``).
        seed: k-center greedy's first centre and tie-breaking.
        show_progress: tqdm progress bars.

    Returns:
        The selected rows (all pool columns) in pick order, plus ``al_score`` (the uncertainty for
        ``"uncertainty"`` / ``"hybrid"`` / ``"error_driven"``; for ``"diversity"`` the distance to
        the nearest earlier pick, and for the first pick its distance to the pool mean),
        ``al_rank`` (0 = first pick), ``al_reason``, ``al_strategy`` and ``al_source_row``.

    The model's train/eval mode and the tokenizer's ``padding_side`` are restored afterwards.
    Everything runs on the model's device under ``torch.no_grad()``.

    Example::

        >>> from sft_callbacks.demo_data import load_demo_dataset
        >>> pool = load_demo_dataset("test").remove_columns(["completion", "answer"])
        >>> batch = select_for_annotation(pool, model, tokenizer, k=20,
        ...                               strategy="hybrid")  # doctest: +SKIP
        >>> batch[0]["al_reason"]  # doctest: +SKIP
        'hybrid: most uncertain of the top 80 candidates; mean entropy 2.31 nats (top 1%)'
        >>> batch.push_to_hub("me/to-label")  # doctest: +SKIP
    """
    pool, prompts = _check_selection(pool, model, tokenizer, k, strategy, uncertainty, max_new_tokens, batch_size,
                                     embedder, candidate_factor, group_column, group_errors, validation, prompt_column)
    scorer = _Scorer(prompts, model, tokenizer, uncertainty, max_new_tokens, batch_size, embedder, show_progress)
    order, values, reasons = _pick(scorer, pool, k, strategy, candidate_factor, seed, group_column, group_errors,
                                   validation)
    return _selection_dataset(pool, order, values, reasons, strategy)


def _check_selection(
    pool: datasets.Dataset | Sequence[dict],
    model,
    tokenizer,
    k: int,
    strategy: str,
    uncertainty: str,
    max_new_tokens: int,
    batch_size: int,
    embedder: Any,
    candidate_factor: float,
    group_column: str | None,
    group_errors: dict[Any, float] | None,
    validation: datasets.Dataset | Sequence[dict] | None,
    prompt_column: str | None,
) -> tuple[datasets.Dataset, list[Any]]:
    """Check :func:`select_for_annotation`'s arguments, cheapest first; return the pool as a dataset and its prompts."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {list(STRATEGIES)}")
    if uncertainty not in UNCERTAINTY_MEASURES:
        raise ValueError(f"unknown uncertainty {uncertainty!r}; choose one of {list(UNCERTAINTY_MEASURES)}")
    for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        _positive_int(name, value)
    if isinstance(candidate_factor, bool) or not isinstance(candidate_factor, (int, float)) or candidate_factor < 1:
        raise ValueError(f"candidate_factor must be a number >= 1, got {candidate_factor!r}")
    if embedder is not None and not (hasattr(embedder, "encode") or callable(embedder)):
        raise ValueError("embedder must have .encode(list_of_texts) or be a callable texts -> (n, d) array")
    needs_model = not (strategy == "diversity" and embedder is not None)
    if needs_model and (model is None or tokenizer is None):
        raise ValueError(
            f"strategy={strategy!r} needs model= and tokenizer= (only 'diversity' with an embedder= works without)"
        )
    pool = _as_dataset(pool)
    if len(pool) == 0:
        raise ValueError("the pool is empty: nothing to select from")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(pool):
        raise ValueError(f"k must be an integer between 1 and the pool size ({len(pool)}), got {k!r}")
    clash = [c for c in AL_COLUMNS if c in pool.column_names]
    if clash:
        raise ValueError(f"the pool already has column(s) {clash}; remove them, e.g. pool.remove_columns({clash})")
    column = _resolve_prompt_column(pool, prompt_column)
    if strategy == "error_driven":
        if group_column is None or group_column not in pool.column_names:
            raise ValueError(
                f"strategy='error_driven' needs group_column= naming a pool column (got {group_column!r}); "
                f"columns: {pool.column_names}"
            )
        if (group_errors is None) == (validation is None):
            raise ValueError(
                "strategy='error_driven' needs exactly one of group_errors={group: error} or validation= "
                "(a dataset with reference answers and the same group column)"
            )
    return pool, _check_no_responses(pool, column)


@dataclass
class _Scorer:
    """Uncertainty scores and embeddings of pool rows by index; each row's score is computed at most once."""

    prompts: list[Any]
    model: Any
    tokenizer: Any
    measure: str
    max_new_tokens: int
    batch_size: int
    embedder: Any
    show_progress: bool
    scored: dict[int, float] = field(default_factory=dict)

    def score_rows(self, rows: list[int]) -> list[float]:
        """The uncertainty of the model's greedy answer to each of ``rows``."""
        todo = [i for i in rows if i not in self.scored]
        if todo:
            values = uncertainty_scores(self.model, self.tokenizer, [self.prompts[i] for i in todo], self.measure,
                                        self.max_new_tokens, self.batch_size, self.show_progress)
            self.scored.update(zip(todo, values.tolist()))
        return [self.scored[i] for i in rows]

    def embed_rows(self, rows: list[int]) -> np.ndarray:
        """Embeddings of ``rows``: the embedder's of their plain text if one was given, else the model's."""
        if self.embedder is not None:
            return _embed_with(self.embedder, [_plain_text(self.prompts[i]) for i in rows])
        return prompt_embeddings(self.model, self.tokenizer, [self.prompts[i] for i in rows], self.batch_size,
                                 self.show_progress)


def _pick(
    scorer: _Scorer,
    pool: datasets.Dataset,
    k: int,
    strategy: str,
    candidate_factor: float,
    seed: int,
    group_column: str | None,
    group_errors: dict[Any, float] | None,
    validation: datasets.Dataset | Sequence[dict] | None,
) -> tuple[list[int], list[float], list[str]]:
    """(rows, al_score, al_reason) of the ``k`` picks of ``strategy``, in pick order."""
    everything = list(range(len(scorer.prompts)))
    if strategy == "uncertainty":
        return _select_uncertainty(np.array(scorer.score_rows(everything)), k, scorer.measure)
    if strategy == "diversity":
        return _select_diversity(scorer.embed_rows(everything), k, seed)
    if strategy == "hybrid":
        scores = np.array(scorer.score_rows(everything))
        return _select_hybrid(scores, scorer.embed_rows, k, candidate_factor, scorer.measure, seed)
    groups = list(pool[group_column])
    if validation is not None:
        group_errors = group_validation_errors(
            scorer.model, scorer.tokenizer, validation, group_column, scorer.batch_size, scorer.show_progress
        )
    errors = _check_group_errors(group_errors, list(dict.fromkeys(groups)))
    return _select_error_driven(groups, errors, k, scorer.score_rows, scorer.measure)


def _selection_dataset(
    pool: datasets.Dataset, order: list[int], values: list[float], reasons: list[str], strategy: str
) -> datasets.Dataset:
    """The picked rows of ``pool`` in pick order, with the ``al_*`` columns added."""
    # from_dict on the k picked rows: keeps the pool's features, and no flatten/map progress bar.
    data = pool.select(order).to_dict()
    data.update({
        "al_score": [float(v) for v in values],
        "al_rank": list(range(len(order))),
        "al_reason": reasons,
        "al_strategy": [strategy] * len(order),
        "al_source_row": [int(i) for i in order],
    })
    features = pool.features.copy()
    features.update({
        "al_score": datasets.Value("float64"),
        "al_rank": datasets.Value("int64"),
        "al_reason": datasets.Value("string"),
        "al_strategy": datasets.Value("string"),
        "al_source_row": datasets.Value("int64"),
    })
    out = datasets.Dataset.from_dict(data, features=features)
    logger.info("select_for_annotation: %d of %d rows with strategy=%s", len(order), len(pool), strategy)
    return out
