"""Chunked radix selection (sft_callbacks.curation.selection) against a stable argsort, and curate() across chunks."""

from __future__ import annotations

import datasets
import numpy as np
import pandas as pd
import pytest

import sft_callbacks.curation.curated as curation
from sft_callbacks import curate
from sft_callbacks.curation.selection import best_rows_thresholds, order_keys


def reference_keep(scores, groups, candidates, caps, descending=False):
    """The best caps[g] candidates per group by a stable argsort (NaN / inf last, ties in input order)."""
    key = np.where(np.isfinite(scores), -scores if descending else scores, np.inf)
    keep = candidates.copy()
    for g, cap in enumerate(caps):
        if cap < 0:
            continue
        rows = np.flatnonzero(candidates & (groups == g))
        keep[rows[np.argsort(key[rows], kind="stable")][cap:]] = False
    return keep


def chunked_keep(scores, groups, candidates, caps, chunk, descending=False):
    spans = [(a, min(a + chunk, len(scores))) for a in range(0, len(scores), chunk)]
    passes = []

    def chunks():
        passes.append(1)
        for a, b in spans:
            yield groups[a:b], order_keys(scores[a:b], descending), candidates[a:b]

    thresholds = best_rows_thresholds(chunks, np.asarray(caps))
    out = np.concatenate([thresholds.keep(g, k, c) for g, k, c in chunks()])
    return out, len(passes) - 1


def test_order_keys_sort_like_the_floats_with_non_finite_last():
    x = np.array([3.5, -0.0, 0.0, -2.0, np.inf, -np.inf, np.nan, 1e-300, -1e300, 2.0])
    order = np.argsort(order_keys(x), kind="stable")
    finite = np.isfinite(x)
    assert x[order][: finite.sum()].tolist() == sorted(x[finite].tolist())
    assert not finite[order[finite.sum():]].any()
    assert order_keys(np.array([-0.0]))[0] == order_keys(np.array([0.0]))[0]  # tie, as in a sort
    desc = np.argsort(order_keys(x, descending=True), kind="stable")
    assert x[desc][: finite.sum()].tolist() == sorted(x[finite].tolist(), reverse=True)


@pytest.mark.parametrize("seed", range(12))
def test_matches_stable_argsort_on_random_data_with_ties_nan_and_many_chunks(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3000))
    kind = seed % 4
    if kind == 0:  # heavy ties: few distinct values
        scores = rng.integers(0, 5, n).astype(float)
    elif kind == 1:  # continuous, both signs, some NaN / inf
        scores = rng.normal(0, 10, n)
        scores[rng.random(n) < 0.1] = np.nan
        scores[rng.random(n) < 0.02] = -np.inf
    elif kind == 2:  # values equal in the top bytes, differing only in the last bits
        scores = 1.0 + rng.integers(0, 4, n) * np.finfo(float).eps
    else:  # all identical
        scores = np.full(n, 0.25)
    n_groups = int(rng.integers(1, 7))
    groups = rng.integers(0, n_groups, n).astype(np.int16)
    candidates = rng.random(n) < 0.8
    caps = rng.integers(-1, max(n // n_groups, 2) + 3, n_groups)
    caps[0] = 0 if seed % 3 == 0 else caps[0]
    descending = bool(seed % 2)
    want = reference_keep(scores, groups, candidates, caps, descending)
    for chunk in (1, 7, 256, 10_000):
        got, passes = chunked_keep(scores, groups, candidates, caps, chunk, descending)
        assert got.tolist() == want.tolist(), (chunk, seed)
        assert passes <= 8


def test_passes_stop_as_soon_as_every_cut_is_known():
    scores = np.arange(1000, dtype=float)
    ones = np.ones(1000, bool)
    _, passes = chunked_keep(scores, np.zeros(1000, np.int8), ones, [1000], 100)
    assert passes == 1  # cap >= rows: nothing to rank, settled by the first count
    spread = np.concatenate([np.full(500, -1.0), np.full(500, 1.0)])  # the sign alone splits them
    keep, passes = chunked_keep(spread, np.zeros(1000, np.int8), ones, [500], 100)
    assert passes == 1 and keep.tolist() == [True] * 500 + [False] * 500


def curate_reference(scores, groups, flags, quotas, top_k, ascending):
    keep = ~flags
    key = np.where(np.isfinite(scores), scores if ascending else -scores, np.inf)
    reason = np.where(flags, "flag_noisy", "")
    for g in np.unique(groups):
        rows = np.flatnonzero(keep & (groups == g))
        hit = rows[np.argsort(key[rows], kind="stable")][quotas:]
        keep[hit], reason[hit] = False, "quota"
    rows = np.flatnonzero(keep)
    hit = rows[np.argsort(key[rows], kind="stable")][top_k:]
    keep[hit], reason[hit] = False, "top_k"
    return keep, reason


@pytest.mark.parametrize("from_disk", [False, True])
def test_curate_over_many_chunks_equals_the_in_memory_reference(monkeypatch, tmp_path, from_disk):
    monkeypatch.setattr(curation, "_CHUNK_ROWS", 97)  # many chunks and passes on a small table
    rng = np.random.default_rng(0)
    n = 2000
    scores = rng.integers(0, 50, n).astype(float)
    scores[rng.random(n) < 0.05] = np.nan
    groups = rng.choice(["math", "code", "chat"], n)
    flags = rng.random(n) < 0.1
    ds = datasets.Dataset.from_dict({"text": [f"row {i}" for i in range(n)], "domain": groups,
                                     "flag_noisy": flags, "loss_mean": scores})  # fmt: skip
    if from_disk:
        ds.save_to_disk(str(tmp_path / "ds"))
        ds = datasets.load_from_disk(str(tmp_path / "ds"))
    out = curate(ds, group_column="domain", quotas=400, top_k=900, score="loss_mean")
    keep, reason = curate_reference(scores, groups, flags, 400, 900, ascending=False)
    assert out.annotations["kept"].tolist() == keep.tolist()
    assert out.annotations["drop_reason"].astype(str).tolist() == reason.tolist()
    assert out.dataset["source_row"][:] == np.flatnonzero(keep).tolist()
    assert out.dataset["text"][:] == [f"row {i}" for i in np.flatnonzero(keep)]
    assert out.dropped == {"flag_noisy": int(flags.sum()), "quota": int((reason == "quota").sum()),
                           "top_k": int((reason == "top_k").sum())}  # fmt: skip
    assert out.counts_by_group("domain") == {
        g: {"before": int((groups == g).sum()), "after": int((keep & (groups == g)).sum())} for g in ("chat", "code", "math")}


def test_curate_on_a_shuffled_dataset_and_seeded_quotas_without_a_score(monkeypatch):
    monkeypatch.setattr(curation, "_CHUNK_ROWS", 50)
    ds = datasets.Dataset.from_dict({"i": list(range(600)), "g": ["a", "b", "c"] * 200})
    shuffled = ds.shuffle(seed=1)
    out = curate(shuffled, drop=(), group_column="g", quotas={"a": 10, "b": 0}, seed=3)
    kept = pd.Series(out.dataset["g"][:]).value_counts().to_dict()
    assert kept == {"a": 10, "c": 200}
    assert out.dataset["i"][:] == [shuffled[int(r)]["i"] for r in out.dataset["source_row"][:]]
    again = curate(shuffled, drop=(), group_column="g", quotas={"a": 10, "b": 0}, seed=3)
    other = curate(shuffled, drop=(), group_column="g", quotas={"a": 10, "b": 0}, seed=4)
    assert again.dataset["i"][:] == out.dataset["i"][:] != other.dataset["i"][:]
