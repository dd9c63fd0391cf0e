"""Domain adaptation's pure parts on tensors: gradient reversal, per-sequence pooling (padded and padding-free),
the kernel MMD, and the adversarial game removing domain information from a learnt representation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sft_callbacks.policies.domain import (
    DomainHead,
    adversarial_losses,
    gaussian_mmd2,
    gradient_reversal,
    packed_segments,
    padded_segments,
    sequence_means,
)


def test_gradient_reversal_flips_and_scales_only_the_backward():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    y = gradient_reversal(x, 0.3)
    assert torch.equal(y, x)
    (y * torch.tensor([2.0, 5.0])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([-0.6, -1.5]))
    with pytest.raises(ValueError, match="strength"):
        gradient_reversal(x, -1.0)


def test_sequence_means_padded_and_packed_match_a_loop():
    torch.manual_seed(0)
    h = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    seg, n = padded_segments(mask, h.shape[:2])
    want = torch.stack([h[0, :3].mean(0), h[1].mean(0)])
    torch.testing.assert_close(sequence_means(h, seg, n), want)
    flat = torch.randn(1, 7, 3, requires_grad=True)
    seg, n = packed_segments(torch.tensor([[0, 1, 2, 0, 1, 0, 1]]))
    assert n == 3
    got = sequence_means(flat, seg, n)
    torch.testing.assert_close(got, torch.stack([flat[0, :3].mean(0), flat[0, 3:5].mean(0), flat[0, 5:].mean(0)]))
    got.sum().backward()  # differentiable: each token gets 1 / its sequence's length
    torch.testing.assert_close(flat.grad[0, :, 0], torch.tensor([1 / 3] * 3 + [0.5] * 4))


def test_mmd_is_zero_for_one_distribution_grows_with_a_shift_and_ignores_scale():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g)
    same, shifted, far = (float(gaussian_mmd2(a, b + s)) for s in (0.0, 0.5, 2.0))
    assert float(gaussian_mmd2(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert same < shifted < far
    assert float(gaussian_mmd2(10 * a, 10 * (b + 0.5))) == pytest.approx(shifted, rel=1e-4)  # median heuristic
    assert float(gaussian_mmd2(a[:0], b)) == 0.0


def test_descending_the_mmd_moves_the_source_onto_the_target():
    g = torch.Generator().manual_seed(1)
    target = torch.randn(32, 4, generator=g) + 3.0
    source = torch.randn(32, 4, generator=g).requires_grad_(True)
    start = float(gaussian_mmd2(source, target).detach())
    opt = torch.optim.SGD([source], lr=5.0)
    for _ in range(200):
        opt.zero_grad()
        gaussian_mmd2(source, target).backward()
        opt.step()
    assert float(gaussian_mmd2(source, target).detach()) < 0.1 * start
    assert abs(float(source.mean() - target.mean())) < 1.0


@pytest.mark.parametrize("strength", [0.0, 1.0])
def test_the_adversarial_game_drives_the_domain_head_to_chance(strength):
    # Inputs: 4 task dimensions (same in both domains) + 4 that give the domain away. The domain head always
    # trains to tell the domains apart; only with the reversal (strength > 0) does the encoder fight back, and
    # then the head is at chance on held-out rows while the task is still learnt. (A fresh probe trained on the
    # frozen features still recovers some of the domain: adversarial removal is known to leak, Elazar & Goldberg,
    # 2018; the method card says so.)
    g = torch.Generator().manual_seed(2)
    n = 400
    domains = torch.arange(n) % 2
    task = torch.randn(n, 4, generator=g)
    x = torch.cat([task, domains[:, None].float() * 2.0 + 0.3 * torch.randn(n, 4, generator=g)], dim=1)
    y = task[:, 0] - task[:, 1]
    train, held_out = slice(0, 300), slice(300, None)
    torch.manual_seed(3)
    encoder, readout = torch.nn.Linear(8, 6), torch.nn.Linear(6, 1)
    head = DomainHead(6, 2, hidden=32)
    # the head learns 10x slower than the encoder, as in the callback: otherwise it out-runs the reversal
    opt = torch.optim.Adam([{"params": [*encoder.parameters(), *readout.parameters()], "lr": 1e-2},
                            {"params": head.parameters(), "lr": 1e-3}])
    for _ in range(1000):
        opt.zero_grad()
        z = encoder(x[train])
        domain_loss, _ = adversarial_losses(z, domains[train], head, strength=strength)
        (torch.nn.functional.mse_loss(readout(z)[:, 0], y[train]) + domain_loss.mean()).backward()
        opt.step()
    with torch.no_grad():
        z = encoder(x[held_out])
        task_error = float(torch.nn.functional.mse_loss(readout(z)[:, 0], y[held_out]))
        _, correct = adversarial_losses(z, domains[held_out], head)
    accuracy = float(correct.float().mean())
    assert task_error < 0.05  # the task is learnt either way
    if strength > 0:
        assert accuracy < 0.65, accuracy  # chance is 0.5
    else:
        assert accuracy > 0.95, accuracy


def test_domain_head_refuses_one_domain_and_reports_correctness():
    with pytest.raises(ValueError, match="at least 2 domains"):
        DomainHead(4, 1)
    head = DomainHead(2, 2, hidden=4)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.net[2].bias.copy_(torch.tensor([1.0, 0.0]))  # always predicts domain 0
    loss, correct = adversarial_losses(torch.zeros(3, 2), torch.tensor([0, 1, 0]), head)
    assert correct.tolist() == [True, False, True]
    np.testing.assert_allclose(loss.detach().numpy(), [np.log1p(np.exp(-1.0)), np.log1p(np.exp(1.0)), np.log1p(np.exp(-1.0))], rtol=1e-6)
