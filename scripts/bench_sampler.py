"""Benchmark AdaptiveSampler at scale (default 50M rows): update cost, draw throughput, memory, correctness.

Measures

(a) ``AdaptiveSampler(...).schedule(w, 0)``: the O(n) weight update (validation + float32 copy + float64 cumsum);
(b) ``draw(0, 1_000_000)``: one million indices (counter-based uniforms + ``searchsorted``);
(c) ``iter(sampler)`` for 100k indices with ``lazy_chunk=16``: the lazy path the Trainer's DataLoader uses;

and checks, at that scale, that rows past 2**24 (where ``torch.multinomial`` stops) are drawn, that zero-weight
rows never are, that the lazy iterator yields exactly ``draw``'s stream, and that the empirical frequency of a
few weighted rows matches their probability within sampling error. Reports peak RSS (``getrusage``) and bytes
per row, prints a markdown table and writes JSON.

Usage::

    python scripts/bench_sampler.py                      # 50M rows
    python scripts/bench_sampler.py --rows 100000000     # ~3.5 GB peak
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from itertools import islice
from pathlib import Path

import numpy as np

from bench_env import cpu_name, git_state

TWO_24 = 2**24


def _maxrss_bytes() -> int:
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


def _current_rss_bytes() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def build_weights(n: int) -> tuple[np.ndarray, dict[str, int], tuple[int, int]]:
    """Uniform weights with a few heavy rows (one past 2**24, the last row) and a zero-weight block."""
    w = np.ones(n, dtype=np.float64)
    past = n > TWO_24 + 100_000
    special = {
        "row_past_2**24": TWO_24 + 12_345 if past else (2 * n) // 3,
        "last_row": n - 1,
        "first_row": 0,
        "middle_row": n // 2 + 1,
    }
    target_p = {"row_past_2**24": 0.10, "last_row": 0.05, "first_row": 0.01, "middle_row": 0.001}
    zero = (TWO_24 + 20_000, TWO_24 + 30_000) if past else (n // 3, n // 3 + max(1, n // 1000))
    w[zero[0] : zero[1]] = 0.0
    rest = float(w.sum()) - len(special)  # mass of the uniform rows
    heavy_total = sum(target_p.values())
    for name, row in special.items():
        w[row] = target_p[name] * rest / (1.0 - heavy_total)
    return w, special, zero


def run(rows: int, draws: int, iter_n: int, lazy_chunk: int, seed: int, repeats: int, try_multinomial: bool) -> dict:
    from sft_callbacks.engine.sampling import AdaptiveSampler

    import torch  # noqa: F401  (imported by the sampler anyway; counted in the baseline)

    rss_baseline = _maxrss_bytes()
    cur_baseline = _current_rss_bytes()

    w, special, zero = build_weights(rows)
    total = float(w.sum())
    probs = {name: float(w[row] / total) for name, row in special.items()}

    sampler, t_init = _timed(lambda: AdaptiveSampler(rows, seed=seed, lazy_chunk=lazy_chunk))
    schedule_times = []
    for _ in range(repeats):
        _, dt = _timed(lambda: sampler.schedule(w, 0))
        schedule_times.append(dt)
    rss_after_schedule = _maxrss_bytes()
    sampler_bytes = sum(v.weights.nbytes + v.cumsum.nbytes for v in sampler._versions)

    idx, t_draw = _timed(lambda: sampler.draw(0, draws))
    again = sampler.draw(draws // 2, draws // 2 + 4096)
    deterministic = bool(np.array_equal(again, idx[draws // 2 : draws // 2 + 4096]))

    it, t_iter = _timed(lambda: np.fromiter(islice(iter(sampler), iter_n), dtype=np.int64, count=iter_n))
    iter_matches_draw = bool(np.array_equal(it, idx[:iter_n])) if iter_n <= draws else None

    # -- correctness -----------------------------------------------------------------------------------
    checks = []
    in_range = bool(idx.min() >= 0 and idx.max() < rows)
    checks.append({"check": "all indices in [0, rows)", "ok": in_range, "detail": f"min {idx.min()}, max {idx.max()}"})
    hits_zero = int(((idx >= zero[0]) & (idx < zero[1])).sum())
    checks.append({"check": f"zero-weight rows [{zero[0]}, {zero[1]}) never drawn", "ok": hits_zero == 0,
                   "detail": f"{hits_zero} draws"})
    for name, row in special.items():
        p = probs[name]
        count = int((idx == row).sum())
        f = count / draws
        sigma = math.sqrt(p * (1 - p) / draws)
        z = (f - p) / sigma
        checks.append({"check": f"freq of {name} (row {row})", "ok": abs(z) < 5.0,
                       "detail": f"p={p:.6f} observed={f:.6f} z={z:+.2f}", "row": row, "p": p, "observed": f, "z": z})
    # Uniform (weight-1) rows beyond 2**24: their share of the draws matches their share of the mass.
    if rows > TWO_24 + 100_000:
        mask_w = (w == 1.0)
        mask_w[:TWO_24] = False
        p_far = float(mask_w.sum()) / total
        del mask_w
        far = idx >= TWO_24
        for row in special.values():
            far &= idx != row
        f_far = float(far.sum()) / draws
        sig = math.sqrt(p_far * (1 - p_far) / draws)
        z = (f_far - p_far) / sig
        checks.append({"check": "share of uniform rows >= 2**24", "ok": abs(z) < 5.0,
                       "detail": f"p={p_far:.6f} observed={f_far:.6f} z={z:+.2f} "
                                 f"({int(far.sum())} draws, {len(np.unique(idx[far]))} distinct rows)"})
        checks.append({"check": "row past 2**24 drawn", "ok": bool((idx == special['row_past_2**24']).any()),
                       "detail": f"row {special['row_past_2**24']}"})
    checks.append({"check": "last row drawn", "ok": bool((idx == rows - 1).any()), "detail": f"row {rows - 1}"})
    checks.append({"check": "draw() is pure (re-draw of a sub-range identical)", "ok": deterministic, "detail": "4096 positions"})
    if iter_matches_draw is not None:
        checks.append({"check": f"iter(sampler) (lazy_chunk={lazy_chunk}) == draw(0, {iter_n})", "ok": iter_matches_draw,
                       "detail": f"{iter_n} positions"})

    multinomial = None
    if try_multinomial:
        import torch

        try:
            torch.multinomial(torch.from_numpy(w[:rows].astype(np.float32)), 1, replacement=True)
            multinomial = "ok"
        except RuntimeError as e:  # expected past 2**24 categories
            multinomial = f"RuntimeError: {str(e).splitlines()[0]}"

    peak = _maxrss_bytes()
    return {
        "rows": rows,
        "seed": seed,
        "lazy_chunk": lazy_chunk,
        "timings_s": {
            "init": t_init,
            "schedule_median": statistics.median(schedule_times),
            "schedule_all": schedule_times,
            "draw": t_draw,
            "draw_n": draws,
            "draw_per_index_ns": t_draw / draws * 1e9,
            "iter": t_iter,
            "iter_n": iter_n,
            "iter_per_index_us": t_iter / iter_n * 1e6,
        },
        "memory": {
            "maxrss_baseline_bytes": rss_baseline,
            "rss_baseline_bytes": cur_baseline,
            "maxrss_after_schedule_bytes": rss_after_schedule,
            "maxrss_peak_bytes": peak,
            "peak_delta_bytes_per_row": (rss_after_schedule - rss_baseline) / rows,
            "input_weights_bytes_per_row": w.nbytes / rows,
            "sampler_resident_bytes_per_row": sampler_bytes / rows,
        },
        "torch_multinomial": multinomial,
        "checks": checks,
        "all_ok": all(c["ok"] for c in checks),
    }


def markdown(res: dict, env: dict) -> str:
    t, m = res["timings_s"], res["memory"]
    gib = 1024**3
    lines = [
        f"Rows: {res['rows']:,} | CPU: {env['cpu']} ({env['cpu_count']} cores) | numpy {env['numpy']}, torch {env['torch']}",
        "",
        "| measurement | value |",
        "|---|---|",
        f"| `AdaptiveSampler(n)` construction (uniform weights; first touch of fresh memory) | {t['init']:.3f} s |",
        f"| `schedule(w, 0)` (validate + cumsum), median of {len(t['schedule_all'])} | {t['schedule_median']:.3f} s "
        f"({t['schedule_median'] / res['rows'] * 1e9:.1f} ns/row; first call {t['schedule_all'][0]:.3f} s) |",
        f"| `draw(0, {t['draw_n']:,})` | {t['draw']:.3f} s ({t['draw_per_index_ns']:.0f} ns/index) |",
        f"| `iter(sampler)`, {t['iter_n']:,} indices, lazy_chunk={res['lazy_chunk']} | {t['iter']:.3f} s "
        f"({t['iter_per_index_us']:.2f} us/index) |",
        f"| peak RSS (getrusage) | {m['maxrss_peak_bytes'] / gib:.2f} GiB (baseline after imports "
        f"{m['maxrss_baseline_bytes'] / gib:.2f} GiB) |",
        f"| peak RSS increase per row (incl. the caller's float64 weight vector) | {m['peak_delta_bytes_per_row']:.1f} B |",
        f"| sampler resident arrays per row (float32 weights + float64 cumsum) | {m['sampler_resident_bytes_per_row']:.1f} B |",
    ]
    if res["torch_multinomial"] is not None:
        lines.append(f"| `torch.multinomial` on the same weights | {res['torch_multinomial']} |")
    lines += ["", "| correctness check | ok | detail |", "|---|---|---|"]
    for c in res["checks"]:
        lines.append(f"| {c['check']} | {'yes' if c['ok'] else '**NO**'} | {c['detail']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=50_000_000)
    ap.add_argument("--draws", type=int, default=1_000_000)
    ap.add_argument("--iter", dest="iter_n", type=int, default=100_000)
    ap.add_argument("--lazy-chunk", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="timed schedule() calls")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-multinomial", action="store_true", help="skip the torch.multinomial comparison")
    ap.add_argument("--out", default="bench_results/sampler.json")
    args = ap.parse_args(argv)
    if args.rows < 10_000:
        ap.error("--rows must be >= 10000")

    import torch

    env = {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "git": git_state(),
    }
    res = run(args.rows, args.draws, args.iter_n, args.lazy_chunk, args.seed, args.repeats, not args.no_multinomial)
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
