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


def test_equal_weights_are_accelerates_seedable_permutations():
    from accelerate.data_loader import SeedableRandomSampler

    reference = SeedableRandomSampler(range(37), data_seed=11)
    ours = AdaptiveSampler(37, seed=11)
    ours.schedule(np.full(37, 0.5), at_position=0)  # equal, whatever their value
    for epoch in range(3):
        reference.set_epoch(epoch)
        ours.set_epoch(epoch)
        assert list(ours) == list(reference)


def test_group_shares_change_in_o_groups_and_counts_follow_them():
    groups = np.repeat(["a", "b", "c"], [10, 30, 60])
    s = AdaptiveSampler(100, num_samples=400, seed=0, groups=groups)
    s.schedule_groups(np.array([0.5, 0.25, 0.25]), at_position=0)
    s.schedule_groups(np.array([0.0, 0.5, 0.5]), at_position=200)
    d = s.draw(0, 400)
    first, second = d[:200], d[200:]
    assert np.bincount(first // 10 >= 1, minlength=2)[0] == 100  # group a (rows 0-9) takes exactly half
    assert (second >= 10).all()  # a share of 0 is never drawn
    counts = np.bincount(first[first < 10], minlength=10)
    assert counts.min() == counts.max() == 10  # a's rows are equal: permutation passes, each row 10 times
    with pytest.raises(ValueError, match="needs the sampler built with `groups`"):
        AdaptiveSampler(4).schedule_groups(np.array([1.0]), 0)
    t = AdaptiveSampler(4, groups=["a", "a", "b", "b"])
    t.schedule(np.array([1.0, 1.0, 0.0, 0.0]), at_position=0)
    with pytest.raises(ValueError, match=r"groups \[1\] are given a share but all their rows have weight 0"):
        t.schedule_groups(np.array([0.5, 0.5]), at_position=4)


@pytest.mark.parametrize("groups", [None, np.repeat([0, 1, 2], [5, 15, 30])])
def test_resume_mid_pass_after_changes_continues_the_stream(groups):
    def build():
        s = AdaptiveSampler(50, num_samples=120, seed=4, lazy_chunk=3, groups=groups)
        s.schedule(np.linspace(0.1, 1.0, 50), at_position=17)
        s.schedule(np.where(np.arange(50) % 3 == 0, 4.0, 1.0), at_position=140)
        return s

    s = build()
    it = iter(s)
    drawn = [next(it) for _ in range(95)]
    state = json.loads(json.dumps(s.state_dict(from_position=90)))  # the dataloader ran 5 positions ahead
    rest = list(it)
    s.set_epoch(1)
    second = list(s)
    r = AdaptiveSampler(50, num_samples=120, seed=0, lazy_chunk=3)
    r.load_state_dict(state)
    resumed = list(r)[90:]
    r.set_epoch(1)
    assert resumed == drawn[90:] + rest
    assert list(r) == second
    assert np.array_equal(build().draw(0, 240), np.array(drawn + rest + second))


def test_checkpoint_needs_the_positions_drawn_ahead():
    s = AdaptiveSampler(100, seed=0, history=8)
    it = iter(s)
    for _ in range(40):
        next(it)
    with pytest.raises(RuntimeError, match="ran 30 positions ahead"):
        s.state_dict(from_position=10)
    old = {"num_rows": 100, "num_samples": 100, "seed": 0, "versions": []}
    with pytest.raises(ValueError, match="drew with replacement"):
        AdaptiveSampler(100).load_state_dict(old)


def test_weights_change_mid_epoch_rows_waiting_come_first():
    # Flat until position 30 of 60, then all rows weigh the same again but on a new scale: nothing changes.
    s = AdaptiveSampler(60, seed=2)
    s.schedule(np.full(60, 7.0), at_position=30)
    plain = AdaptiveSampler(60, seed=2)
    assert np.array_equal(s.draw(0, 180), plain.draw(0, 180))
    # A real change mid-epoch: the 30 rows not yet drawn in the epoch are drawn before any row is drawn again.
    t = AdaptiveSampler(60, seed=2)
    t.schedule(np.where(np.arange(60) < 20, 2.0, 1.0), at_position=30)
    d = t.draw(0, 120)
    waiting = set(range(60)) - set(d[:30].tolist())
    heavy_wait = {r for r in waiting if r < 20}
    light_wait = waiting - heavy_wait
    first_repeat_light = next(k for k in range(30, 120) if d[k] >= 20 and d[k] in set(d[:k].tolist()))
    assert light_wait <= set(d[30:first_repeat_light].tolist())
    assert heavy_wait <= set(d[30:60].tolist())


def test_group_totals_are_numpys_pairwise_sums_bit_for_bit_when_summed_in_chunks(monkeypatch):
    import sft_callbacks.engine.sampling as sampling

    rng = np.random.default_rng(3)
    values = (rng.gamma(1.0, size=50_003) * 0.37).astype(np.float32)  # sums that are not exact in float64
    index = rng.permutation(50_003)
    expected = np.add.reduce(values[index].astype(np.float64))
    for chunk in (1 << 20, 4096, 1000, 9):
        monkeypatch.setattr(sampling, "_PLAN_CHUNK", chunk)
        assert sampling._pairwise_sum(values, index) == expected  # the same float, not merely close


def test_a_pass_planned_in_row_chunks_and_sorted_in_blocks_is_the_same_stream(monkeypatch):
    import sft_callbacks.engine.sampling as sampling

    def stream(chunk, block=1 << 16):
        monkeypatch.setattr(sampling, "_PLAN_CHUNK", chunk)
        monkeypatch.setattr(sampling, "_SORT_BLOCK", block)
        monkeypatch.setattr(sampling, "_WINDOW_EVENTS", 500)  # several windows per pass
        rng = np.random.default_rng(11)
        n = 4_001
        s = AdaptiveSampler(n, seed=2, lazy_chunk=61, groups=rng.choice(3, size=n))
        s.schedule(np.where(np.arange(n) < 800, 3.0, 1.0), 1_333)  # interrupts a flat pass mid-way
        s.schedule(rng.gamma(1.0, size=n) + 0.1, 5_000)  # interrupts a weighted pass mid-window
        return s.draw(0, 3 * n)

    whole = stream(1 << 20)
    np.testing.assert_array_equal(stream(97), whole)
    np.testing.assert_array_equal(stream(1 << 20, block=5), whole)  # each window put in order in small blocks
