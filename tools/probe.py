"""Zero-shot attribute probe: what the retrieval model believes about candidates' attributes.

For each slot of ``tools.attributes`` and each value, a short prompt ("The person wears a red
top.") is encoded once by the text encoder; a candidate image's similarity to the prompts of one
slot, through a softmax, is a distribution over that slot's values. The THI questioner uses it to
find the questions on which the current top candidates *disagree* (PlugIR's idea), which are the
questions whose answers can reorder them. It never judges whether a candidate matches: that is the
MLLM's job.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from tools.attributes import IDENTITY_SLOTS, NONE, SLOT_NAMES, SLOTS, phrase

from .embedder import Embedder

#: Slots probed by default: per-photo context (background, bystanders) does not identify a person.
#: (It does single out a photo, so a caller that knows the target *photo* may ask for those slots too.)
PROBE_SLOTS: tuple[str, ...] = IDENTITY_SLOTS

def value_prompts(slot: str) -> list[tuple[str, str]]:
    """(value, prompt) for every value of a slot the probe can tell apart."""
    out = []
    for v in SLOTS[slot].values:
        if v == NONE and not SLOTS[slot].has_absent:
            continue
        out.append((v, phrase(slot, v, {})))
    return out


class AttributeProbe:
    """Per-slot value distributions of gallery images from the retrieval model's own space."""

    def __init__(self, embedder: Embedder, temperature: float = 0.02):
        self.embedder = embedder
        self.temperature = temperature

    @cached_property
    def prompts(self) -> dict[str, tuple[list[str], np.ndarray]]:
        out = {}
        texts, owners = [], []
        for slot in SLOT_NAMES:
            for value, prompt in value_prompts(slot):
                texts.append(prompt)
                owners.append((slot, value))
        emb = self.embedder.encode_texts(texts, progress=False)
        for slot in SLOT_NAMES:
            idx = [i for i, (s, _) in enumerate(owners) if s == slot]
            out[slot] = ([owners[i][1] for i in idx], emb[idx])
        return out

    def distributions(self, image_embeddings: np.ndarray, slot: str) -> tuple[list[str], np.ndarray]:
        """(values, probabilities [N, V]) for N images."""
        values, prompt_emb = self.prompts[slot]
        logits = image_embeddings @ prompt_emb.T / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return values, p / p.sum(axis=1, keepdims=True)

    def disagreement(self, image_embeddings: np.ndarray, slots: list[str] | None = None,
                     weights: np.ndarray | None = None) -> dict[str, float]:
        """Mutual information between 'which candidate' and the slot's value (nats), per slot:
        high when candidates are individually sure but differ, zero when they agree."""
        slots = list(slots or PROBE_SLOTS)
        w = np.ones(len(image_embeddings)) if weights is None else np.asarray(weights, dtype=float)
        w = w / w.sum()
        out = {}
        for slot in slots:
            _, p = self.distributions(image_embeddings, slot)
            mean = (w[:, None] * p).sum(0)
            h_mean = -(mean * np.log(mean + 1e-12)).sum()
            h_each = -(p * np.log(p + 1e-12)).sum(1)
            out[slot] = float(h_mean - (w * h_each).sum())
        return out
