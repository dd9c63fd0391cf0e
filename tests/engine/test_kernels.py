"""The sampler's compiled kernels compute the very floats of the NumPy rules they replace, so the stream is the same
index for index with or without numba (skipped where numba is not installed: the oldest-versions job runs the NumPy
rules through every other sampler test)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from sft_callbacks import AdaptiveSampler
from sft_callbacks.engine import hashing, kernels, quotas, sampling

pytest.importorskip("numba")


@pytest.fixture()
def compiled(monkeypatch):
    monkeypatch.setenv("SFT_CALLBACKS_NUMBA", "1")
    k = kernels.get()
    assert k is not None
    return k


def _numpy_window(src, rows, scale, lag, seed, a, b, lo, hi):
    """_GroupStream._row_arrays then quotas.window_events, as the NumPy path runs them."""
    local = (src[rows[a:b]] if len(rows) else src[a:b]) if len(src) else None
    rate = np.ones(b - a) if local is None else local.astype(np.float64) * scale
    ell = lag[a:b].astype(np.float64)
    psi = quotas.thresholds(ell, hashing.counter_uniforms(seed, a, b))
    total = quotas.visits_per_row(rate, ell, psi)
    ranks, times = quotas.window_events(lo, hi, rate, ell, psi, total)
    return ranks + a, times


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_window_events_are_the_numpy_rule_bit_for_bit(compiled, index_dtype):
    rng = np.random.default_rng(0)
    n = 30_000
    src = (rng.gamma(1.0, size=2 * n) * 3).astype(np.float32)
    src[rng.random(2 * n) < 0.05] = 0.0  # rows never visited
    src[:5] = 400.0  # rows visited many times a pass
    rows = np.sort(rng.choice(2 * n, n, replace=False)).astype(index_dtype)
    lag = ((rng.random(n) - 0.5) * 1.6).astype(np.float32)  # owed visits and visits ahead
    scale = n / float(src[rows].astype(np.float64).sum())
    seed = (7 + 3) ^ 0x7A3D
    for src_, rows_ in ((src, rows), (src[:n], np.empty(0, np.int32)), (np.empty(0, np.float32), rows)):
        for lo, hi in ((-np.inf, 0.125), (0.125, 0.5), (0.875, 1.0), (-np.inf, 1.0)):
            for a, b in ((0, 7_000), (7_000, n)):
                want = _numpy_window(src_, rows_, scale, lag, seed, a, b, lo, hi)
                got = compiled.window_events(src_, rows_, scale, lag, hashing.counter_key(seed), a, b, lo, hi)
                np.testing.assert_array_equal(got[0], want[0])
                np.testing.assert_array_equal(got[1], want[1])  # the same floats, not merely close


def test_deadline_order_is_the_python_rule(compiled, monkeypatch):
    rng = np.random.default_rng(1)
    for trial in range(60):
        k = int(rng.integers(1, 10))
        shares = rng.random(k) * (rng.random(k) > 0.2) if trial % 3 else np.full(k, 1.0 / k)
        shares[0] += 1e-3
        shares /= shares.sum()
        start = (rng.random(k) - 0.5) * (trial % 2)
        a, b = start.copy(), start.copy()
        count = int(rng.integers(1, 3000))
        got = quotas.deadline_order(shares, a, count)
        monkeypatch.setenv("SFT_CALLBACKS_NUMBA", "0")
        want = quotas.deadline_order(shares, b, count)
        monkeypatch.setenv("SFT_CALLBACKS_NUMBA", "1")
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(a, b)  # each group's credit, bit for bit


def test_sums_are_numpys_bit_for_bit(compiled):
    rng = np.random.default_rng(2)
    for n in (1, 7, 8, 129, 4_097, 8_192, 8_193, 70_001, 300_000):
        values = (rng.gamma(0.5, size=n + 50) * rng.choice([1e-3, 1.0, 1e4])).astype(np.float32)
        rows = np.sort(rng.choice(n + 50, n, replace=False)).astype(np.int32)
        assert compiled.gathered_sum(values, rows) == values[rows].sum(dtype=np.float64)
        assert compiled.gathered_sum(values, np.empty(0, np.int32)) == values.sum(dtype=np.float64)
        assert compiled.pairwise_sum(values, rows) == np.add.reduce(values[rows].astype(np.float64))
        assert compiled.pairwise_sum(values, rows) == sampling._pairwise_sum(values, rows)


def test_the_small_kernels_are_their_numpy_expressions(compiled):
    rng = np.random.default_rng(3)
    rows = np.sort(rng.choice(1000, 400, replace=False)).astype(np.int32)
    w = rng.random(1000).astype(np.float32)
    assert not compiled.all_equal_positive(w, rows)
    assert compiled.all_equal_positive(np.full(1000, 2.0, np.float32), rows)
    assert not compiled.all_equal_positive(np.zeros(1000, np.float32), rows)
    assert compiled.proportional(w * 3, 1 / 3, w, 1.0, rows, 1e-6)
    assert not compiled.proportional(w * 3 + np.float32(0.01), 1 / 3, w, 1.0, rows, 1e-6)
    seen = np.zeros(1000, dtype=bool)
    seen[rows[:100]] = True
    np.testing.assert_array_equal(compiled.split_lag(compiled.visited_bits(rows[:100], 1000), rows,
                                                     np.float32(-0.25), np.float32(0.75)),
                                  np.where(seen[rows], np.float32(-0.25), np.float32(0.75)))
    times = rng.random(5000) - 0.2
    times[::7] = times[3]  # ties keep their order
    times[::11] = -0.0
    times[::13] = 0.0
    np.testing.assert_array_equal(compiled.stable_argsort(times), np.argsort(times, kind="stable"))
    ranks = np.arange(5000, dtype=np.int32)
    head, rest, rest_times = compiled.earliest_split(ranks, times, 0.1)
    early = times <= 0.1
    np.testing.assert_array_equal(head, ranks[early][np.argsort(times[early], kind="stable")])
    np.testing.assert_array_equal(rest, ranks[~early])
    np.testing.assert_array_equal(rest_times, times[~early])
    x = rng.gamma(0.5, size=10_000) * 3
    out, low, high, finite = compiled.float32_checked(x)
    np.testing.assert_array_equal(out, x.astype(np.float32))
    assert (low, high, finite) == (x.astype(np.float32).min(), x.astype(np.float32).max(), True)
    x[17] = np.nan
    assert not compiled.float32_checked(x)[3]


def _streams(monkeypatch, numba: str) -> np.ndarray:
    monkeypatch.setenv("SFT_CALLBACKS_NUMBA", numba)
    monkeypatch.setattr(sampling, "_WINDOW_EVENTS", 700)  # several planning windows per pass
    monkeypatch.setattr(sampling, "_PLAN_CHUNK", 1_500)
    out = []
    for groups in (None, 3):
        rng = np.random.default_rng(5)
        n = 5_001
        labels = None if groups is None else rng.choice(groups, size=n)
        s = AdaptiveSampler(n, seed=4, lazy_chunk=67, groups=labels)
        w = np.where(np.arange(n) < n // 5, 3.0, 1.0)
        w[2_000:2_100] = 0.0
        w[11] = 300.0
        s.schedule(w, 1_777)  # interrupts a flat pass: the split
        w2 = rng.gamma(1.0, size=n) + 0.1
        if labels is not None:
            w2[labels == 0] = w[labels == 0] * 2.5  # group 0's rows only rescaled: its pass goes on
        s.schedule(w2, 6_100)  # interrupts weighted passes mid-window
        if labels is not None:
            s.schedule_groups(np.array([1.0, 2.0, 0.5]), 9_000)
        head = np.fromiter(iter(s), dtype=np.int64)
        state = s.state_dict(from_position=n - 40)
        s.set_epoch(1)
        second = np.fromiter(iter(s), dtype=np.int64)
        resumed = AdaptiveSampler(n, seed=0, lazy_chunk=13, groups=labels)
        resumed.load_state_dict(state)
        resumed.set_epoch(1)
        np.testing.assert_array_equal(np.fromiter(iter(resumed), dtype=np.int64), second)
        s.set_epoch(2)
        out += [head, second, np.fromiter(iter(s), dtype=np.int64)]
    return np.concatenate(out)


def test_the_stream_is_the_same_with_and_without_the_kernels(monkeypatch):
    np.testing.assert_array_equal(_streams(monkeypatch, "1"), _streams(monkeypatch, "0"))


def test_bad_weights_get_the_same_errors_through_the_compiled_check(compiled):
    s = AdaptiveSampler(4, groups=["a", "a", "b", "b"])
    for weights, match in ((np.array([1.0, np.nan, 1.0, 1.0]), "NaN or inf"), (np.array([1.0, -1.0, 1.0, 1.0]),
                           "negative"), (np.zeros(4), "all weights are zero"), (np.array([1e300, 1, 1, 1]), "inf")):
        with pytest.raises(ValueError, match=match):
            s.schedule(weights, 0)


def test_two_threads_can_plan_at_once(compiled):
    src = np.ones(200_000, np.float32)
    lag = np.zeros(200_000, np.float32)
    want = compiled.window_events(src, np.empty(0, np.int32), 1.0, lag, np.uint64(5), 0, 200_000, -np.inf, 0.5)
    results, errors = [], []

    def plan():
        try:
            for _ in range(20):
                results.append(compiled.window_events(src, np.empty(0, np.int32), 1.0, lag, np.uint64(5), 0,
                                                      200_000, -np.inf, 0.5))
        except Exception as err:  # pragma: no cover - the failure is reported below
            errors.append(err)

    threads = [threading.Thread(target=plan) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 40
    assert all(np.array_equal(r[0], want[0]) and np.array_equal(r[1], want[1]) for r in results)
