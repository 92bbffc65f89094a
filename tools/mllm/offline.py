"""The offline MLLM: runs here with no download and is independent of the retrieval model.

Its eyes are the attribute recogniser (``tools.mllm.recogniser``, a CNN trained on SynthPedes
annotations), its ears the query parser (``tools.mllm.parser``), its voice a grammar merge. A
description fits a photo unless the photo confidently shows something the description contradicts:
for each stated attribute, the recogniser's probability that the attribute is visible with another
value; the largest of these is compared with a threshold calibrated for balanced verification
accuracy on the val split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tools.attributes import SLOTS

from .base import MLLM, Answer, ImageRef, Verdict
from .parser import parse
from .recogniser import DEFAULT_WEIGHTS, UNSEEN, Recogniser

#: answers below this probability (or mostly unseen) are "cannot tell"
MIN_ANSWER_CONFIDENCE = 0.45


class OfflineMLLM(MLLM):
    """Recogniser + parser + grammar merge behind the MLLM interface."""

    name = "offline"

    def __init__(self, recogniser: Recogniser | None = None, weights: str | Path = DEFAULT_WEIGHTS,
                 threshold: float | None = None, device: str | None = None, cache: bool = True):
        super().__init__(cache=cache)
        self.recogniser = recogniser or Recogniser.load(weights, device)
        calibrated = getattr(self.recogniser, "config", {}).get("verify_threshold") if recogniser is None else None
        self.threshold = threshold if threshold is not None else (calibrated or 0.5)
        self._probs: dict[str, dict] = {}

    def probabilities(self, images: Sequence[ImageRef]) -> list[dict[str, dict[str, float]]]:
        """Recogniser output per image (memoised by image id; one batched pass for the new ones)."""
        new = [im for im in images if im.id not in self._probs]
        if new:
            for im, p in zip(new, self.recogniser.predict([im.path for im in new])):
                self._probs[im.id] = p
        return [self._probs[im.id] for im in images]

    def contradiction(self, probs: dict[str, dict[str, float]], constraints: dict[str, str]) -> tuple[float, str]:
        """Largest probability that a stated attribute is visible with another value, and its slot."""
        worst, worst_slot = 0.0, ""
        for slot, value in constraints.items():
            p = probs[slot]
            against = max(0.0, 1.0 - p.get(value, 0.0) - p[UNSEEN])
            if against > worst:
                worst, worst_slot = against, slot
        return worst, worst_slot

    def _verify(self, image: ImageRef, text: str) -> Verdict:
        constraints = parse(text).constraints
        if not constraints:
            return Verdict(True, 0.5, "the description states nothing this backend can check")
        probs = self.probabilities([image])[0]
        worst, slot = self.contradiction(probs, constraints)
        if worst >= self.threshold:
            seen = max((v for v in probs[slot] if v != UNSEEN), key=probs[slot].get)
            return Verdict(False, worst, f"{slot}: the photo shows {seen}, the description says {constraints[slot]}")
        return Verdict(True, 1.0 - worst, "nothing stated is contradicted")

    def _ask(self, image: ImageRef, slots: Sequence[str]) -> list[Answer]:
        probs = self.probabilities([image])[0]
        answers = []
        for slot in slots:
            p = probs[slot]
            best = max((v for v in SLOTS[slot].values), key=lambda v: p.get(v, 0.0))
            if p[UNSEEN] >= 0.5 or p[best] < MIN_ANSWER_CONFIDENCE:
                answers.append(Answer(slot, None, 1.0 - p[UNSEEN], "cannot tell"))
            else:
                answers.append(Answer(slot, best, p[best], best))
        return answers
