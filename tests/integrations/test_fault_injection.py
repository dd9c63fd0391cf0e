"""Fault injection: a training process with every strategy on is killed (SIGKILL) at random moments, three times,
and resumed each time from the last complete checkpoint; the finished run must equal an uninterrupted one: the
index stream, the per-sample statistics, the policies' weights and the parameters."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sft_callbacks import last_complete_checkpoint
from sft_callbacks.engine.checkpoints import checkpoint_is_complete

from ..support.fault_worker import MAX_STEPS, SAVE_STEPS
from ..support.recipes import REPO, launch_env


def _start(workspace, out, attempt, resume=None, paced=False):
    cmd = [sys.executable, "-m", "tests.support.fault_worker", str(workspace), str(out), str(attempt)]
    env = {**launch_env(), "SFT_FAULT_PACED": "1" if paced else "0"}
    return subprocess.Popen([*cmd, *([resume] if resume else [])], cwd=str(REPO), env=env, text=True,
                            stdin=subprocess.PIPE if paced else subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)


def _stream(out) -> dict[int, list]:
    """Each step's micro-batches as the attempt that trained it last drew them (a resumed attempt redoes the steps
    after its checkpoint)."""
    by_step: dict[int, list] = {}
    for line in (out / "batches.jsonl").read_text().splitlines():
        record = json.loads(line)
        by_step[record["step"]] = record["batches"]
    return by_step


@pytest.mark.timeout(900)
def test_killed_three_times_and_resumed_equals_the_uninterrupted_run(workspace, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    assert _start(workspace, full, 0).wait(timeout=600) == 0

    killed = tmp_path / "killed"
    killed.mkdir()
    rng = np.random.default_rng(7)
    kills, resumed_from = [], []
    for attempt in range(1, 4):
        resume = last_complete_checkpoint(killed / "run")
        resumed_from.append(resume)
        done = int(resume.rsplit("-", 1)[1]) if resume else 0
        # A step past the next save (so each attempt gets further), before the end.
        target = int(rng.integers(done + SAVE_STEPS + 1, min(done + SAVE_STEPS + 5, MAX_STEPS - 1)))
        proc = _start(workspace, killed, attempt, resume, paced=True)
        for line in proc.stdout:  # the worker waits after each step until told to go on
            if line.startswith("step "):
                proc.stdin.write("go\n")
                proc.stdin.flush()
                if line.strip() == f"step {target}":
                    break
        time.sleep(float(rng.uniform(0.0, 0.4)))  # within the next step: mid-step, mid-save, mid-eval, or waiting
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL, "the process finished before it was killed"
        kills.append(target)
    resume = last_complete_checkpoint(killed / "run")
    assert _start(workspace, killed, 4, resume).wait(timeout=600) == 0
    assert len(set(resumed_from[1:])) == 2 and all(r is not None for r in resumed_from[1:])  # it did go back

    # Every folder it resumed from was complete; an incomplete one is never chosen.
    assert all(checkpoint_is_complete(r) for r in [*resumed_from[1:], resume])
    a, b = _stream(full), _stream(killed)
    assert sorted(b) == list(range(1, MAX_STEPS + 1))
    assert b == a  # the same rows in the same micro-batches at every step
    fa = json.loads((full / "final.json").read_text())
    fb = json.loads((killed / "final.json").read_text())
    for column, values in fa["stats"].items():
        np.testing.assert_allclose(fb["stats"][column], values, rtol=1e-6, equal_nan=True, err_msg=column)
    assert fb["policy_weights"].keys() == fa["policy_weights"].keys()
    for name, values in fa["policy_weights"].items():
        np.testing.assert_allclose(fb["policy_weights"][name], values, rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(fb["sampler_weights"], fa["sampler_weights"], rtol=1e-6)
    assert fb["parameters"] == pytest.approx(fa["parameters"], rel=1e-6)
