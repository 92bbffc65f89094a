"""Losses for text-to-image person retrieval.

* ``identity_itc``: image-text contrastive loss whose targets are identity-aware (every pair in the
  batch with the same person id is a positive, weights spread evenly over them).
* ``sdm``: IRRA's similarity-distribution-matching loss: KL divergence between the softmax of the
  scaled similarities and the normalised identity-match distribution, both directions.
* ``IdentityHead``: optional identity classification of image and text features (IRRA's ID loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8


def _match_distribution(pids: torch.Tensor) -> torch.Tensor:
    labels = (pids[:, None] == pids[None, :]).float()
    return labels / labels.sum(dim=1, keepdim=True)


def sdm(image: torch.Tensor, text: torch.Tensor, pids: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """IRRA's SDM loss on L2-normalised features [B, D]."""
    q = _match_distribution(pids)
    t2i = logit_scale * text @ image.t()
    i2t = t2i.t()
    loss = 0.0
    for logits in (i2t, t2i):
        p = F.softmax(logits, dim=1)
        loss = loss + (p * (F.log_softmax(logits, dim=1) - torch.log(q + EPS))).sum(1).mean()
    return loss


def identity_itc(image: torch.Tensor, text: torch.Tensor, pids: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Contrastive cross-entropy with identity-aware soft targets, averaged over both directions."""
    q = _match_distribution(pids)
    t2i = logit_scale * text @ image.t()
    loss_t2i = -(q * F.log_softmax(t2i, dim=1)).sum(1).mean()
    loss_i2t = -(q * F.log_softmax(t2i.t(), dim=1)).sum(1).mean()
    return (loss_t2i + loss_i2t) / 2


class IdentityHead(torch.nn.Module):
    """Shared linear classifier over training identities for image and text features."""

    def __init__(self, dim: int, num_ids: int):
        super().__init__()
        self.fc = torch.nn.Linear(dim, num_ids)

    def forward(self, image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (F.cross_entropy(self.fc(image), labels) + F.cross_entropy(self.fc(text), labels)) / 2
