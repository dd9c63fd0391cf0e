"""A callback a test recipe names by import path (``tests.recipe_probe:StreamProbe``): it records, on every rank,
the sampler's index stream for each step and the groups the policies saw, and writes ``<out>/rank<R>.json``."""

from __future__ import annotations

import json
import os

from sft_callbacks import SamplingPolicyCallback


class StreamProbe(SamplingPolicyCallback):
    """Leaves the weights alone (``compute_weights`` returns None); reads the shared sampler at each step."""

    def __init__(self, out: str):
        super().__init__()
        self.out = out
        self.draws: dict[int, list[int]] = {}
        self.sharded = None
        self.optimizer = None
        self.head_sum = None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        super().on_step_end(args, state, control, model=model, **kwargs)
        from torch.distributed.tensor import DTensor

        # FSDP2 (fully_shard) turns the parameters into DTensors in place; plain data parallel leaves tensors
        if model is not None:
            self.sharded = any(isinstance(p, DTensor) for p in model.parameters())
            head = getattr(getattr(model, "module", model), "sft_domain_head", None)  # DDP wraps the model
            if head is not None:  # DomainAdaptationCallback's head: the same on every rank if DDP syncs it
                self.head_sum = [float(p.detach().double().sum()) for p in head.parameters()]
        optimizer = kwargs.get("optimizer")
        inner = getattr(optimizer, "optimizer", None)  # accelerate's wrapper -> the engine's optimizer
        self.optimizer = type(inner if inner is not None else optimizer).__name__

    def required_columns(self):
        return ["dataset"]  # the column the recipe runner adds to a datasets: mixture

    def compute_weights(self, ctx, reason):
        return None

    def on_step_begin(self, args, state, control, **kwargs):
        session = self.session
        if session is None or session.sampler is None:
            return
        per_step = session.batch_size * session.world_size * args.gradient_accumulation_steps
        s = state.global_step
        self.draws[s] = session.sampler.draw(s * per_step, (s + 1) * per_step).tolist()

    def on_train_end(self, args, state, control, **kwargs):
        os.makedirs(self.out, exist_ok=True)
        session = self.session
        column = session.columns["dataset"] if session is not None and session.columns is not None else None
        with open(os.path.join(self.out, f"rank{args.process_index}.json"), "w") as fh:
            frame = self.dynamics() if session is not None else None
            json.dump({"world_size": args.world_size, "draws": self.draws, "sharded": self.sharded,
                       "optimizer": self.optimizer, "head_sum": self.head_sum,
                       "groups": sorted({str(v) for v in column}) if column is not None else None,
                       "times_seen": frame["times_seen"].tolist() if frame is not None else None,
                       "loss_last": frame["loss_last"].tolist() if frame is not None else None,
                       "unmatched": int(session.tracker.unmatched) if session is not None else None}, fh)
