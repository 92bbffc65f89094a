"""Losses for text-to-image person retrieval.

* ``identity_itc``: image-text contrastive loss whose targets are identity-aware (every pair in the
  batch with the same person id is a positive, weights spread evenly over them).
* ``sdm``: IRRA's similarity-distribution-matching loss: KL divergence between the softmax of the
  scaled similarities and the normalised identity-match distribution, both directions.
* ``IdentityHead``: optional identity classification of image and text features (IRRA's ID loss).

``sdm`` and ``identity_itc`` take ``same_person_weight``: the target weight of the person's *other* photos against the
caption's own photo (batch item ``i`` is photo ``i`` and one of its captions). 1 gives IRRA's
targets, where a caption fits every photo of its person equally, so what it says about its own
photo only (where it was taken, what the person is doing, who is nearby) earns nothing and is
trained out of the embeddings. Below 1, the own photo is preferred and that context is learnt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8


def _match_distribution(pids: torch.Tensor, same_person_weight: float = 1.0) -> torch.Tensor:
    labels = (pids[:, None] == pids[None, :]).float()
    if same_person_weight != 1.0:
        labels = labels * same_person_weight
        labels.fill_diagonal_(1.0)
    return labels / labels.sum(dim=1, keepdim=True)


def sdm(image: torch.Tensor, text: torch.Tensor, pids: torch.Tensor, logit_scale: torch.Tensor,
        same_person_weight: float = 1.0) -> torch.Tensor:
    """IRRA's SDM loss on L2-normalised features [B, D]."""
    q = _match_distribution(pids, same_person_weight)
    t2i = logit_scale * text @ image.t()
    i2t = t2i.t()
    loss = 0.0
    for logits in (i2t, t2i):
        p = F.softmax(logits, dim=1)
        loss = loss + (p * (F.log_softmax(logits, dim=1) - torch.log(q + EPS))).sum(1).mean()
    return loss


def identity_itc(image: torch.Tensor, text: torch.Tensor, pids: torch.Tensor, logit_scale: torch.Tensor,
                 same_person_weight: float = 1.0) -> torch.Tensor:
    """Contrastive cross-entropy with identity-aware soft targets, averaged over both directions."""
    q = _match_distribution(pids, same_person_weight)
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


def negatives_itc(image: torch.Tensor, text: torch.Tensor, negatives: torch.Tensor, pids: torch.Tensor,
                  logit_scale: torch.Tensor) -> torch.Tensor:
    """Image-to-text contrastive loss where each image also competes against hard negative
    captions (texts that describe no image in the batch)."""
    q = _match_distribution(pids)
    logits = logit_scale * image @ torch.cat([text, negatives]).t()
    target = torch.cat([q, torch.zeros_like(q)], dim=1)
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


class AttributeHeads(torch.nn.Module):
    """Shared per-slot linear classifiers over image *and* text features.

    Labels come from the captions themselves (``tools.mllm.parser`` reads what each caption
    states), so this needs no annotation beyond the captions. Sharing one classifier between the two
    towers makes them encode each attribute value along the same direction: both towers can learn
    "black trousers" on their own, but without this they tend to learn it along different axes.
    """

    def __init__(self, dim: int, classes: list[int]):
        super().__init__()
        self.heads = torch.nn.ModuleList(torch.nn.Linear(dim, n) for n in classes)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """labels: long [B, S], -1 where a slot is not stated."""
        total, count = features.new_zeros(()), 0
        for s, head in enumerate(self.heads):
            mask = labels[:, s] >= 0
            if mask.any():
                # unit-norm features: scale them so the logits can grow fast enough
                total = total + F.cross_entropy(head(10.0 * features[mask]), labels[mask, s], reduction="sum")
                count += int(mask.sum())
        return total / max(1, count)
