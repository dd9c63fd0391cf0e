"""Benchmark AdaptiveSampler at scale (default 100M rows): update costs, draw throughput, memory, quotas.

Rows carry one of ``--groups`` group labels (unequal sizes, interleaved) and weights: equal, except a few heavy rows
(one past 2**24, the last row), a block of zero-weight rows and a 2:1 tilt between the halves of every group. It
times, in the order a training run meets them:

(a) ``AdaptiveSampler(n, groups=labels)``: the partition (rows sorted by group) and loading the compiled kernels,
    once per run;
(b) the first 1M indices with equal weights (the plain Trainer's permutation: one ``torch.randperm(n)``);
(c) a row-level update ``schedule(w, at)`` (validation, float32 copy, group sums: O(rows)), median of 3;
(d) the next 1M indices: the stream splits into groups, each group starts a weighted pass (O(rows), once);
(e) a group-level update ``schedule_groups(shares, at)`` (O(groups)), median of 50;
(f) the next 1M indices after it (no pass restarts: rows keep their weights within their group);
(g) 100k indices through the lazy iterator with ``lazy_chunk=16`` (what the Trainer's dataloader does);

and checks that every row's visit count stays within one of its expected count (rows of equal weight share their
group's draws by permutation; heavy rows by credit), that zero-weight rows are never drawn, that rows past 2**24 are,
that each group takes its share within one, and that a second sampler with the same seed and schedule yields the
same stream. Reports peak RSS and the sampler's resident arrays per row, prints a markdown table and writes JSON.

Usage::

    python scripts/bench_sampler.py                        # 100M rows, ~6 GB peak
    python scripts/bench_sampler.py --rows 10000000        # quick
    SFT_CALLBACKS_NUMBA=0 python scripts/bench_sampler.py  # the NumPy rules, without the compiled kernels
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from itertools import islice
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's root: benchmarks/ is not installed
from benchmarks.env import cpu_name, git_state  # noqa: E402

TWO_24 = 2**24


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return int(r) if sys.platform == "darwin" else int(r) * 1024


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def build_rows(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict, tuple[int, int]]:
    """Group labels (int16, sizes falling geometrically, interleaved) and row weights (float64)."""
    rng = np.random.default_rng(seed)
    sizes = 0.7 ** np.arange(k)
    labels = rng.choice(k, size=n, p=sizes / sizes.sum()).astype(np.int16)
    w = np.ones(n, dtype=np.float64)
    w[::2] = 2.0  # a 2:1 tilt inside every group
    special = {"row_past_2**24": TWO_24 + 12_345 if n > TWO_24 + 100_000 else (2 * n) // 3, "last_row": n - 1}
    zero = (TWO_24 + 20_000, TWO_24 + 30_000) if n > TWO_24 + 100_000 else (n // 3, n // 3 + max(1, n // 1000))
    w[zero[0] : zero[1]] = 0.0
    for row in special.values():
        w[row] = 1000.0
    return labels, w, special, zero


def _take(it, count: int) -> np.ndarray:
    return np.fromiter(islice(it, count), dtype=np.int64, count=count)


def run(rows: int, groups: int, draws: int, iter_n: int, seed: int) -> dict:
    from sft_callbacks.engine.sampling import AdaptiveSampler

    rss_base = _maxrss_bytes()
    labels, w, special, zero = build_rows(rows, groups, seed)
    rss_inputs = _maxrss_bytes()

    def build():
        return AdaptiveSampler(rows, num_samples=rows, seed=seed, lazy_chunk=4096, groups=labels)

    sampler, t_init = _timed(build)
    it = iter(sampler)  # one epoch, consumed in order as the Trainer does
    flat, t_flat = _timed(lambda: _take(it, draws))
    row_times = []
    for _ in range(3):  # the last one stays; at the first position the iterator has not produced yet
        _, dt = _timed(lambda: sampler.schedule(w, at_position=sampler.produced))
        row_times.append(dt)
    change = sampler.produced
    weighted, t_weighted = _timed(lambda: _take(it, draws))
    credit_rows = float(np.abs(sampler.group_credit()).max())
    shares = np.full(groups, 1.0 / groups)
    group_times = []
    for _ in range(50):
        _, dt = _timed(lambda: sampler.schedule_groups(shares, at_position=sampler.produced))
        group_times.append(dt)
    after_groups, t_after_groups = _timed(lambda: _take(it, draws))
    credit_groups = float(np.abs(sampler.group_credit()).max())
    sampler.lazy_chunk = 16
    lazy, t_lazy = _timed(lambda: _take(it, iter_n))
    resident = sampler.resident_bytes()
    peak = _maxrss_bytes()

    # -- checks ---------------------------------------------------------------------------------------
    checks = []
    stream = np.concatenate([flat, weighted, after_groups, lazy])
    checks.append({"check": "first epoch's first 1M: no row twice (a permutation)", "ok": bool(len(np.unique(flat)) == draws),
                   "detail": f"{len(np.unique(flat)):,} distinct of {draws:,}"})
    # The iterator had handed out up to one lazy chunk before the change: judge only the positions after it.
    weighted = weighted[change - draws :]
    hits_zero = int(((weighted >= zero[0]) & (weighted < zero[1])).sum() + ((after_groups >= zero[0]) & (after_groups < zero[1])).sum())
    checks.append({"check": f"zero-weight rows [{zero[0]}, {zero[1]}) never drawn after the change", "ok": bool(hits_zero == 0),
                   "detail": f"{hits_zero} draws"})
    # Expected counts under the row-level weights (shares by total weight) over the 1M after the change.
    sums = np.bincount(labels, weights=w, minlength=groups)
    share_w = sums / sums.sum()
    p_row = w / sums[labels] * share_w[labels]
    counts = np.bincount(weighted, minlength=rows)
    for name, row in special.items():
        exp = len(weighted) * p_row[row]
        checks.append({"check": f"{name} (row {row}, weight 1000) within one of its quota, plus the credit it "
                                "carried from before the change (under one)", "ok": bool(abs(counts[row] - exp) < 2),
                       "detail": f"expected {exp:.2f}, drawn {int(counts[row])}"})
    tilt_dev = float(np.abs(counts[: 2 * (rows // 2)].reshape(-1, 2).sum(0) / len(weighted) - [2 / 3, 1 / 3]).max())
    checks.append({"check": "weight-2 rows get twice the draws of weight-1 rows", "ok": bool(tilt_dev < 0.01),
                   "detail": f"shares off by {tilt_dev:.4f}"})
    checks.append({"check": "each group within one of its credit after the row-level update", "ok": bool(credit_rows < 1),
                   "detail": f"max |credit - draws| = {credit_rows:.3f}"})
    got = np.bincount(labels[after_groups], minlength=groups)
    dev = float(np.abs(got - draws * shares).max())
    checks.append({"check": "each group within one of its credit after schedule_groups", "ok": bool(credit_groups < 1),
                   "detail": f"max |credit - draws| = {credit_groups:.3f}; draws vs shares alone off by {dev:.1f} "
                             "(the credit carried over)"})
    checks.append({"check": "rows past 2**24 drawn", "ok": bool((stream >= TWO_24).any()) if rows > TWO_24 else True,
                   "detail": f"{int((stream >= TWO_24).sum()):,} draws"})
    # The same seed and schedule give the same stream (what every process relies on).
    twin = build()
    twin.schedule(w, at_position=change)
    twin_stream = twin.draw(0, change + 4096)
    same = np.array_equal(twin_stream[:draws], flat) and np.array_equal(twin_stream[change:], weighted[:4096])
    checks.append({"check": "a second sampler (same seed, same schedule) yields the same stream", "ok": bool(same),
                   "detail": f"{draws + 4096:,} positions"})
    return {
        "rows": rows, "groups": groups, "seed": seed,
        "timings_s": {
            "init": t_init, "flat_1m": t_flat,
            "row_update_median": statistics.median(row_times), "row_update_all": row_times,
            "weighted_1m": t_weighted,
            "group_update_median": statistics.median(group_times), "group_update_max": max(group_times),
            "after_group_update_1m": t_after_groups,
            "lazy": t_lazy, "lazy_n": iter_n, "lazy_per_index_us": t_lazy / iter_n * 1e6, "draws": draws,
        },
        "memory": {
            "maxrss_baseline_bytes": rss_base, "maxrss_with_inputs_bytes": rss_inputs, "maxrss_peak_bytes": peak,
            "peak_delta_bytes_per_row": (peak - rss_inputs) / rows,
            "inputs_bytes_per_row": (labels.nbytes + w.nbytes) / rows,
            "sampler_resident_bytes_per_row": resident / rows,
        },
        "checks": checks,
        "all_ok": all(c["ok"] for c in checks),
    }


def markdown(res: dict, env: dict) -> str:
    t, m = res["timings_s"], res["memory"]
    gib = 1024**3
    d = t["draws"]
    lines = [
        f"Rows: {res['rows']:,} in {res['groups']} groups | CPU: {env['cpu']} ({env['cpu_count']} cores) | "
        f"numpy {env['numpy']}, torch {env['torch']} | compiled kernels: "
        f"{'yes' if env['compiled_kernels'] else 'no'}",
        "",
        "| measurement | value |",
        "|---|---|",
        f"| `AdaptiveSampler(n, groups=...)` (the partition, once) | {t['init']:.3f} s |",
        f"| first {d:,} indices, equal weights (one `torch.randperm(n)`) | {t['flat_1m']:.3f} s |",
        f"| row-level update `schedule(w, at)`, median of {len(t['row_update_all'])} | {t['row_update_median']:.3f} s |",
        f"| next {d:,} indices (split into groups, weighted passes start) | {t['weighted_1m']:.3f} s |",
        f"| group-level update `schedule_groups(shares, at)`, median of 50 (max) | "
        f"{t['group_update_median'] * 1e3:.3f} ms ({t['group_update_max'] * 1e3:.3f} ms) |",
        f"| next {d:,} indices after it | {t['after_group_update_1m']:.3f} s |",
        f"| `iter(sampler)`, {t['lazy_n']:,} indices, lazy_chunk=16 | {t['lazy']:.3f} s ({t['lazy_per_index_us']:.2f} us/index) |",
        f"| peak RSS | {m['maxrss_peak_bytes'] / gib:.2f} GiB (with the caller's labels and weights "
        f"{m['maxrss_with_inputs_bytes'] / gib:.2f} GiB) |",
        f"| peak RSS increase per row over the caller's inputs | {m['peak_delta_bytes_per_row']:.1f} B |",
        f"| sampler resident arrays per row | {m['sampler_resident_bytes_per_row']:.1f} B |",
        "",
        "| check | ok | detail |",
        "|---|---|---|",
    ]
    for c in res["checks"]:
        lines.append(f"| {c['check']} | {'yes' if c['ok'] else '**NO**'} | {c['detail']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000_000)
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--draws", type=int, default=1_000_000)
    ap.add_argument("--iter", dest="iter_n", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench_results/sampler.json")
    args = ap.parse_args(argv)
    if args.rows < 10 * args.draws // 10 or args.rows < 10_000:
        ap.error("--rows must be >= 10000 and >= --draws")

    import torch

    from sft_callbacks.engine import kernels

    env = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
           "numpy": np.__version__, "torch": torch.__version__, "git": git_state(),
           "compiled_kernels": kernels.enabled()}
    res = run(args.rows, args.groups, args.draws, args.iter_n, args.seed)
    res["env"] = env
    res["command"] = "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))
    print(markdown(res, env))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"\nwrote {out}")
    return 0 if res["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
