"""The questioner: which human-attribute questions to ask.

* Paper: the fixed 15-question questionnaire (every slot of ``tools.attributes``), once.
* Adaptive (ours): the slots on which the current top candidates disagree most (mutual
  information from ``tools.probe.AttributeProbe``), skipping what the query already states and what
  was already asked. Disagreement is what makes an answer able to reorder the candidates. Once the
  top candidates have answered the questionnaire themselves (with a user), their own answers
  measure it instead (:func:`answer_disagreement`). With a
  user who saw the target photo, the photo's context (where, doing what, anyone nearby: the
  paper's questions 13-15) is asked too: it does not identify a person, but it singles out the
  photo.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from tools.attributes import PAPER_QUESTIONNAIRE, SLOT_NAMES

#: When the probe has no opinion, ask about what tells people apart most often.
FALLBACK_ORDER: tuple[str, ...] = ("upper_color", "lower_color", "upper_type", "lower_type", "gender", "hair_length",
                                   "hair_color", "shoes_color", "backpack", "bag", "hat", "pattern", "shoes_type",
                                   "sleeve_length", "eyewear", "hand_object", "scarf", "belt")
#: Per-photo context, asked only of someone who knows the target photo.
CONTEXT_ORDER: tuple[str, ...] = ("background", "action", "other_people")


def paper_questions() -> list[str]:
    """Every slot of the paper's questionnaire, in its order."""
    return [s for group in PAPER_QUESTIONNAIRE for s in group]


@dataclass
class AdaptiveQuestioner:
    """Pick up to ``per_round`` slots where the candidates disagree."""

    disagreement: Callable[[Sequence[str]], Mapping[str, float]]
    per_round: int = 3
    min_disagreement: float = 0.02
    include_context: bool = False  # also ask CONTEXT_ORDER (only of a user who knows the target photo)

    def choose(self, known: Mapping[str, str], asked: Sequence[str]) -> list[str]:
        order = FALLBACK_ORDER + (CONTEXT_ORDER if self.include_context else ())
        open_slots = [s for s in order if s not in known and s not in asked]
        if not open_slots:
            return []
        scores = dict(self.disagreement(open_slots))
        ranked = sorted(open_slots, key=lambda s: (-scores.get(s, 0.0), order.index(s)))
        picked = [s for s in ranked if scores.get(s, 0.0) >= self.min_disagreement][: self.per_round]
        return picked


def answer_disagreement(answers: Sequence[Mapping[str, Sequence]], slots: Sequence[str]) -> dict[str, float]:
    """Per slot, how much the candidates' own answers (``{slot: [value or None, confidence]}``, one
    mapping per candidate) disagree: the entropy (nats) of the values among those that can tell,
    times the share that can tell. Zero when they all say the same thing."""
    out = {}
    for slot in slots:
        values = [a[slot][0] for a in answers if a.get(slot) and a[slot][0] is not None]
        if not values:
            out[slot] = 0.0
            continue
        counts = np.unique(np.asarray(values, dtype=object).astype(str), return_counts=True)[1]
        p = counts / counts.sum()
        out[slot] = float(-(p * np.log(p)).sum() * len(values) / len(answers)) + 0.0  # no -0.0
    return out


def with_items(slots: Sequence[str]) -> list[str]:
    """Add the item slot to a colour question ("what colour is the hat?" needs "is there a hat?")."""
    from tools.attributes import COLOR_PARENT

    out: list[str] = []
    for s in slots:
        parent = COLOR_PARENT.get(s)
        if parent and parent not in out and parent not in slots:
            out.append(parent)
        if s not in out:
            out.append(s)
    return [s for s in SLOT_NAMES if s in out]
