"""Plumbing shared by the functions that run a model over a dataset outside training (active learning, preference
pairs): chat-message detection, the model's device, the pad token, eval mode with the caller's state restored,
and an optional progress bar."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


def is_messages(value: Any) -> bool:
    """Whether ``value`` is a TRL conversational message list (``[{"role": ..., "content": ...}, ...]``).

    Example:
        >>> is_messages([{"role": "user", "content": "Hi"}]), is_messages("Hi")
        (True, False)
    """
    return isinstance(value, list) and len(value) > 0 and isinstance(value[0], dict) and "role" in value[0]


def model_device(model) -> torch.device:
    """The device ``model`` runs on (its ``device`` attribute, else that of its first parameter)."""
    device = getattr(model, "device", None)
    return device if device is not None else next(model.parameters()).device


def pad_token_id(tokenizer) -> int:
    """The id to pad batches with: the pad token, else the end-of-sequence token; a clear error without either."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError(
            "the tokenizer has neither a pad_token nor an eos_token to pad batches with; set tokenizer.pad_token"
        )
    return int(pad_id)


@contextlib.contextmanager
def inference(model, tokenizer=None) -> Iterator[None]:
    """Eval mode (no dropout) and ``torch.no_grad`` for the block; the caller's train/eval mode and the tokenizer's
    ``padding_side`` come back afterwards, even if the block raises."""
    was_training = getattr(model, "training", False)
    old_side = tokenizer.padding_side if tokenizer is not None else None
    try:
        if hasattr(model, "eval"):
            model.eval()
        with torch.no_grad():
            yield
    finally:
        if tokenizer is not None:
            tokenizer.padding_side = old_side
        if was_training and hasattr(model, "train"):
            model.train()


def progress(iterable, total: int, desc: str, show: bool):
    """``iterable`` wrapped in a tqdm bar when ``show`` (and tqdm is installed), else unchanged."""
    if not show:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, total=total, desc=desc)
