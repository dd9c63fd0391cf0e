"""Domain adaptation during SFT, the pure parts: mean-pooled sequence representations, a gradient-reversal layer
and a domain classifier (domain-adversarial training, Ganin et al., 2016, "Domain-Adversarial Training of Neural
Networks", JMLR 17), and a multi-bandwidth Gaussian-kernel maximum mean discrepancy between source and target
representations (Gretton et al., 2012, "A Kernel Two-Sample Test", JMLR 13; the bandwidth mix of Long et al.,
2015, "Learning Transferable Features with Deep Adaptation Networks").

Everything here works on tensors and is differentiable where the regulariser needs it; the callback that attaches
it to a Trainer decides when it runs and how its loss reaches the backward pass.
"""

from __future__ import annotations

import torch
from torch import nn

from ..engine import row_keys


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.strength * grad, None


def gradient_reversal(x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Identity forward; the gradient flowing back is multiplied by ``-strength``.

    Put between the representations and a domain classifier, the classifier learns to tell the domains apart
    while the model below learns to make them indistinguishable.

    Example:
        >>> x = torch.ones(2, requires_grad=True)
        >>> gradient_reversal(x, 0.5).sum().backward()
        >>> x.grad
        tensor([-0.5000, -0.5000])
    """
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    return _GradientReversal.apply(x, float(strength))


def padded_segments(attention_mask: torch.Tensor | None, shape: torch.Size) -> tuple[torch.Tensor, int]:
    """Per token, the index of its sequence in a padded ``(batch, length)`` batch, ``-1`` on padding; and the
    number of sequences.

    Example:
        >>> padded_segments(torch.tensor([[1, 1, 0], [1, 1, 1]]), torch.Size([2, 3]))
        (tensor([[ 0,  0, -1],
                [ 1,  1,  1]]), 2)
    """
    batch, length = shape
    rows = torch.arange(batch, device=attention_mask.device if attention_mask is not None else None)
    seg = rows[:, None].expand(batch, length).clone()
    if attention_mask is not None:
        seg[attention_mask == 0] = -1
    return seg, batch


def packed_segments(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Per token of a padding-free ``(1, total)`` batch, the index of its sequence (a new one starts where the
    position restarts at 0); and the number of sequences.

    Example:
        >>> packed_segments(torch.tensor([[0, 1, 2, 0, 1]]))
        (tensor([[0, 0, 0, 1, 1]]), 2)
    """
    seg = row_keys.segment_ids(position_ids)
    return seg[None, :], int(seg.max().item()) + 1 if seg.numel() else 0


def sequence_means(hidden: torch.Tensor, segments: torch.Tensor, n_sequences: int) -> torch.Tensor:
    """Mean of ``hidden`` (``(batch, length, dim)``) over each sequence's tokens: ``(n_sequences, dim)``.

    ``segments`` gives each token's sequence (``-1``: left out), as from :func:`padded_segments` or
    :func:`packed_segments`. Differentiable with respect to ``hidden``; computed in float32.

    Example:
        >>> h = torch.tensor([[[1.0], [3.0], [9.0]]])
        >>> sequence_means(h, torch.tensor([[0, 0, -1]]), 1)
        tensor([[2.]])
    """
    dim = hidden.shape[-1]
    flat = hidden.reshape(-1, dim).float()
    seg = segments.reshape(-1)
    keep = seg >= 0
    sums = torch.zeros(n_sequences, dim, dtype=torch.float32, device=hidden.device).index_add(0, seg[keep], flat[keep])
    counts = torch.zeros(n_sequences, dtype=torch.float32, device=hidden.device).index_add(
        0, seg[keep], torch.ones_like(seg[keep], dtype=torch.float32))
    return sums / counts.clamp(min=1.0)[:, None]


def gaussian_mmd2(source: torch.Tensor, target: torch.Tensor, scales: tuple[float, ...] = (0.5, 1.0, 2.0)) -> torch.Tensor:
    """Squared maximum mean discrepancy between two samples of representations, with a sum of Gaussian kernels.

    Bandwidths are ``scales`` times the median pairwise squared distance of the pooled samples (the median
    heuristic, held fixed for the gradient), so the penalty does not depend on the representations' scale. The
    biased (V-statistic) estimate: never negative, defined for one row per side. Returns 0 when either side is
    empty.

    Example:
        >>> a = torch.zeros(4, 3)
        >>> float(gaussian_mmd2(a, a))
        0.0
        >>> float(gaussian_mmd2(a, a + 5.0)) > 0
        True
    """
    if source.shape[0] == 0 or target.shape[0] == 0:
        return source.new_zeros(())
    both = torch.cat([source, target]).float()
    d2 = torch.cdist(both, both).pow(2)
    n = source.shape[0]
    off_diagonal = d2[~torch.eye(len(both), dtype=torch.bool, device=d2.device)]
    median = off_diagonal.detach().median() if off_diagonal.numel() else d2.new_ones(())
    median = torch.clamp(median, min=1e-12)
    kernel = sum(torch.exp(-d2 / (s * median)) for s in scales)
    k_ss, k_tt, k_st = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    return k_ss.mean() + k_tt.mean() - 2 * k_st.mean()


class DomainHead(nn.Module):
    """The domain classifier of domain-adversarial training: two layers from a representation to domain logits.

    Example:
        >>> head = DomainHead(dim=8, n_domains=3)
        >>> head(torch.zeros(5, 8)).shape
        torch.Size([5, 3])
    """

    def __init__(self, dim: int, n_domains: int, hidden: int = 256):
        super().__init__()
        if n_domains < 2:
            raise ValueError(f"a domain classifier needs at least 2 domains, got {n_domains}")
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, n_domains))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float())


def adversarial_losses(pooled: torch.Tensor, domains: torch.Tensor, head: DomainHead,
                       strength: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence cross-entropy of the domain classifier on gradient-reversed representations, and whether
    each sequence's domain was predicted correctly.

    Minimising the returned losses trains ``head`` to tell the domains apart and, through the reversal, the model
    to hide them.

    Example:
        >>> head = DomainHead(dim=4, n_domains=2)
        >>> loss, correct = adversarial_losses(torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 0, 1]), head)
        >>> loss.shape, correct.dtype
        (torch.Size([6]), torch.bool)
    """
    logits = head(gradient_reversal(pooled, strength))
    loss = nn.functional.cross_entropy(logits, domains, reduction="none")
    return loss, logits.detach().argmax(-1) == domains
