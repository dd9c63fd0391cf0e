"""Time to first table of the dataset-preview Space on a 1M-row curated export.

Writes a curated export (``provenance.json`` + ``data/train-*.parquet``, 4 shards of 10k-row row groups, chat
``prompt`` / ``completion`` columns plus every annotation column) to a temporary folder, then measures, each
time on a cold source (nothing cached):

* ``core``: ``open_source(dir)`` + the first page of ``query`` in a fresh subprocess (its peak RSS is the
  preview's own memory, not the generator's);
* ``http``: the app's ``/open`` endpoint through ``gradio_client`` against the app running as a subprocess
  on 127.0.0.1 (what the page waits for: status, filter choices and the first page), each run through a
  different symlink to the same folder so the server's source cache never answers;
* for information: a filtered + sorted page, a text search over all rows, the data-map subsample.

Median of ``--runs`` runs; writes ``bench_results/space.json``.

    python scripts/bench_space.py --rows 1000000 --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = np.array(["math", "code", "chat", "writing", "reasoning"])
REGIONS = np.array(["easy-to-learn", "ambiguous", "hard-to-learn", ""])


def _messages(role: str, texts: list[str]) -> pa.ListArray:
    """``[[{"role": role, "content": text}], ...]`` built column-wise (no per-row Python dicts)."""
    n = len(texts)
    struct = pa.StructArray.from_arrays([pa.array([role] * n), pa.array(texts)], names=["role", "content"])
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), struct)


def write_export(d: Path, rows: int, shards: int = 4, seed: int = 0) -> Path:
    """A curated export with ``rows`` rows in ``shards`` parquet files (10k-row row groups, as publish writes)."""
    rng = np.random.default_rng(seed)
    (d / "data").mkdir(parents=True, exist_ok=True)
    per = -(-rows // shards)
    for k in range(shards):
        lo, hi = k * per, min(rows, (k + 1) * per)
        n = hi - lo
        ids = np.arange(lo, hi)
        dom = DOMAINS[ids % len(DOMAINS)]
        conf = rng.beta(2, 2, n)
        var = rng.uniform(0, 0.4, n)
        region = np.where(conf > 0.7, "easy-to-learn", np.where(conf < 0.3, "hard-to-learn", "ambiguous"))
        region[rng.random(n) < 0.02] = ""
        prompts = [f"Question {i} ({d}): explain step {i % 97} of the derivation in plain words." for i, d in zip(ids, dom)]
        answers = [f"Answer {i}: first note that {i % 13} + {i % 7} = {i % 13 + i % 7}, then conclude." for i in ids]
        table = pa.table({
            "prompt": _messages("user", prompts),
            "completion": _messages("assistant", answers),
            "domain": pa.array(dom).dictionary_encode(),
            "source_row": pa.array(ids),
            "times_seen": pa.array(rng.integers(1, 6, n)),
            "loss_mean": pa.array(rng.gamma(2.0, 0.6, n)),
            "loss_last": pa.array(rng.gamma(2.0, 0.5, n)),
            "token_accuracy": pa.array(rng.uniform(0.3, 1.0, n)),
            "weight": pa.array(rng.lognormal(0.0, 0.4, n)),
            "confidence": pa.array(conf),
            "variability": pa.array(var),
            "correctness": pa.array(rng.integers(0, 4, n) / 3),
            "forgetting_events": pa.array(rng.integers(0, 3, n)),
            "region": pa.array(region),
            "flag_noisy": pa.array(rng.random(n) < 0.03),
            "conflict": pa.array(rng.random(n) < 0.01),
            "difficulty": pa.array(rng.uniform(0, 1, n)),
        })  # fmt: skip
        pq.write_table(table, d / "data" / f"train-{k:05d}-of-{shards:05d}.parquet", row_group_size=10_000)
    prov = {"schema": "sft-callbacks/provenance/1", "counts": {"rows_in": rows, "rows_out": rows, "dropped": {}},
            "splits": {"train": rows}, "filters": {"group_column": "domain"}, "callbacks": []}  # fmt: skip
    (d / "provenance.json").write_text(json.dumps(prov))
    (d / "README.md").write_text("---\nlicense: mit\n---\n# Benchmark export\n")
    return d


def measure_core(export: str, runs: int) -> dict:
    """In this (fresh) process: cold open + first page, then the other queries; with peak RSS."""
    from sft_callbacks.app import open_source

    first, filtered, search, data_map = [], [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        src = open_source(export, cache=False)
        page = src.query("train")
        first.append(time.perf_counter() - t0)
        assert page.total > 0 and len(page.rows) == 50
        t0 = time.perf_counter()
        p = src.query("train", groups=["math"], regions=["hard-to-learn"], flags=["not flag_noisy"],
                      weight_min=0.5, weight_max=2.0, sort_by="loss_mean", descending=True, page=3)  # fmt: skip
        filtered.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        src.query("train", search="step 42 of")
        search.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        src.data_map("train")
        data_map.append(time.perf_counter() - t0)
    return {
        "rows": page.total,
        "first_table_s": statistics.median(first),
        "first_table_runs_s": first,
        "filtered_sorted_page_s": statistics.median(filtered),
        "filtered_rows": p.total,
        "text_search_s": statistics.median(search),
        "data_map_sample_s": statistics.median(data_map),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_http(export: Path, runs: int, tmp: Path) -> dict:
    """The app's ``/open`` (first table + filter choices) over HTTP, each run on a cold source."""
    from gradio_client import Client

    port = _free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_TEMP_DIR": str(tmp / "gradio"), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}  # fmt: skip
    code = "from sft_callbacks.app import launch; launch(None, port=%d)" % port
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"{url}/gradio_api/info", timeout=5)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("the app did not start") from None
                time.sleep(0.5)
        client = Client(url, verbose=False, download_files=False)
        times = []
        for i in range(runs):
            link = tmp / f"link{i}"  # a new name: the server has not opened (cached) it yet
            link.symlink_to(export, target_is_directory=True)
            t0 = time.perf_counter()
            out = client.predict(str(link), "", api_name="/open")
            times.append(time.perf_counter() - t0)
            assert "sft-error" not in out[0] and len(out[11]["data"]) == 50, out[0]
        with open(f"/proc/{proc.pid}/status") as f:
            rss = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM"))
        return {"open_first_table_s": statistics.median(times), "runs_s": times, "server_peak_rss_mb": rss}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench_results" / "space.json"))
    ap.add_argument("--no-http", action="store_true", help="skip the end-to-end /open measurement")
    ap.add_argument("--core-only", metavar="DIR", help=argparse.SUPPRESS)  # the measuring subprocess
    args = ap.parse_args(argv)
    if args.core_only:
        print(json.dumps(measure_core(args.core_only, args.runs)))
        return {}
    with tempfile.TemporaryDirectory(prefix="bench-space-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        export = write_export(tmp / "export", args.rows)
        write_s = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in export.rglob("*.parquet"))
        print(f"wrote {args.rows:,} rows ({size / 1e6:.0f} MB parquet) in {write_s:.1f}s", flush=True)
        out = subprocess.run([sys.executable, __file__, "--core-only", str(export), "--runs", str(args.runs)],
                             check=True, capture_output=True, text=True)  # fmt: skip
        core = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"core: first table {core['first_table_s']:.3f}s (median of {args.runs}), peak RSS {core['peak_rss_mb']:.0f} MB", flush=True)
        http = None if args.no_http else measure_http(export, args.runs, tmp)
        if http:
            print(f"http /open: {http['open_first_table_s']:.3f}s (median), server peak RSS {http['server_peak_rss_mb']:.0f} MB")
    result = {
        "benchmark": "space time to first table",
        "rows": args.rows,
        "parquet_mb": round(size / 1e6, 1),
        "runs": args.runs,
        "core": core,
        "http": http,
        "target_s": 2.0,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
