"""Distributed worker for tests/test_distributed.py: run with ``torchrun --nproc_per_node 2 tests/support/dist_worker.py OUTDIR``.

Trains a frozen (learning_rate=0) tiny Llama with TRL's SFTTrainer on CPU / gloo in two scenarios and writes, per
rank, ``OUTDIR/rank{R}_{scenario}.json`` with what the test checks:

* ``dynamics``: ``TrainingDynamicsCallback`` only. The per-row statistics after training (they must be identical on
  both ranks), and on rank 0 the largest gap between a captured ``loss_last`` and an independent forward.
* ``sampling``: ``TrainingDynamicsCallback`` + a policy that, from step 2 on, puts all weight on rows with an even
  ``uid``. Each rank records (with its own forward hook, independent of the tracker's) which dataloader rows every
  training micro-batch held, plus the sampler's stream for the positions of each step, read at ``on_step_begin``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from sft_callbacks.engine.compat import checkpointing_off

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

# Run as a script: make the repository root importable for ``tests.support.helpers``.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from sft_callbacks import AdaptiveSampler, SamplingPolicyCallback, TrainingDynamicsCallback  # noqa: E402
from sft_callbacks.demo_data import load_demo_dataset  # noqa: E402
from sft_callbacks.models import build_tiny_llama, texts_for_tokenizer, train_tokenizer  # noqa: E402
from tests.support.helpers import reference_losses, sft_rows  # noqa: E402

datasets.disable_progress_bars()

N_ROWS = 64
MAX_STEPS = 6
BATCH = 4
POLICY_FROM_STEP = 2


class EvenUidPolicy(SamplingPolicyCallback):
    """All sampling weight on dataloader rows whose user row (== ``uid``) is even, from step 2 on."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    def compute_weights(self, ctx, reason):
        self.calls.append((reason, int(ctx.step)))
        if reason == "step" and ctx.step >= POLICY_FROM_STEP:
            # The dataloader's dataset has no `uid` column (non-model columns are removed); the index maps
            # dataloader rows to user rows, and sft_rows gives user row r the uid r.
            return (ctx.index.row_user % 2 == 0).astype(np.float64)
        return None


class StreamRecorder(TrainerCallback):
    """At each step's start, reads the sampler's indices for that step's stream positions.

    At ``on_step_begin`` of step ``s`` the step's micro-batch has been drawn and the last prune was at position
    ``s * B * W``, so ``sampler.draw`` still knows the weights active there.
    """

    def __init__(self, policy: SamplingPolicyCallback):
        self.policy = policy
        self.draws: dict[int, list[int]] = {}

    def on_step_begin(self, args, state, control, **kwargs):
        session = self.policy.session
        per_step = session.batch_size * session.world_size * args.gradient_accumulation_steps
        s = state.global_step
        self.draws[s] = session.sampler.draw(s * per_step, (s + 1) * per_step).tolist()


def record_micro_batches(model) -> list[list[list[int]]]:
    """Forward hook (training forwards only): the unpadded ``input_ids`` of every row of every micro-batch."""
    batches: list[list[list[int]]] = []

    def hook(module, args, kwargs, output):
        if not module.training:
            return
        ids = kwargs["input_ids"]
        mask = kwargs.get("attention_mask")
        rows = []
        for i in range(ids.shape[0]):
            row = ids[i] if mask is None else ids[i][mask[i].bool()]
            rows.append(row.tolist())
        batches.append(rows)

    model.register_forward_hook(hook, with_kwargs=True)
    return batches


def config(outdir: str, name: str) -> SFTConfig:
    return SFTConfig(
        output_dir=os.path.join(outdir, f"run_{name}"),
        use_cpu=True,
        ddp_backend="gloo",
        learning_rate=0.0,
        per_device_train_batch_size=BATCH,
        max_steps=MAX_STEPS,
        max_length=96,
        report_to=[],
        save_strategy="no",
        logging_steps=2,
        **checkpointing_off(),
        seed=0,
    )


def frame_json(frame) -> dict:
    out = {}
    for col in ("times_seen", "loss_last", "loss_mean", "loss_first", "token_accuracy", "last_step", "n_trained_tokens"):
        v = frame[col].to_numpy()
        out[col] = [None if (isinstance(x, float) and np.isnan(x)) else x for x in v.tolist()]
    return out


def dataset_rows(trainer, session) -> tuple[dict[tuple, int], list[int]]:
    """Unpadded input_ids -> dataloader row, and the uid of every dataloader row."""
    ids = session.dataset["input_ids"]
    by_ids: dict[tuple, int] = {}
    for r, x in enumerate(ids):
        if tuple(x) in by_ids:
            raise RuntimeError(f"dataloader rows {by_ids[tuple(x)]} and {r} have identical input_ids")
        by_ids[tuple(x)] = r
    uid = trainer.train_dataset["uid"]  # same rows, same order as the dataloader's dataset (columns removed)
    assert len(uid) == len(ids)
    return by_ids, [int(u) for u in uid]


def run_dynamics(outdir, rank, tokenizer, data) -> dict:
    model = build_tiny_llama(tokenizer, seed=0, attn_implementation="eager")
    cb = TrainingDynamicsCallback()
    trainer = SFTTrainer(
        model=model, args=config(outdir, "dynamics"), train_dataset=data, processing_class=tokenizer, callbacks=[cb]
    )
    batches = record_micro_batches(model)
    trainer.train()
    session = cb.session
    frame = cb.dynamics()
    by_ids, uid = dataset_rows(trainer, session)
    result = {
        "world_size": session.world_size,
        "dynamics": frame_json(frame),
        "unmatched": int(session.tracker.unmatched),
        "nonfinite": int(session.tracker.nonfinite),
        "micro_batch_rows": [[by_ids[tuple(x)] for x in b] for b in batches],
        "uid": uid,
    }
    if rank == 0:
        seen = frame[frame.times_seen > 0]
        prepared = trainer.train_dataset
        by_uid = {int(u): i for i, u in enumerate(prepared["uid"])}
        rows = [prepared[by_uid[int(u)]] for u in seen.index]  # user row r has uid r
        ref = reference_losses(trainer.model, [r["input_ids"] for r in rows], [r["labels"] for r in rows])
        result["n_checked"] = len(seen)
        result["max_abs_err_loss_last"] = float(np.max(np.abs(seen["loss_last"].to_numpy() - ref[:, 0])))
        result["max_abs_err_loss_mean"] = float(np.max(np.abs(seen["loss_mean"].to_numpy() - ref[:, 0])))
    return result


def run_sampling(outdir, rank, tokenizer, data) -> dict:
    model = build_tiny_llama(tokenizer, seed=0, attn_implementation="eager")
    dyn = TrainingDynamicsCallback(sync_every=1)
    policy = EvenUidPolicy()
    recorder = StreamRecorder(policy)
    trainer = SFTTrainer(
        model=model,
        args=config(outdir, "sampling"),
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[dyn, policy, recorder],
    )
    batches = record_micro_batches(model)
    scheduled: list[tuple[int, np.ndarray]] = []

    class Spy(TrainerCallback):  # wraps the installed sampler's schedule() to log every call
        def on_train_begin(self, args, state, control, **kwargs):
            sampler = policy.session.sampler
            original = sampler.schedule

            def schedule(weights, at_position):
                scheduled.append((int(at_position), np.array(weights, dtype=np.float64)))
                return original(weights, at_position)

            sampler.schedule = schedule

    trainer.add_callback(Spy())
    trainer.train()
    session = policy.session
    sampler = session.sampler
    by_ids, uid = dataset_rows(trainer, session)
    # Replay the logged schedule on a fresh sampler: the whole stream the run should have drawn.
    replay = AdaptiveSampler(sampler.num_rows, sampler.num_samples, seed=sampler.seed)
    for at, w in scheduled:
        replay.schedule(w, at)
    per_step = session.batch_size * session.world_size
    return {
        "world_size": session.world_size,
        "batch_size": session.batch_size,
        "lag_micro_batches": session.lag_micro_batches,
        "weight_updates": session.weight_updates,
        "policy_calls": policy.calls,
        "schedule_positions": [at for at, _ in scheduled],
        "current_weights": sampler.current_weights.astype(np.float64).tolist(),
        "row_user": session.tracker.index.row_user.tolist(),
        "uid": uid,
        "micro_batch_rows": [[by_ids[tuple(x)] for x in b] for b in batches],
        "stream_at_step_begin": {str(k): v for k, v in recorder.draws.items()},
        "stream_replayed": replay.draw(0, MAX_STEPS * per_step).tolist(),
        "times_seen": dyn.dynamics().times_seen.tolist(),
        "unmatched": int(session.tracker.unmatched),
    }


def run_pruning(outdir, rank, tokenizer, data) -> dict:
    """InfoBatchCallback on two processes: its per-epoch decisions, the weights in force and every micro-batch."""
    from sft_callbacks import InfoBatchCallback

    decisions: dict[int | str, list[bool]] = {}

    class Recording(InfoBatchCallback):
        def _decide(self, ctx, reason):
            decided = super()._decide(ctx, reason)
            if decided:  # an epoch's rows, or the switch to annealing at a sync point inside an epoch
                decisions[f"step{ctx.step}" if reason == "step" else int(self.epoch_decided)] = self.keep.tolist()
            return decided

    model = build_tiny_llama(tokenizer, seed=0, attn_implementation="eager")
    dyn, prune = TrainingDynamicsCallback(), Recording(prune_ratio=0.5)
    args = config(outdir, "pruning")
    args.max_steps, args.num_train_epochs, args.learning_rate = -1, 3, 3e-3
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                         callbacks=[dyn, prune])
    batches = record_micro_batches(model)
    trainer.train()
    session = prune.session
    by_ids, uid = dataset_rows(trainer, session)
    per_step = session.batch_size * session.world_size
    return {
        "world_size": session.world_size,
        "decisions": {str(k): v for k, v in decisions.items()},
        "current_weights": session.sampler.current_weights.astype(np.float64).tolist(),
        "loss_weights": None if session.tracker.loss_weights is None else session.tracker.loss_weights.tolist(),
        "uid": uid,
        "row_of_sample": dict(zip(map(str, session.tracker.index.seq_uid.tolist()),
                                  session.tracker.index.seq_row.tolist())),
        "lag_micro_batches": session.lag_micro_batches,
        "micro_batch_rows": [[by_ids[tuple(x)] for x in b] for b in batches],
        "stream": session.sampler.draw(0, trainer.state.global_step * per_step).tolist(),
        "per_step": per_step,
    }


def main():
    outdir = sys.argv[1]
    scenarios = sys.argv[2:] or ["dynamics", "sampling", "pruning"]
    torch.set_num_threads(1)
    tokenizer = train_tokenizer(texts_for_tokenizer(load_demo_dataset("train")), vocab_size=512)
    data = sft_rows(N_ROWS)
    rank = int(os.environ.get("RANK", "0"))
    vocab_hash = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()
    for name in scenarios:
        result = {"dynamics": run_dynamics, "sampling": run_sampling,
                  "pruning": run_pruning}[name](outdir, rank, tokenizer, data)
        result["rank"] = rank
        result["vocab_hash"] = vocab_hash
        with open(os.path.join(outdir, f"rank{rank}_{name}.json"), "w") as f:
            json.dump(result, f)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Tear the gloo group down before the interpreter does: exiting with it alive aborted a rank now and then
        # ("terminate called without an active exception", exit code -6) after every result was written.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
