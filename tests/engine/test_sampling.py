"""AdaptiveSampler and combine_weights on arrays: determinism, scheduling, scale, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sft_callbacks import AdaptiveSampler, combine_weights
from sft_callbacks.engine.sampling import counter_uniforms
from sft_callbacks.engine.weights import check_weights, uid_to_rows


def test_same_seed_same_stream_and_different_seed_differs():
    a, b, c = AdaptiveSampler(1000, seed=3), AdaptiveSampler(1000, seed=3), AdaptiveSampler(1000, seed=4)
    assert list(a) == list(b)
    assert list(a) != list(c)
    a.set_epoch(1)
    assert list(a) != list(b)  # each epoch is a fresh part of the stream


def test_length_is_kept_and_draws_follow_weights():
    s = AdaptiveSampler(4, num_samples=20000, seed=0)
    s.schedule(np.array([1.0, 2.0, 0.0, 7.0]), at_position=0)
    draws = np.array(list(s))
    assert len(draws) == len(s) == 20000
    freq = np.bincount(draws, minlength=4) / len(draws)
    assert freq[2] == 0
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.0, 0.7], atol=0.015)


def test_scheduled_change_applies_exactly_at_its_position():
    s = AdaptiveSampler(10, num_samples=100, seed=0)
    s.schedule(np.eye(10)[7], at_position=40)
    draws = np.array(list(s))
    assert (draws[40:] == 7).all()
    assert len(set(draws[:40].tolist())) > 3
    # The stream does not depend on how it is consumed (lazy chunks vs one vectorised draw).
    assert np.array_equal(draws, s.draw(0, 100))


def test_schedule_refuses_positions_already_produced():
    s = AdaptiveSampler(10, num_samples=100, seed=0, lazy_chunk=8)
    it = iter(s)
    for _ in range(20):
        next(it)
    with pytest.raises(RuntimeError, match="already produced"):
        s.schedule(np.ones(10), at_position=5)


def test_later_schedule_replaces_queued_versions():
    s = AdaptiveSampler(10, num_samples=100, seed=0)
    s.schedule(np.eye(10)[1], at_position=50)
    s.schedule(np.eye(10)[2], at_position=30)
    d = s.draw(0, 100)
    assert (d[30:] == 2).all()


def test_state_dict_roundtrip_continues_stream():
    s = AdaptiveSampler(50, num_samples=200, seed=9)
    s.schedule(np.linspace(0, 1, 50), at_position=10)
    s.schedule(np.linspace(1, 0, 50), at_position=120)
    state = json.loads(json.dumps(s.state_dict(from_position=100)))  # must be JSON-serialisable
    r = AdaptiveSampler(50, num_samples=200, seed=0)
    r.load_state_dict(state)
    assert np.array_equal(r.draw(100, 200), s.draw(100, 200))
    with pytest.raises(ValueError, match="same training dataset"):
        AdaptiveSampler(49, seed=0).load_state_dict(state)


@pytest.mark.parametrize(
    "weights,match",
    [
        (np.array([1.0, np.nan]), "NaN"),
        (np.array([1.0, np.inf]), "NaN or inf"),
        (np.array([1.0, -1.0]), "negative"),
        (np.zeros(2), "all weights are zero"),
        (np.ones(3), "3 entries"),
    ],
)
def test_bad_weights_are_refused(weights, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveSampler(2).schedule(weights, 0)


def test_beyond_2_pow_24_rows():
    n = (1 << 24) + 1000
    w = np.full(n, 1e-3, dtype=np.float64)
    w[n - 1] = 5e4  # the last row, past 2^24, holds most of the mass
    s = AdaptiveSampler(n, num_samples=1000, seed=0)
    s.schedule(w, 0)
    d = s.draw(0, 20000)
    p_last = 5e4 / w.sum()
    assert abs((d == n - 1).mean() - p_last) < 0.02
    assert (d > (1 << 24)).mean() > 0.7
    assert d.max() < n


def test_counter_uniforms_are_uniform():
    u = counter_uniforms(1, 0, 200_000)
    hist = np.histogram(u, bins=20, range=(0, 1))[0] / len(u)
    np.testing.assert_allclose(hist, 0.05, atol=0.003)


def test_combine_rule_product_exclusion_and_cap():
    a = np.array([1.0, 1.0, 1.0, 0.0])
    b = np.array([1.0, 1e-9, 4.0, 5.0])
    w = combine_weights([("curriculum", a), ("hard", b)], 4, max_ratio=100.0)
    assert w[3] == 0  # a zero in any policy excludes the row
    assert np.isclose(w.sum(), 1.0)
    pos = w[w > 0]
    assert pos.max() / pos.min() == pytest.approx(100.0)
    np.testing.assert_allclose(w[2] / w[0], 4.0)


def test_combine_errors_name_the_policy():
    with pytest.raises(ValueError, match="hard returned 1 non-finite"):
        combine_weights([("hard", np.array([1.0, np.nan]))], 2)
    with pytest.raises(ValueError, match="exclude every row"):
        combine_weights([("a", np.array([1.0, 0.0])), ("b", np.array([0.0, 1.0]))], 2)
    with pytest.raises(ValueError, match="all-zero"):
        check_weights(np.zeros(3), 3, "p")


def test_uid_to_rows_means_over_packed_samples():
    w = uid_to_rows(np.array([1.0, 3.0, 5.0]), np.array([0, 1, 2]), np.array([0, 0, 1]), 2)
    np.testing.assert_allclose(w, [2.0, 5.0])
