"""The repetition budget (UniMax) and the withdrawal of stalled groups, on arrays."""

from __future__ import annotations

import numpy as np
import pytest

from sft_callbacks.policies.repetition import capped_shares, stalled_groups, withdrawn_shares


def _passes(shares, sizes, drawn, remaining):
    return (np.asarray(drawn) + np.asarray(shares) * remaining) / np.asarray(sizes)


def test_a_capped_group_ends_at_its_budget_and_its_excess_follows_the_others_shares():
    shares = np.array([0.45, 0.40, 0.15])  # topic (scarce), chat, language: the benchmark's target mix
    sizes = np.array([60.0, 260.0, 280.0])
    out, capped = capped_shares(shares, sizes, np.zeros(3), 1800, 4.0)
    assert out.sum() == pytest.approx(1.0)
    passes = _passes(out, sizes, np.zeros(3), 1800)
    assert passes.max() <= 4.0 + 1e-9
    # Chat takes topic's excess until it is full too (above its own proposal, so not reported as held below it).
    assert capped.tolist() == [True, False, False]
    assert passes[0] == pytest.approx(4.0) and passes[1] == pytest.approx(4.0)
    # Short runs: nothing is over budget, the shares are the proposal.
    short, none = capped_shares(shares, sizes, np.zeros(3), 300, 4.0)
    np.testing.assert_allclose(short, shares)
    assert not none.any()


def test_the_excess_goes_to_the_uncapped_groups_in_proportion_to_their_shares():
    out, capped = capped_shares(np.array([0.6, 0.3, 0.1]), np.array([10.0, 1000.0, 1000.0]), np.zeros(3), 100, 1.0)
    assert capped.tolist() == [True, False, False]
    assert out[0] == pytest.approx(0.1)
    assert out[1] / out[2] == pytest.approx(3.0)


def test_draws_so_far_count_against_the_budget():
    out, capped = capped_shares(np.array([0.5, 0.5]), np.array([10.0, 100.0]), np.array([35.0, 0.0]), 100, 4.0)
    assert out[0] == pytest.approx(0.05) and capped[0]  # 5 draws left of 40


def test_a_run_longer_than_the_budget_equalises_the_passes_instead():
    sizes = np.array([10.0, 90.0])
    out, _ = capped_shares(np.array([0.9, 0.1]), sizes, np.zeros(2), 1000, 4.0)  # 10 passes of everything
    np.testing.assert_allclose(_passes(out, sizes, np.zeros(2), 1000), [10.0, 10.0])
    # ... starting from unequal draws, the behind group catches up first
    drawn = np.array([100.0, 90.0])  # 10 passes and 1 pass
    out, _ = capped_shares(np.array([0.5, 0.5]), sizes, drawn, 500, 2.0)
    np.testing.assert_allclose(_passes(out, sizes, drawn, 500), [10.0, 50 / 9 + 1], rtol=1e-9)


def test_a_group_without_share_takes_excess_only_when_no_group_with_share_can():
    out, _ = capped_shares(np.array([1.0, 0.0, 0.0]), np.array([10.0, 30.0, 60.0]), np.zeros(3), 100, 2.0)
    assert out[0] == pytest.approx(0.2)
    assert out[2] / out[1] == pytest.approx(2.0)  # spread by room left


@pytest.mark.parametrize("seed", range(20))
def test_capped_shares_hold_on_random_inputs(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 7))
    shares = rng.dirichlet(np.ones(k))
    sizes = rng.integers(1, 200, k).astype(float)
    drawn = rng.uniform(0, 3, k) * sizes
    remaining = float(rng.integers(1, 2000))
    cap = float(rng.uniform(1, 6))
    out, capped = capped_shares(shares, sizes, drawn, remaining, cap)
    assert np.isfinite(out).all() and (out >= 0).all() and out.sum() == pytest.approx(1.0)
    passes = _passes(out, sizes, drawn, remaining)
    level = max(cap, (drawn.sum() + remaining) / sizes.sum())
    # Nobody gains draws past the budget (or the plain run's level, when the budget cannot hold everyone).
    gained = out * remaining > 1e-9
    assert (passes[gained] <= max(level, (drawn / sizes).max()) + 1e-6).all()
    assert (out[capped] < shares[capped]).all()


def test_capped_shares_refuse_bad_input():
    with pytest.raises(ValueError, match="max_passes"):
        capped_shares(np.ones(2), np.ones(2), np.zeros(2), 10, 0.0)
    with pytest.raises(ValueError, match="one entry per group"):
        capped_shares(np.ones(2), np.ones(3), np.zeros(2), 10, 1.0)


def test_a_group_stalls_when_its_loss_no_longer_falls_with_its_draws():
    draws = np.array([[10.0] * 3, [20.0] * 3, [40.0] * 3, [80.0] * 3])
    losses = np.array([[2.0, 2.0, 2.0], [1.0, 1.5, 1.0], [0.98, 1.2, 1.1], [0.97, 1.0, 1.05]])
    se = np.full((4, 3), 0.05)
    # group 0 creeps down within its error, group 1 keeps falling, group 2 rose (overfitting)
    assert stalled_groups(draws, losses, se, 2).tolist() == [True, False, True]
    # The whole history shows every group falling; too short a history cannot stall.
    assert stalled_groups(draws, losses, se, 3).tolist() == [False, False, False]
    assert stalled_groups(draws[:2], losses[:2], se[:2], 2).tolist() == [False, False, False]
    # Larger errors make a real fall count as noise.
    assert stalled_groups(draws, losses, np.full((4, 3), 0.5), 2).tolist() == [True, True, True]
    # One noisy evaluation does not withdraw a group that keeps falling.
    noisy = np.array([[2.0], [1.6], [1.65], [1.0]])
    assert not stalled_groups(draws[:, :1], noisy, np.full((4, 1), 0.05), 2)[0]
    # Unmeasured evaluations (NaN) are skipped: the fit uses the last measured ones.
    gappy = losses.copy()
    gappy[2, 1] = np.nan
    assert not stalled_groups(draws, gappy, se, 2)[1]
    with pytest.raises(ValueError, match="patience"):
        stalled_groups(draws, losses, se, 0)


def test_withdrawn_groups_fall_to_their_natural_share_and_the_rest_take_it():
    out = withdrawn_shares(np.array([0.5, 0.3, 0.2]), np.array([0.1, 0.6, 0.3]), np.array([True, False, False]))
    assert out[0] == pytest.approx(0.1) and out.sum() == pytest.approx(1.0)
    assert out[1] / out[2] == pytest.approx(1.5)
    # Below natural already: it keeps its share.
    same = withdrawn_shares(np.array([0.05, 0.65, 0.3]), np.array([0.1, 0.6, 0.3]), np.array([True, False, False]))
    np.testing.assert_allclose(same, [0.05, 0.65, 0.3])
    # All withdrawn: the natural shares, the plain run.
    np.testing.assert_allclose(withdrawn_shares(np.array([0.5, 0.5]), np.array([0.2, 0.8]), np.ones(2, bool)),
                               [0.2, 0.8])
