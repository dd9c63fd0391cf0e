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
            json.dump({"world_size": args.world_size, "draws": self.draws,
                       "groups": sorted({str(v) for v in column}) if column is not None else None}, fh)
