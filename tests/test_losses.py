"""Contrastive losses: identity-aware targets and the weight of a person's other photos."""

import math

import pytest
import torch
import torch.nn.functional as F

from train.losses import _match_distribution, identity_itc, sdm


def test_targets_spread_over_the_person_or_prefer_the_own_photo():
    pids = torch.tensor([5, 5, 7])
    assert torch.allclose(_match_distribution(pids), torch.tensor([[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1.0]]))
    # weight 0.5: own photo 1, the other photo of person 5 0.5 -> 2/3 and 1/3
    half = _match_distribution(pids, 0.5)
    assert torch.allclose(half, torch.tensor([[2 / 3, 1 / 3, 0], [1 / 3, 2 / 3, 0], [0, 0, 1.0]]))
    # weight 0: plain instance-level CLIP targets
    assert torch.allclose(_match_distribution(pids, 0.0), torch.eye(3))


def test_identity_itc_by_hand():
    # two photos of one person; caption 0 points at photo 0, caption 1 halfway between both
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), dim=-1)
    pids = torch.tensor([3, 3])
    scale = torch.tensor(1.0)
    logits = text @ image.t()

    def expected(q):
        t2i = -(q * F.log_softmax(logits, dim=1)).sum(1).mean()
        i2t = -(q * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
        return float((t2i + i2t) / 2)

    q = torch.full((2, 2), 0.5)
    assert float(identity_itc(image, text, pids, scale)) == pytest.approx(expected(q))
    q_own = torch.tensor([[0.8, 0.2], [0.2, 0.8]])  # weight 0.25: 1 / 1.25 and 0.25 / 1.25
    assert float(identity_itc(image, text, pids, scale, 0.25)) == pytest.approx(expected(q_own))


def test_below_one_the_caption_that_fits_its_own_photo_best_is_rewarded():
    """Two photos of one person in one batch: a text embedding that matches its own photo (and so
    carries that photo's context) costs nothing more under IRRA's targets than one that ignores the
    context, but is rewarded once the own photo weighs more."""
    image = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]])
    image = F.normalize(image, dim=-1)
    pids = torch.tensor([1, 1, 2])
    scale = torch.tensor(10.0)
    context_blind = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [-1.0, 1.0, 0.0]]), dim=-1)
    # leans a little toward its own photo's context (the third axis)
    own_photo = F.normalize(torch.tensor([[1.0, 0.0, 0.1], [1.0, 0.0, -0.1], [-1.0, 1.0, 0.0]]), dim=-1)
    for weight, blind_wins in ((1.0, True), (0.3, False)):
        blind = float(sdm(image, context_blind, pids, scale, weight))
        own = float(sdm(image, own_photo, pids, scale, weight))
        assert (blind < own) == blind_wins, (weight, blind, own)
    assert math.isfinite(float(sdm(image, own_photo, pids, scale, 0.0)))
