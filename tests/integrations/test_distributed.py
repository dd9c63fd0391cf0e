"""Two processes (torchrun, gloo, CPU): statistics are merged across processes, and both follow one sampler stream.

``tests/support/dist_worker.py`` runs once under ``torchrun --nproc_per_node 2`` for both scenarios (one launch keeps the
test under half a minute) and each rank writes its own JSON; the checks are here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "tests" / "support" / "dist_worker.py"
MAX_STEPS, BATCH, WORLD = 6, 4, 2
PER_STEP = BATCH * WORLD
POLICY_FROM_STEP = 2

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with the gloo backend",
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    cmd += ["--nproc_per_node", str(WORLD), "--master_port", str(_free_port()), str(WORKER), str(out)]
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
    )
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    res = {}
    for name in ("dynamics", "sampling", "pruning"):
        res[name] = [json.loads((out / f"rank{r}_{name}.json").read_text()) for r in range(WORLD)]
    return res


def _uids(rows, uid):
    return [uid[r] for r in rows]


def test_both_ranks_use_the_same_tokenizer_and_world(results):
    for name in results:
        r0, r1 = results[name]
        assert r0["vocab_hash"] == r1["vocab_hash"]
        assert r0["world_size"] == r1["world_size"] == WORLD


def test_dynamics_merged_across_processes_and_exact(results):
    r0, r1 = results["dynamics"]
    # Statistics are merged at every flush: both ranks end with the very same table.
    assert r0["dynamics"] == r1["dynamics"]
    times_seen = r0["dynamics"]["times_seen"]
    assert sum(times_seen) == MAX_STEPS * BATCH * WORLD
    assert r0["unmatched"] == r1["unmatched"] == 0 and r0["nonfinite"] == 0
    # The ranks drew different rows; each row's times_seen counts the draws of both ranks (checked against the
    # rows recorded by the worker's own hook, mapped to the user's rows through the kept `uid` column).
    uid = r0["uid"]
    assert r1["uid"] == uid
    assert len(r0["micro_batch_rows"]) == len(r1["micro_batch_rows"]) == MAX_STEPS
    drawn0 = [u for b in r0["micro_batch_rows"] for u in _uids(b, uid)]
    drawn1 = [u for b in r1["micro_batch_rows"] for u in _uids(b, uid)]
    assert not set(drawn0) & set(drawn1)  # the default sampler is a permutation, sharded between the ranks
    counts = Counter(drawn0 + drawn1)
    assert {u: n for u, n in enumerate(times_seen) if n} == dict(counts)
    # Every seen row's last loss equals an independent forward (frozen model), checked on rank 0.
    assert r0["n_checked"] == len(counts)
    assert r0["max_abs_err_loss_last"] < 1e-4
    assert r0["max_abs_err_loss_mean"] < 1e-4


def test_weighted_sampling_follows_one_stream_on_both_ranks(results):
    r0, r1 = results["sampling"]
    uid = r0["uid"]
    assert r1["uid"] == uid
    # ctx.index.row_user maps dataloader rows to user rows; sft_rows gives user row r the uid r.
    assert r0["row_user"] == r1["row_user"] == uid

    # Both processes scheduled the same weights at the same positions, and hold the same weights.
    assert r0["schedule_positions"] == r1["schedule_positions"]
    assert r0["current_weights"] == r1["current_weights"]
    w = r0["current_weights"]
    assert all((x > 0) == (u % 2 == 0) for x, u in zip(w, uid))
    assert r0["stream_at_step_begin"] == r1["stream_at_step_begin"]
    assert r0["stream_replayed"] == r1["stream_replayed"]

    lag = r0["lag_micro_batches"]
    assert r1["lag_micro_batches"] == lag
    first_weighted_step = POLICY_FROM_STEP + lag  # micro-batches are steps here (no accumulation)
    assert r0["schedule_positions"][0] == first_weighted_step * PER_STEP
    assert first_weighted_step < MAX_STEPS, "the test must see the new weights take effect"

    b0, b1 = r0["micro_batch_rows"], r1["micro_batch_rows"]
    assert len(b0) == len(b1) == MAX_STEPS
    for s in range(MAX_STEPS):
        stream = r0["stream_at_step_begin"][str(s)]
        assert stream == r0["stream_replayed"][s * PER_STEP : (s + 1) * PER_STEP]
        # Sharded: the ranks drew different rows at this step, and between them exactly the step's stream.
        assert b0[s] != b1[s], f"step {s}: both ranks drew {b0[s]}"
        assert sorted(b0[s] + b1[s]) == sorted(stream), f"step {s}: {b0[s]} + {b1[s]} vs stream {stream}"
        halves = (sorted(stream[:BATCH]), sorted(stream[BATCH:]))
        assert sorted(b0[s]) in halves and sorted(b1[s]) in halves
        uids = _uids(b0[s] + b1[s], uid)
        if s >= first_weighted_step:
            assert all(u % 2 == 0 for u in uids), f"step {s}: odd uid drawn after the weights changed: {uids}"
    before = [u for s in range(first_weighted_step) for u in _uids(b0[s] + b1[s], uid)]
    assert any(u % 2 for u in before), "odd uids should be drawn before the weights change"

    # The dynamics still count every drawn sample, on both ranks.
    assert r0["times_seen"] == r1["times_seen"]
    assert sum(r0["times_seen"]) == MAX_STEPS * PER_STEP
    counts = Counter(u for s in range(MAX_STEPS) for u in _uids(b0[s] + b1[s], uid))
    assert {u: n for u, n in enumerate(r0["times_seen"]) if n} == dict(counts)
    assert r0["unmatched"] == r1["unmatched"] == 0


def test_pruning_decides_alike_and_draws_one_stream_on_both_ranks(results):
    r0, r1 = results["pruning"]
    # The same rows skipped each epoch on both processes (the choice is seeded by the run's seed and the epoch).
    # Both also switch to annealing at the same sync point, inside the last epoch (7/8 of the steps).
    assert r0["decisions"] == r1["decisions"]
    assert sorted(k for k in r0["decisions"] if not k.startswith("step")) == ["0", "1", "2", "3"]
    assert [k for k in r0["decisions"] if k.startswith("step")] and all(
        all(v) for k, v in r0["decisions"].items() if k.startswith("step"))
    assert r0["current_weights"] == r1["current_weights"] and r0["loss_weights"] == r1["loss_weights"]
    assert r0["stream"] == r1["stream"]
    per_step, lag, uid = r0["per_step"], r0["lag_micro_batches"], r0["uid"]
    steps_per_epoch = len(uid) // per_step
    b0, b1 = r0["micro_batch_rows"], r1["micro_batch_rows"]
    for s in range(len(b0)):  # sharded: between them exactly the step's stream
        assert sorted(b0[s] + b1[s]) == sorted(r0["stream"][s * per_step : (s + 1) * per_step])
    row_of = {int(k): v for k, v in r0["row_of_sample"].items()}  # tracker sample id -> dataloader row
    for epoch in (1, 2):
        keep = r0["decisions"][str(epoch)]
        skipped = {row_of[u] for u, k in enumerate(keep) if not k}
        assert skipped, f"epoch {epoch}: nothing skipped"
        drawn = {r for s in range(epoch * steps_per_epoch + lag, (epoch + 1) * steps_per_epoch) for r in b0[s] + b1[s]}
        assert not drawn & skipped, f"epoch {epoch}: skipped rows drawn {sorted(drawn & skipped)}"
