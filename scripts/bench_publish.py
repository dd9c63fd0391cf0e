"""Benchmark exporting and pushing a large annotated dataset (default 1M rows) to a local Hub-compatible server.

For each size (default 1M and 4M rows) it

1. builds an annotated dataset on disk (prompt / completion / domain + the per-sample annotation columns the
   callbacks write: times_seen, loss_*, token_accuracy, weight, data-map coordinates, region, flag_noisy), in a
   separate process, not measured;
2. export worker (fresh process, like ``sft-callbacks export``): ``load_from_disk`` (memory-mapped; the memory
   after that is the baseline), ``curate_annotated`` (drop flagged rows, top 90% by loss) and
   ``save_curated_dataset`` (parquet shards + card + provenance.json + plots);
3. push worker (fresh process, like ``sft-callbacks push``): ``push_curated_dataset`` from the export folder to
   the server, then a second, unchanged push (no commit);
4. samples each worker's memory every 20 ms: RSS, and anonymous memory (RSS minus file-backed shared pages: the
   memory-mapped Arrow files count in RSS but are the page cache, not heap).

The server (``tests/hub_server.py``) runs in its own process, so its buffers are not counted. Reports time,
rows/s, and peak RSS / anonymous memory above the baseline per phase; comparing the two sizes shows whether
memory grows with the number of rows. Writes ``bench_results/publish.json``.

Push holds one parquet shard in flight, so its memory follows the shard size up to ``--max-shard-size``: compare
sizes whose exports are both at the cap (from about 1M rows at 64MB; at 250k rows the shards are smaller), or
lower the cap (``--sizes 250000 1000000 --max-shard-size 16MB``).

Usage::

    python scripts/bench_publish.py                          # 1M and 4M rows
    python scripts/bench_publish.py --sizes 100000 400000 --max-shard-size 32MB
    python scripts/bench_publish.py --sizes 1000000 8000000 --test-fraction 0.05   # with a random test split
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # benchmarks/ is not installed

TOKEN = "hf_test_user_token"  # the test server's default user token (tests/hub_server.py)
USER = "test-user"


# ------------------------------------------------------------------------------------------------ data
def make_dataset(rows: int, path: str, seed: int = 0) -> None:
    """An annotated SFT dataset of ``rows`` rows, written chunk by chunk with ``save_to_disk``."""
    import datasets
    import numpy as np

    datasets.disable_progress_bars()
    rng = np.random.default_rng(seed)
    words = np.array("the a model loss row data token answer question value domain sample train curate noise "
                     "label shard card hub push merge plot map weight group quota score seed split".split())
    domains = np.array(["math", "code", "logic", "food", "sarcasm", "science"])
    regions = np.array(["easy-to-learn", "ambiguous", "hard-to-learn"])
    parts = []
    for start in range(0, rows, 250_000):
        n = min(250_000, rows - start)
        w = words[rng.integers(0, len(words), size=(n, 10))]
        prompt = [f"Q{start + i}: " + " ".join(ws) + "?" for i, ws in enumerate(w.tolist())]
        completion = [" ".join(ws[:3]) for ws in w.tolist()]
        conf = rng.beta(4, 2, n)
        parts.append(datasets.Dataset.from_dict({
            "prompt": prompt, "completion": completion, "domain": domains[rng.integers(0, 6, n)].tolist(),
            "times_seen": rng.integers(1, 5, n), "loss_mean": rng.gamma(2.0, 0.5, n).astype("float32"),
            "loss_last": rng.gamma(2.0, 0.4, n).astype("float32"), "token_accuracy": rng.random(n).astype("float32"),
            "weight": rng.lognormal(0, 0.4, n), "confidence": conf, "variability": rng.random(n) * 0.3,
            "correctness": rng.random(n), "region": regions[rng.integers(0, 3, n)].tolist(),
            "flag_noisy": rng.random(n) < 0.05,
        }))  # fmt: skip
    datasets.concatenate_datasets(parts).save_to_disk(path)


# ------------------------------------------------------------------------------------------------ worker
class MemorySampler:
    """Peak RSS and anonymous memory (RSS - shared) of this process, sampled in a thread, per phase."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak_rss = self.peak_anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> tuple[int, int]:
        m = self.proc.memory_info()
        return m.rss, m.rss - getattr(m, "shared", 0)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, anon = self.now()
            self.peak_rss, self.peak_anon = max(self.peak_rss, rss), max(self.peak_anon, anon)
            time.sleep(self.interval)

    def reset(self) -> None:
        self.peak_rss, self.peak_anon = self.now()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _arrow_pool_max_mb() -> float:
    """Peak bytes Arrow's memory pool held (anonymous memory that is Arrow's own: batches, parquet buffers)."""
    import pyarrow as pa

    return round(pa.default_memory_pool().max_memory() / 2**20, 1)


def _measured(rows: int, baseline: tuple[int, int], mem: MemorySampler, phases: dict):
    def phase(name: str, fn):
        mem.reset()
        start_anon = mem.now()[1]
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
        phases[name] = {
            "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds),
            "peak_rss_above_baseline_mb": round((mem.peak_rss - baseline[0]) / 2**20, 1),
            "peak_anon_above_baseline_mb": round((mem.peak_anon - baseline[1]) / 2**20, 1),
            # what the phase itself added (e.g. export after curate: curate's report is already held)
            "peak_anon_growth_in_phase_mb": round((mem.peak_anon - start_anon) / 2**20, 1),
        }  # fmt: skip
        return result

    return phase


def export_worker(annotated: str, export: str, max_shard_size: str, test_fraction: str = "0") -> dict:
    """curate + save, in one process (what `sft-callbacks export` does)."""
    import datasets
    import pandas as pd

    from sft_callbacks.hub.publish import curate_annotated, save_curated_dataset

    datasets.disable_progress_bars()
    mem = MemorySampler()
    dataset = datasets.load_from_disk(annotated)  # memory-mapped
    rows = len(dataset)
    baseline = mem.now()
    mem.start()
    out: dict = {"rows": rows, "baseline_rss_mb": round(baseline[0] / 2**20, 1),
                 "baseline_anon_mb": round(baseline[1] / 2**20, 1), "phases": {}}  # fmt: skip
    phase = _measured(rows, baseline, mem, out["phases"])
    curated = phase("curate", lambda: curate_annotated(dataset, top_k=int(rows * 0.9), score="loss_mean"))
    # CuratedDataset.annotations has one row per input row; its Arrow-backed columns are the memory-mapped
    # file, the rest (kept flag, drop-reason codes) is heap
    report = curated.annotations
    heap = [c for c in report.columns if not isinstance(report[c].dtype, pd.ArrowDtype)]
    out["annotations_report_heap_mb"] = round(report[heap].memory_usage(deep=True, index=False).sum() / 2**20, 1)
    out["rows_out"] = curated.rows_out
    test = float(test_fraction)
    splits = {"train": 1 - test, "test": test} if test > 0 else None  # a random split, drawn chunk by chunk
    phase("export", lambda: save_curated_dataset(export, curated, max_shard_size=max_shard_size, splits=splits,
                                                 fetch_source_card=False, source="bench/synthetic-sft"))  # fmt: skip
    mem.stop()
    out["export_mb"] = round(sum(p.stat().st_size for p in Path(export).rglob("*") if p.is_file()) / 2**20, 1)
    out["arrow_pool_max_mb"] = _arrow_pool_max_mb()
    out["ru_maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def push_worker(export: str, repo_id: str, max_shard_size: str) -> dict:
    """push + unchanged re-push from the export folder, in a fresh process (what `sft-callbacks push` does)."""
    import datasets

    from sft_callbacks.hub.publish import load_export, push_curated_dataset

    datasets.disable_progress_bars()
    mem = MemorySampler()
    provenance, _ = load_export(export)
    rows = sum(provenance["splits"].values())
    baseline = mem.now()
    mem.start()
    out: dict = {"rows": rows, "baseline_rss_mb": round(baseline[0] / 2**20, 1),
                 "baseline_anon_mb": round(baseline[1] / 2**20, 1), "phases": {}}  # fmt: skip
    phase = _measured(rows, baseline, mem, out["phases"])
    first = phase("push", lambda: push_curated_dataset(repo_id, export, max_shard_size=max_shard_size))
    again = phase("push_again_unchanged", lambda: push_curated_dataset(repo_id, export, max_shard_size=max_shard_size))
    mem.stop()
    out["idempotent"] = first.commit == again.commit
    out["attempts"] = first.attempts
    out["arrow_pool_max_mb"] = _arrow_pool_max_mb()
    out["ru_maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


# ------------------------------------------------------------------------------------------------ orchestration
def per_row_growth(results: list[dict]) -> dict[str, float]:
    """Slope of each phase's added memory between the smallest and the largest size, in bytes per row.

    A phase that streams adds the same memory at any size (a slope near 0, within run-to-run noise of about
    10 MB over the size difference); one that holds something per row shows it here.
    """
    if len(results) < 2:
        return {}
    small, large = min(results, key=lambda r: r["rows"]), max(results, key=lambda r: r["rows"])
    extra = large["rows"] - small["rows"]
    if extra <= 0:
        return {}

    def added(r, worker, phase):
        return r[worker]["phases"][phase]["peak_anon_growth_in_phase_mb"] * 2**20

    return {phase: round((added(large, w, phase) - added(small, w, phase)) / extra, 2)
            for w, phase in (("export", "curate"), ("export", "export"), ("push", "push"))}  # fmt: skip



def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "hub_server.py"), str(root)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)  # fmt: skip
    line = proc.stdout.readline()  # "HF_ENDPOINT=http://127.0.0.1:PORT HF_TOKEN=... HF_HUB_DISABLE_XET=1"
    url = line.split()[0].split("=", 1)[1]
    return proc, url


def client_env(url: str, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("HF_", "HUGGINGFACE"))}
    env.update(HF_ENDPOINT=url, HF_HOME=str(home), HF_TOKEN=TOKEN, HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1",
               HF_UPDATE_DOWNLOAD_COUNTS="0", NO_PROXY="127.0.0.1", no_proxy="127.0.0.1",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))  # fmt: skip
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--max-shard-size", default="64MB", help="parquet shard size for export and push")
    parser.add_argument("--out", default=str(ROOT / "bench_results" / "publish.json"))
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--test-fraction", type=float, default=0.0,
                        help="export a random train/test split with this test share (default: train only)")
    parser.add_argument("--export-worker", nargs=4, metavar=("ANNOTATED", "EXPORT", "SHARD", "TEST"), help=argparse.SUPPRESS)
    parser.add_argument("--push-worker", nargs=3, metavar=("EXPORT", "REPO", "SHARD"), help=argparse.SUPPRESS)
    parser.add_argument("--make", nargs=2, metavar=("ROWS", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        make_dataset(int(args.make[0]), args.make[1])
        return
    if args.export_worker:
        print(json.dumps(export_worker(*args.export_worker)))
        return
    if args.push_worker:
        print(json.dumps(push_worker(*args.push_worker)))
        return

    from benchmarks.env import cpu_name, git_state

    tmp = tempfile.TemporaryDirectory(prefix="bench-publish-") if args.workdir is None else None
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    server, url = start_server(work / "hub")
    results = []
    try:
        for rows in args.sizes:
            annotated = work / f"annotated-{rows}"
            t0 = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--make", str(rows), str(annotated)], check=True)
            print(f"[{rows} rows] dataset built in {time.perf_counter() - t0:.1f}s", flush=True)
            export = work / f"export-{rows}"
            env = client_env(url, work / f"home-{rows}")
            res = {"rows": rows}
            for key, argv in (("export", ["--export-worker", str(annotated), str(export), args.max_shard_size, str(args.test_fraction)]),
                              ("push", ["--push-worker", str(export), f"{USER}/bench-{rows}", args.max_shard_size])):
                proc = subprocess.run([sys.executable, __file__, *argv], env=env, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(f"{key} worker failed:\n{proc.stderr[-4000:]}")
                res[key] = json.loads(proc.stdout.strip().splitlines()[-1])
            e, p = res["export"]["phases"], res["push"]["phases"]
            total = e["curate"]["seconds"] + e["export"]["seconds"] + p["push"]["seconds"]
            res["export_and_push_seconds"] = round(total, 2)
            res["export_and_push_rows_per_s"] = round(rows / total)
            results.append(res)
            print(json.dumps(res, indent=1), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
        if tmp is not None:
            tmp.cleanup()

    lines = ["| rows | curate s | export s | push s | unchanged re-push s | rows/s (curate+export+push) | "
             "curate: peak anon MB added | export: peak anon MB added | push: peak anon MB added "
             "| export: Arrow pool peak MB | push: Arrow pool peak MB |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        e, p = r["export"]["phases"], r["push"]["phases"]
        lines.append(f"| {r['rows']:,} | {e['curate']['seconds']:.1f} | {e['export']['seconds']:.1f} | "
                     f"{p['push']['seconds']:.1f} | {p['push_again_unchanged']['seconds']:.1f} | "
                     f"{r['export_and_push_rows_per_s']:,} | {e['curate']['peak_anon_growth_in_phase_mb']:.0f} | "
                     f"{e['export']['peak_anon_growth_in_phase_mb']:.0f} | "
                     f"{p['push']['peak_anon_growth_in_phase_mb']:.0f} | {r['export']['arrow_pool_max_mb']:.0f} | "
                     f"{r['push']['arrow_pool_max_mb']:.0f} |")  # fmt: skip
    growth = per_row_growth(results)
    if growth:
        lines.append("")
        lines.append(f"memory added per extra row, {results[0]['rows']:,} -> {results[-1]['rows']:,} rows: "
                     + ", ".join(f"{k} {v:+.1f} B/row" for k, v in growth.items()))  # fmt: skip
    print("\n".join(lines))
    report = {
        "benchmark": "export + push of an annotated dataset to a local Hub-compatible server (tests/hub_server.py)",
        "max_shard_size": args.max_shard_size, "test_fraction": args.test_fraction, "results": results, "table": lines,
        "growth_bytes_per_row": growth,
        "machine": {"cpu": cpu_name(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "git": git_state(),
    }  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
