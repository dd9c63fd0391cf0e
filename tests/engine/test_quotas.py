"""The pure rules behind the sampler, on arrays: visits per pass, their order, carried credit, groups' turns."""

from __future__ import annotations

import numpy as np
import pytest

from sft_callbacks.engine import hashing, kernels, quotas, sampling


@pytest.mark.parametrize("module", [quotas, sampling, hashing, kernels])
def test_module_examples_hold(module):
    import doctest

    failures, tried = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried >= 4 and failures == 0


def test_equal_weights_visit_every_row_once_in_permutation_order():
    n = 50
    psi = quotas.phases(n)
    total = quotas.visits_per_row(np.ones(n), np.zeros(n), psi)
    ranks, _ = quotas.plan_window(-np.inf, 1.0, np.ones(n), np.zeros(n), psi, total)
    assert total.tolist() == [1] * n
    assert ranks.tolist() == list(range(n))


def test_visits_follow_credit_and_zero_rate_rows_are_never_visited():
    rate = np.array([2.5, 0.5, 0.0, 1.0])
    lag = np.zeros(4)
    psi = np.array([0.2, 0.7, 0.1, 0.4])
    total = quotas.visits_per_row(rate, lag, psi)
    assert total.tolist() == [3, 0, 0, 1]  # thresholds 0.2, 1.2, 2.2 < 2.5; 0.7 > 0.5; rate 0 never
    lag_end = lag + rate - total
    # Over many passes a row's visits stay within one of the credit it earned.
    visits, credit = np.zeros(4), np.zeros(4)
    rng = np.random.default_rng(0)
    for _ in range(200):
        psi = rng.permutation(quotas.phases(4))
        n = quotas.visits_per_row(rate, lag_end, psi)
        lag_end = lag_end + rate - n
        visits += n
        credit += rate
        assert np.all(np.abs(visits - credit) < 1 + 1e-9)
    assert visits[2] == 0


def test_windows_split_a_pass_without_changing_it():
    rng = np.random.default_rng(1)
    n = 300
    rate = rng.gamma(0.7, size=n)
    rate *= n / rate.sum()
    lag = rng.uniform(-0.5, 0.5, size=n)
    psi = quotas.phases(n)
    total = quotas.visits_per_row(rate, lag, psi)
    whole, times = quotas.plan_window(-np.inf, 1.0, rate, lag, psi, total)
    parts = [quotas.plan_window(lo, hi, rate, lag, psi, total)[0]
             for lo, hi in [(-np.inf, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]]
    assert np.array_equal(np.concatenate(parts), whole)
    assert np.all(np.diff(times) >= 0)
    assert np.array_equal(np.bincount(whole, minlength=n), total)


def test_a_window_put_in_order_block_by_block_is_its_stable_sort():
    rng = np.random.default_rng(2)
    times = rng.integers(0, 40, size=500) / 8.0  # many ties: the blocks must keep the row order among equals
    ranks = np.arange(500)
    whole = ranks[np.argsort(times, kind="stable")]
    for blocks in ([1, 3, 1000], [0, 17, 17, 17, 1000], [499, 1], [500]):
        rest, t, parts = ranks, times, []
        for k in blocks:
            head, rest, t = quotas.earliest(rest, t, k)
            assert len(head) >= min(k, len(head) + len(rest))
            parts.append(head)
        assert len(rest) == 0
        assert np.array_equal(np.concatenate(parts), whole)


def test_a_row_is_not_visited_again_while_a_peer_waits():
    # Two weight classes; within each the order of first visits comes before any second visit.
    n = 40
    rate = np.r_[np.full(10, 2.5), np.full(30, 0.5)]
    psi = quotas.phases(n)
    total = quotas.visits_per_row(rate, np.zeros(n), psi)
    ranks, _ = quotas.plan_window(-np.inf, 1.0, rate, np.zeros(n), psi, total)
    seen = np.zeros(n, dtype=int)
    for r in ranks:
        peers = rate == rate[r]
        assert seen[r] <= seen[peers & (total > seen)].min()
        seen[r] += 1


def test_carried_lag_keeps_visited_rows_behind_waiting_ones():
    lag = quotas.carried_lag(np.ones(4), np.zeros(4), np.array([1, 1, 0, 0]), 0.5)
    assert lag.tolist() == [-0.5, -0.5, 0.5, 0.5]
    # The next pass visits the waiting rows first, whatever their permutation rank.
    psi = np.array([0.1, 0.2, 0.8, 0.9])
    total = quotas.visits_per_row(np.ones(4), lag.astype(float), psi)
    ranks, _ = quotas.plan_window(-np.inf, 1.0, np.ones(4), lag.astype(float), psi, total)
    assert ranks.tolist()[:2] == [2, 3]


@pytest.mark.parametrize("shares", [[0.75, 0.25], [0.5, 0.3, 0.2], [0.01, 0.09, 0.9], [0.0, 0.6, 0.4],
                                    list(np.random.default_rng(0).dirichlet(np.full(8, 0.5)))])
def test_deadline_order_keeps_each_group_within_one_of_its_share(shares):
    shares = np.asarray(shares)
    deficit = np.zeros(len(shares))
    seq = quotas.deadline_order(shares, deficit, 1000)
    counts = np.cumsum(np.eye(len(shares))[seq], axis=0)
    expected = np.arange(1, 1001)[:, None] * shares[None, :]
    assert np.abs(counts - expected).max() < 1
    np.testing.assert_allclose(deficit, expected[-1] - counts[-1], atol=1e-9)
    assert (counts[:, shares == 0] == 0).all()
    # Cut into calls of any size, the order is the same.
    deficit2 = np.zeros(len(shares))
    pieces = [quotas.deadline_order(shares, deficit2, k) for k in (1, 7, 300, 692)]
    assert np.array_equal(np.concatenate(pieces), seq)


def test_deadline_order_pays_back_what_a_group_is_owed():
    deficit = np.array([2.0, -2.0])  # group 0 is owed two positions, group 1 took two ahead
    seq = quotas.deadline_order(np.array([0.5, 0.5]), deficit, 6)
    assert seq.tolist()[:3] == [0, 0, 0]


def test_permutation_is_torch_randperm_from_the_seed():
    import torch

    g = torch.Generator()
    g.manual_seed(42 + 3)
    assert quotas.pass_permutation(30, 45).tolist() == torch.randperm(30, generator=g).tolist()
    assert quotas.pass_permutation(30, 45).dtype == np.int32
