"""A training process for the fault-injection test: every strategy on, a checkpoint every few steps.

``python -m tests.support.fault_worker WORKSPACE OUT ATTEMPT [RESUME]`` trains the workspace's tiny model on demo
rows, appends each step's micro-batches (rows of the training set) to ``OUT/batches.jsonl`` with the attempt number,
prints ``step N`` after each step (the test kills the process at one of them; with ``SFT_FAULT_PACED=1`` it then
waits for a line on stdin before the next step, so it runs at most one step past the one the test chose), and at
the end writes
``OUT/final.json``: the per-sample statistics, the policies' last weights and a checksum of the parameters.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer

from sft_callbacks import (
    CurriculumCallback,
    DataMapCallback,
    GroupBalanceCallback,
    HardExampleMiningCallback,
    TrainingDynamicsCallback,
    ValidationGuidedResamplingCallback,
)
from sft_callbacks.engine.compat import checkpointing_off

from .helpers import BatchRecorder, sft_rows

MAX_STEPS = 24
SAVE_STEPS = 3


def callbacks() -> list:
    return [
        TrainingDynamicsCallback(sync_every=2),
        ValidationGuidedResamplingCallback(group_column="domain"),
        HardExampleMiningCallback(warmup=2, group_column="domain"),
        CurriculumCallback(difficulty="length", pacing="root", start=0.3, duration=0.6),
        GroupBalanceCallback(group_column="domain", beta=0.5),
        DataMapCallback(),
    ]


class _StepLog(TrainerCallback):
    """After each optimizer step: that step's micro-batches to the log, then ``step N`` on stdout."""

    def __init__(self, recorder: BatchRecorder, path: Path, attempt: int):
        self.recorder, self.path, self.attempt, self.written = recorder, path, attempt, 0

    def on_step_end(self, args, state, control, **kwargs):
        new = self.recorder.batches[self.written:]
        self.written = len(self.recorder.batches)
        with self.path.open("a") as fh:
            fh.write(json.dumps({"attempt": self.attempt, "step": state.global_step, "batches": new}) + "\n")
        print(f"step {state.global_step}", flush=True)
        if os.environ.get("SFT_FAULT_PACED") == "1":
            sys.stdin.readline()


def main(workspace: str, out: str, attempt: int, resume: str | None) -> None:
    out_dir = Path(out)
    tokenizer = AutoTokenizer.from_pretrained(Path(workspace) / "model")
    model = AutoModelForCausalLM.from_pretrained(Path(workspace) / "model", attn_implementation="eager")
    cbs = callbacks()
    args = SFTConfig(output_dir=str(out_dir / "run"), max_steps=MAX_STEPS, per_device_train_batch_size=4,
                     learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="steps", save_steps=SAVE_STEPS,
                     logging_steps=4, eval_strategy="steps", eval_steps=4, per_device_eval_batch_size=8,
                     max_length=320, seed=0, disable_tqdm=True, **checkpointing_off())
    trainer = SFTTrainer(model=model, args=args, train_dataset=sft_rows(66), eval_dataset=sft_rows(24, seed=1),
                         processing_class=tokenizer, callbacks=cbs)
    recorder = BatchRecorder(model, lambda: cbs[0].session)
    trainer.add_callback(_StepLog(recorder, out_dir / "batches.jsonl", attempt))
    trainer.train(resume_from_checkpoint=resume)
    session = cbs[0].session
    frame = cbs[0].dynamics()
    final = {
        "stats": {c: frame[c].astype(float).tolist() for c in ("times_seen", "loss_mean", "loss_last", "last_step")},
        "policy_weights": {k: np.asarray(v, dtype=float).tolist() for k, v in session.last_policy_weights.items()},
        "sampler_weights": session.sampler.current_weights.astype(float).tolist(),
        "parameters": float(sum(p.detach().double().sum() for p in model.parameters())),
    }
    (out_dir / "final.json").write_text(json.dumps(final))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)
