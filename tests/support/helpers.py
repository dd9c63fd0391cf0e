"""Helpers shared by the tests (data builders, independent reference computations)."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import torch

from sft_callbacks.demo_data import load_demo_dataset
from sft_callbacks.engine.row_keys import padded_keys

# Older transformers releases round each logged loss to 4 decimals: logged losses are compared within that.
LOGGED_LOSS_ATOL = 1e-4


def sft_rows(n: int, seed: int = 0) -> datasets.Dataset:
    """``n`` demo rows (several domains) with a ``uid`` column that TRL keeps through preparation."""
    ds = load_demo_dataset("train").shuffle(seed=seed).select(range(n)).flatten_indices()
    ds = ds.remove_columns([c for c in ds.column_names if c not in ("prompt", "completion", "domain")])
    return ds.add_column("uid", list(range(n)))


@torch.no_grad()
def reference_losses(model, input_ids_rows, labels_rows):
    """Independent per-row mean NLL and token accuracy over the trained tokens: one plain forward per row."""
    model.eval()
    out = []
    for ids, labels in zip(input_ids_rows, labels_rows):
        ids_t = torch.tensor([ids])
        logits = model(input_ids=ids_t).logits[0, :-1].float()
        target = torch.tensor(labels[1:])
        mask = target != -100
        logp = torch.log_softmax(logits, -1)[mask].gather(1, target[mask][:, None])[:, 0]
        acc = (logits[mask].argmax(-1) == target[mask]).float().mean()
        out.append((float(-logp.mean()), float(acc)))
    return np.array(out)


def reference_visit_stats(model, input_ids_rows, labels_rows):
    """Independent per-row whole-answer correctness, least likely trained token's log-probability and mean AUM
    margin (the given token's logit minus the best other token's): one plain forward per row."""
    model.eval()
    out = []
    for ids, labels in zip(input_ids_rows, labels_rows):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
        target = torch.tensor(labels[1:])
        mask = target != -100
        z, t = logits[mask], target[mask]
        logp = torch.log_softmax(z, -1).gather(1, t[:, None])[:, 0]
        given = z.gather(1, t[:, None])[:, 0]
        other = z.scatter(1, t[:, None], float("-inf")).max(1).values
        out.append((float((z.argmax(-1) == t).all()), float(logp.min()), float((given - other).mean())))
    return np.array(out)


def visits_by_row(tracker) -> dict[int, list[dict]]:
    """The tracker's visit log grouped by user row: ``{row: [{"loss", "correct", "min_logp", "margin"}, ...]}``."""
    log = tracker.visits.arrays()
    user_uid = tracker.index.user_uid()
    rows_of = {}
    for row, uid in enumerate(user_uid):
        rows_of.setdefault(int(uid), []).append(row)
    out: dict[int, list[dict]] = {}
    for i, uid in enumerate(log["uid"]):
        for row in rows_of.get(int(uid), []):
            out.setdefault(row, []).append({k: log[k][i] for k in ("step", "loss", "correct", "min_logp", "margin")})
    return out


class BatchRecorder:
    """Records the dataloader rows of every training micro-batch (by content key) and counts eval forwards."""

    def __init__(self, model, session_of):
        self.batches: list[list[int]] = []
        self.eval_forwards = 0
        self.session_of = session_of
        self.handle = model.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        if not module.training:
            self.eval_forwards += 1
            return
        keys = padded_keys(kwargs["input_ids"], kwargs["labels"], kwargs.get("attention_mask"))
        index = self.session_of().tracker.index
        uid = index.lookup(keys.numpy().view(np.uint64))
        uid_to_row = np.empty(len(index.keys), dtype=np.int64)
        uid_to_row[index.seq_uid] = index.seq_row
        self.batches.append(uid_to_row[uid].tolist())


FRUITS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "melon", "peach", "pear", "plum", "kiwi", "lime"]
TOOLS = ["hammer", "wrench", "saw", "drill", "chisel", "pliers", "shovel", "rake", "axe", "file", "level", "clamp"]


def corrupted_labels(n=96, seed=0):
    """A learnable labelling task (each word appears several times) with 25% of the labels flipped."""
    import datasets

    rng = np.random.default_rng(seed)
    words = [(w, "fruit") for w in FRUITS] + [(w, "tool") for w in TOOLS]
    rows = []
    for i in range(n):
        word, label = words[i % len(words)]
        corrupted = bool(rng.random() < 0.25)
        answer = {"fruit": "tool", "tool": "fruit"}[label] if corrupted else label
        rows.append({"prompt": [{"role": "user", "content": word}],
                     "completion": [{"role": "assistant", "content": answer}], "corrupted": corrupted})
    return datasets.Dataset.from_list(rows)


def safetensors_keys(folder) -> list[str]:
    """The tensor names in every ``*.safetensors`` file of ``folder`` (a saved model or checkpoint); fails if none."""
    from safetensors import safe_open

    keys = []
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            keys += list(f.keys())
    assert keys, f"no safetensors in {folder}"
    return keys


def plain_trainer_rows(rows, tokenizer, max_length: int = 96, drop=("prompt", "completion")):
    """``rows`` (prompt-completion, conversational) tokenised as a user of the plain ``Trainer`` would: the chat
    template, completion-only labels, truncated to ``max_length``; rows left with no trained token dropped."""
    def tok(row):
        prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
        ids = tokenizer(full, add_special_tokens=False)["input_ids"][:max_length]
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        return {"input_ids": ids, "labels": [-100] * min(n_prompt, len(ids)) + ids[n_prompt:]}

    data = rows.map(tok, remove_columns=list(drop))
    return data.filter(lambda r: any(x != -100 for x in r["labels"]))
