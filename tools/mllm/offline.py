"""The offline MLLM: runs here with no download and is independent of the retrieval model.

Its eyes are the attribute recogniser (``tools.mllm.recogniser``, a CNN trained on SynthPedes
annotations), its ears the query parser (``tools.mllm.parser``), its voice a grammar merge. A
description fits a photo unless the photo confidently shows something the description contradicts:
for each stated attribute, the recogniser's probability that the attribute is visible with another
value, weighted by how reliable the recogniser is on that attribute.

Evidence, never invention: it abstains (``Verdict(match=None)``, with the reason) where it has
nothing to weigh. A description from which the parser reads no attribute (empty, "???", another
language, no attribute of the vocabulary: ``parse(text).readable`` is False, ``.problem`` says
why) gets no verdict, and neither does a photo in which the recogniser's presence head sees no
person (``sees_person``); ``ask`` answers "cannot tell" for every slot of such a photo.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from tools.attributes import SLOT_NAMES, SLOTS

from .base import MLLM, Answer, ImageRef, Verdict
from .parser import parse
from .recogniser import DEFAULT_WEIGHTS, UNSEEN, Recogniser

#: answers below this probability (or mostly unseen) are "cannot tell"
MIN_ANSWER_CONFIDENCE = 0.45
#: floor inside the log features: a contradiction of 1.0 counts as -log(eps), not infinity
LOG_EPS = 0.003


def verifier_features(contradictions: dict[str, float], eps: float = LOG_EPS) -> np.ndarray:
    """The verifier's inputs: per slot ``c`` (0 when not stated), per slot ``-log(1 - c + eps)``
    and ``-log(1 - max c + eps)``, both shifted so that no contradiction gives 0, and per slot
    whether the description states it (1 or 0)."""
    c = np.asarray([contradictions.get(s, 0.0) for s in SLOT_NAMES], dtype=float)
    floor = -np.log1p(eps)
    logs = -np.log(1.0 - c + eps) - floor
    worst = -np.log(1.0 - c.max(initial=0.0) + eps) - floor
    stated = np.asarray([s in contradictions for s in SLOT_NAMES], dtype=float)
    return np.concatenate([c, logs, [worst], stated])


#: the leading :func:`verifier_features` that measure contradiction (their weights are >= 0); the
#: rest say which slots are stated
CONTRADICTION_FEATURES = 2 * len(SLOT_NAMES) + 1


def verifier_weights(vector: Sequence[float], digits: int = 4) -> dict:
    """The verifier settings' weight sections for a vector in :func:`verifier_features` order (the
    inverse of :attr:`OfflineMLLM.weight_vector`), rounded as stored."""
    n = len(SLOT_NAMES)
    per_slot = lambda part: {s: round(float(v), digits) for s, v in zip(SLOT_NAMES, part)}  # noqa: E731
    return {"weights": per_slot(vector[:n]), "log_weights": per_slot(vector[n:2 * n]),
            "max_weight": round(float(vector[2 * n]), digits), "stated_weights": per_slot(vector[2 * n + 1:])}


class OfflineMLLM(MLLM):
    """Recogniser + parser + grammar merge behind the MLLM interface.

    Verification is a logistic decision over per-attribute contradiction evidence: for each
    attribute the description states, the recogniser's probability that the photo visibly shows
    another value. Each attribute has its own weight because the recogniser is more reliable on
    some (upper colour) than on others (walking vs standing); the weights are fitted on held-out
    pairs (``python -m eval.mllm DIR --split val --calibrate``; on the train split the recogniser
    has seen the photos and a verifier fitted there trusts it too much) and stored beside the
    recogniser's weights. Each slot enters twice, as the contradiction ``c`` and as
    ``-log(1 - c + eps)``, and the largest contradiction once more in log form: a near-certain
    contradiction on a slot the recogniser is only fairly good at should still reject, which one
    linear weight per slot cannot express. Each stated slot also moves the threshold (a weight of
    either sign): a description that states twenty things gives the recogniser twenty chances to
    misread one, so the same contradiction is weaker evidence in a long description than in a
    short one.
    """

    name = "offline"
    parses_descriptions = True

    def __init__(self, recogniser: Recogniser | None = None, weights: str | Path = DEFAULT_WEIGHTS,
                 threshold: float | None = None, device: str | None = None, cache: bool = True):
        super().__init__(cache=cache)
        self.recogniser = recogniser or Recogniser.load(weights, device)
        self._probs: dict[str, dict] = {}
        self._person: dict[str, float | None] = {}
        self.use_verifier(self.recogniser.config.get("verifier") or {})
        if threshold is not None:
            self.threshold = threshold

    def use_verifier(self, verifier: dict) -> None:
        """Take the verifier's settings (the ``verifier`` section of the recogniser's JSON, as
        ``eval.mllm --calibrate`` fits it). logit(match) = bias - weight_vector .
        verifier_features(contradictions); without fitted weights: reject any slot contradicted at >= 0.5."""
        self.bias = float(verifier.get("bias", 5.0))
        self.slot_weights = {s: float(verifier.get("weights", {}).get(s, 10.0)) for s in SLOTS}
        # weight files fitted before the log features existed have none: their terms are zero
        self.log_weights = {s: float(verifier.get("log_weights", {}).get(s, 0.0)) for s in SLOTS}
        self.max_weight = float(verifier.get("max_weight", 0.0))
        # and none for stated slots: theirs are zero too
        self.stated_weights = {s: float(verifier.get("stated_weights", {}).get(s, 0.0)) for s in SLOTS}
        self.eps = float(verifier.get("eps", LOG_EPS))
        self.threshold = float(verifier.get("threshold", 0.5))
        self._fingerprint: str | None = None  # the settings are part of it

    @property
    def fingerprint(self) -> str:
        """The name plus a digest of the recogniser's weights and verifier settings."""
        if self._fingerprint is None:
            digest = hashlib.sha256(json.dumps(self.recogniser.config, sort_keys=True).encode())
            for name, tensor in sorted(self.recogniser.state_items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            if self.recogniser.presence is not None:  # it decides which photos are answered at all
                for name, tensor in sorted(self.recogniser.presence.state_dict().items()):
                    digest.update(f"presence.{name}".encode())
                    digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self._fingerprint = f"{self.name}:{digest.hexdigest()[:12]}"
        return self._fingerprint

    def probabilities(self, images: Sequence[ImageRef]) -> list[dict[str, dict[str, float]]]:
        """Recogniser output per image (memoised by image id; one batched pass for the new ones)."""
        new = [im for im in images if im.id not in self._probs]
        if new:
            probs, person = self.recogniser.predict_with_presence([im.path for im in new])
            for im, p, q in zip(new, probs, person):
                self._probs[im.id] = p
                self._person[im.id] = q
        return [self._probs[im.id] for im in images]

    def person_probability(self, image: ImageRef) -> float | None:
        """p(a person is in the photo) by the recogniser's presence head (None without one)."""
        self.probabilities([image])
        return self._person.get(image.id)

    def sees_person(self, image: ImageRef) -> bool:
        """Whether the photo shows a person (True without a presence head: nothing says otherwise).
        Backends without their own presence check can ask this before answering about a photo."""
        p = self.person_probability(image)
        return p is None or p >= self.recogniser.presence_threshold

    def prefetch(self, images: Sequence[ImageRef]) -> None:
        self.probabilities(images)

    @staticmethod
    def contradictions(probs: dict[str, dict[str, float]], constraints: dict[str, str]) -> dict[str, float]:
        """Per stated attribute: the probability that it is visible with another value. A slot or
        value the recogniser has no class for (a vocabulary extended after it was trained) is left
        out: it can neither confirm nor contradict it."""
        return {slot: max(0.0, 1.0 - probs[slot].get(value, 0.0) - probs[slot][UNSEEN])
                for slot, value in constraints.items() if slot in probs and value in probs[slot]}

    def contradiction(self, probs: dict[str, dict[str, float]], constraints: dict[str, str]) -> tuple[float, str]:
        """The largest contradiction and its slot."""
        c = self.contradictions(probs, constraints)
        if not c:
            return 0.0, ""
        slot = max(c, key=c.get)
        return c[slot], slot

    @property
    def weight_vector(self) -> np.ndarray:
        """The weights in :func:`verifier_features` order."""
        return np.asarray([self.slot_weights[s] for s in SLOT_NAMES] + [self.log_weights[s] for s in SLOT_NAMES]
                          + [self.max_weight] + [self.stated_weights[s] for s in SLOT_NAMES])

    def match_probability(self, probs: dict[str, dict[str, float]], constraints: dict[str, str]) -> float:
        x = verifier_features(self.contradictions(probs, constraints), self.eps)
        logit = self.bias - float(x @ self.weight_vector)
        return float(1.0 / (1.0 + np.exp(-np.clip(logit, -50, 50))))

    def _verify(self, image: ImageRef, text: str) -> Verdict:
        parsed = parse(text)
        if not parsed.readable:
            # evidence, never invention: with nothing to check there is no verdict either way
            return Verdict(None, 0.0, f"abstained: {parsed.problem}")
        probs = self.probabilities([image])[0]
        person = self._person.get(image.id)
        if person is not None and person < self.recogniser.presence_threshold:
            return Verdict(None, 1.0 - person, f"abstained: the photo does not show a person (p(person) {person:.2f})")
        constraints = {s: v for s, v in parsed.constraints.items() if s in probs and v in probs[s]}
        if not constraints:
            return Verdict(None, 0.0, "abstained: nothing the description states is something this backend can see")
        p = self.match_probability(probs, constraints)
        if p < self.threshold:
            worst, slot = self.contradiction(probs, constraints)
            seen = max((v for v in probs[slot] if v != UNSEEN), key=probs[slot].get)
            return Verdict(False, 1.0 - p, f"{slot}: the photo shows {seen}, the description says {constraints[slot]}")
        return Verdict(True, p, "nothing stated is contradicted")

    def _ask(self, image: ImageRef, slots: Sequence[str]) -> list[Answer]:
        probs = self.probabilities([image])[0]
        if not self.sees_person(image):
            # no person in the photo: no attribute of one to report
            return [Answer(slot, None, 0.0, "cannot tell: no person in the photo") for slot in slots]
        answers = []
        for slot in slots:
            p = probs.get(slot)
            if p is None:  # a slot the recogniser was not trained for
                answers.append(Answer(slot, None, 0.0, "cannot tell"))
                continue
            best = max((v for v in SLOTS[slot].values if v in p), key=lambda v: p.get(v, 0.0))
            if p[UNSEEN] >= 0.5 or p[best] < MIN_ANSWER_CONFIDENCE:
                answers.append(Answer(slot, None, 1.0 - p[UNSEEN], "cannot tell"))
            else:
                answers.append(Answer(slot, best, p[best], best))
        return answers
