"""Benchmark ``sft_callbacks.curation.conflicts.find_conflicts`` on synthetic data with planted conflicts.

Prompts are templated sentences filled with random words. Planted (per ``--plant`` fraction of rows
each): exact-duplicate conflicts (case/punctuation/whitespace variant, different answer),
near-duplicate conflicts (one word replaced, different answer) and harmless duplicates (same
answer, must not be flagged). Reports time, rows/s and precision/recall of planted conflict rows.

    python scripts/bench_conflicts.py --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import datasets
import numpy as np

from sft_callbacks.curation.conflicts import find_conflicts

datasets.disable_progress_bars()

TEMPLATES = [
    "Write a short story about {} and {} in which the {} meets a {} near the {} while {} and {} watch the {}.",
    "Explain why the {} is more {} than the {} when {} considers {} and the {} of {} under {}.",
    "Given the {} {} and {}, describe how a {} could {} the {} without {} the {}.",
    "Translate this sentence: the {} {} quickly over the {} {} because {} wanted {} and {} {}.",
    "Summarize the debate between {} and {} about {} {}, covering {}, {}, {} and the {}.",
    "List three ways a {} can improve {} {} when the {} is {} and the {} feels {} about {}.",
]


def make_vocab(rng: np.random.Generator, size: int) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lens = rng.integers(4, 10, size=size)
    return ["".join(rng.choice(letters, size=l)) for l in lens]


def generate(rows: int, plant: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    vocab = make_vocab(rng, 20000)
    n_plant = int(rows * plant)  # pairs of each kind
    n_base = rows - 2 * 3 * n_plant + 3 * n_plant  # each planted pair adds one row to a base row
    tmpl_idx = rng.integers(0, len(TEMPLATES), size=n_base)
    words = rng.integers(0, len(vocab), size=(n_base, 8))
    prompts, answers = [], []
    for t, w in zip(tmpl_idx.tolist(), words.tolist()):
        prompts.append(TEMPLATES[t].format(*(vocab[i] for i in w)))
    answers = [f"answer {i}" for i in range(n_base)]
    truth = np.zeros(n_base, dtype=bool)
    picks = rng.choice(n_base, size=3 * n_plant, replace=False)
    exact, near, same = picks[:n_plant], picks[n_plant : 2 * n_plant], picks[2 * n_plant :]
    extra_p, extra_a, extra_t = [], [], []
    for i in exact.tolist():
        extra_p.append("  " + prompts[i].upper().rstrip(".") + "?! ")
        extra_a.append(f"other answer {i}")
        extra_t.append(True)
        truth[i] = True
    for i in near.tolist():
        toks = prompts[i].split(" ")
        j = int(rng.integers(0, len(toks)))
        toks[j] = vocab[int(rng.integers(0, len(vocab)))]
        extra_p.append(" ".join(toks))
        extra_a.append(f"other answer {i}")
        extra_t.append(True)
        truth[i] = True
    for i in same.tolist():
        extra_p.append(prompts[i].lower())
        extra_a.append(answers[i].upper())  # same answer after normalisation
        extra_t.append(False)
    prompts += extra_p
    answers += extra_a
    truth = np.concatenate([truth, np.array(extra_t, dtype=bool)])
    perm = rng.permutation(len(prompts))
    prompts = [prompts[i] for i in perm.tolist()]
    answers = [answers[i] for i in perm.tolist()]
    return prompts, answers, truth[perm]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--plant", type=float, default=0.01, help="fraction of rows per planted kind")
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--num-perm", type=int, default=64)
    ap.add_argument("--bands", type=int, default=None)
    ap.add_argument("--ngram", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=10_000)
    ap.add_argument("--max-df", type=float, default=None, help="ignore shingles in more than this fraction of prompts")
    ap.add_argument("--no-near", action="store_true")
    ap.add_argument("--out", default="bench_results/conflicts.json", help="where to write the JSON report")
    args = ap.parse_args()
    from benchmarks.env import cpu_name, git_state

    commit = git_state()  # the code measured, taken before the run

    t0 = time.perf_counter()
    prompts, answers, truth = generate(args.rows, args.plant)
    ds = datasets.Dataset.from_dict({"prompt": prompts, "completion": answers})
    del prompts, answers
    t_gen = time.perf_counter() - t0
    print(f"generated {len(ds):,} rows ({truth.sum():,} planted conflict rows) in {t_gen:.1f}s; "
          f"mean prompt {np.mean([len(p) for p in ds[:2000]['prompt']]):.0f} chars")

    t0 = time.perf_counter()
    out, res = find_conflicts(
        ds,
        near_duplicates=not args.no_near,
        threshold=args.threshold,
        num_perm=args.num_perm,
        bands=args.bands,
        ngram=args.ngram,
        batch_size=args.batch_size,
        max_df=args.max_df,
        return_result=True,
    )
    dt = time.perf_counter() - t0
    assert len(out) == len(ds)
    flagged = res.conflict
    tp = int((flagged & truth).sum())
    precision = tp / max(int(flagged.sum()), 1)
    recall = tp / max(int(truth.sum()), 1)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"find_conflicts: {dt:.1f}s, {len(ds) / dt:,.0f} rows/s; duplicate groups {res.num_duplicate_groups:,}, "
          f"conflict groups {res.num_conflict_groups:,}, conflict rows {int(flagged.sum()):,}, "
          f"near pairs {res.num_near_pairs:,}")
    print(f"precision {precision:.4f}  recall {recall:.4f}  (tp {tp:,}); peak RSS {rss:,.0f} MiB")
    report = {
        "benchmark": "conflicts",
        "command": "python scripts/bench_conflicts.py " + " ".join(sys.argv[1:]),
        "commit": commit,
        "hardware": {"cpu": cpu_name(), "cores": os.cpu_count()},
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "rows": len(ds),
        "planted_conflict_rows": int(truth.sum()),
        "seconds": dt,
        "rows_per_second": len(ds) / dt,
        "precision": precision,
        "recall": recall,
        "flagged": int(flagged.sum()),
        "flagged_exact": int((res.conflict_kind == "exact").sum()),
        "flagged_near": int((res.conflict_kind == "near").sum()),
        "peak_rss_mib": rss,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
