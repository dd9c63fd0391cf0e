"""Per-sample loss weighting in tests: a policy that weights rows by their number, the per-micro-batch record of
the unweighted losses, and the loss the Trainer should log per optimizer step."""

from __future__ import annotations

import numpy as np
import torch

from sft_callbacks import SFTCallback
from sft_callbacks.engine.row_keys import padded_keys, segment_ids, segment_keys


class WeightByRow(SFTCallback):
    """Loss weight per sample from a function of the user's row number (test policy)."""

    needs_loss_weighting = True

    def __init__(self, mode: str = "half"):
        super().__init__(mode=mode)
        self.mode = mode

    def policy_loss_weights(self, ctx, reason):
        n = len(ctx.index.keys)
        if self.mode == "half":
            return np.full(n, 0.5)
        uid_user = np.zeros(n, dtype=np.int64)
        uid_user[ctx.index.row_uid()] = ctx.index.row_user
        return np.where(uid_user % 2 == 0, 2.0, 0.25)


def step_losses(trainer) -> list[float]:
    """The losses the Trainer logged, one per logging step."""
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def record_micro_batches(model, dynamics) -> list:
    """Per training micro-batch ``(unweighted NLL sums, token counts, uids)`` per sequence, read from the fused
    head's outputs by a forward hook on ``model`` (padded or padding-free batches); register it before training
    so it runs before our hook changes them."""
    seen = []

    def record(module, args, kwargs, output):
        if module.training:
            mask = output.label_mask.float()
            nll = -output.log_probs.detach().float() * mask
            if kwargs.get("attention_mask") is None and kwargs.get("position_ids") is not None:
                position_ids = kwargs["position_ids"]
                n = int((position_ids[0] == 0).sum())
                keys = segment_keys(kwargs["input_ids"], kwargs["labels"], position_ids, n).numpy()
                seg = segment_ids(position_ids)[-nll.shape[1]:]  # the shifted tokens' sequences

                def per_seq(x):
                    return torch.zeros(n).index_add_(0, seg, x[0]).numpy()
            else:
                keys = padded_keys(kwargs["input_ids"], kwargs["labels"], kwargs["attention_mask"]).numpy()

                def per_seq(x):
                    return x.sum(1).numpy()
            uid = dynamics.session.tracker.index.lookup(keys.view(np.uint64))
            seen.append((per_seq(nll), per_seq(mask), uid))

    model.register_forward_hook(record, with_kwargs=True)
    return seen


def parity_weighted_step_losses(seen, dynamics, steps: int, accum: int) -> list[float]:
    """The loss the Trainer should log per optimizer step under ``WeightByRow("parity")``: weighted NLL summed over
    the step's micro-batches, divided by the step's token count (the Trainer's normalisation)."""
    index = dynamics.session.tracker.index
    uid_user = np.zeros(len(index.keys), dtype=np.int64)
    uid_user[index.row_uid()] = index.row_user
    expected = []
    for step in range(steps):
        nll, ntok, uid = (np.concatenate(x) for x in zip(*seen[accum * step : accum * (step + 1)]))
        w = np.where(uid_user[uid] % 2 == 0, 2.0, 0.25)
        expected.append((w * nll).sum() / ntok.sum())
    return expected
