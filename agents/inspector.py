"""The inspector: which candidates to show the MLLM, and which one becomes the anchor.

Pure decisions over plain values (ids, ranks, similarities, verdicts); the graph calls the MLLM.

* Paper (ICL's THI): round r shows the r-th candidate of the original ranking; the xi gate on the
  query's top-1 similarity s1 decides whether a "yes" is accepted: in round 1 only if s1 > xi, in
  later rounds only if every earlier answer was "no" and s1 <= xi. The first accepted candidate is
  the anchor and the query is refined once.
* Adaptive (ours), sequential search (default without a user): candidates of the *current*
  ranking are verified one at a time, best-ranked first, down to a depth; the first confident
  "yes" is the anchor and the search stops there. Most queries need one or two calls, which pays
  for going deeper on the queries whose top candidates are wrong.
* Adaptive, batch search: several unverified candidates from the top of the current ranking per
  round; the anchor is the best-ranked (or most confident) candidate verified "yes".
* With a user (adaptive, ``user_check="answers"``): each checked candidate answers the whole
  questionnaire once, and :func:`agreement` compares its answers with everything known about the
  target (the query's statements and the user's answers), fact by fact. Unlike one yes/no verdict
  on a long description, a single misread attribute costs a little instead of everything, and the
  comparison follows the facts as the user adds them without asking the candidate again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence


@dataclass(frozen=True)
class PaperInspector:
    xi: float = 0.50
    depth: int = 5

    def candidate(self, original_ids: Sequence[str], round_no: int) -> str | None:
        """The candidate shown in round ``round_no`` (1-based), or None past the depth."""
        if round_no > min(self.depth, len(original_ids)):
            return None
        return original_ids[round_no - 1]

    def accepts(self, round_no: int, match: bool, top1_similarity: float, earlier_matches: Sequence[bool]) -> bool:
        if not match:
            return False
        if round_no == 1:
            return top1_similarity > self.xi
        return not any(earlier_matches) and top1_similarity <= self.xi

    def can_still_accept(self, round_no: int, top1_similarity: float, earlier_matches: Sequence[bool]) -> bool:
        """Whether any later round could accept (so the loop may stop early with the same result)."""
        if round_no >= self.depth:
            return False
        return not any(earlier_matches) and top1_similarity <= self.xi


@dataclass(frozen=True)
class AdaptiveInspector:
    per_round: int = 3
    window: int = 5
    min_confidence: float = 0.5
    by: str = "rank"  # which "yes" becomes the anchor: the best-ranked, or the most confident ("confidence")

    def candidates(self, ranking_ids: Sequence[str], verified: Mapping[str, dict]) -> list[str]:
        """Up to ``per_round`` not-yet-verified candidates from the top ``window`` (then beyond)."""
        fresh = [i for i in ranking_ids[: self.window] if i not in verified]
        if not fresh:
            fresh = [i for i in ranking_ids[self.window: self.window * 3] if i not in verified]
        return fresh[: self.per_round]

    def search_order(self, ranking_ids: Sequence[str], verified: Mapping[str, dict], depth: int) -> list[str]:
        """Sequential search: the not-yet-verified candidates among the top ``depth``, best first."""
        return [i for i in ranking_ids[:depth] if i not in verified]

    def accepts(self, match: bool | None, confidence: float) -> bool:
        """Whether a verdict makes its candidate the anchor (a "yes" with enough confidence)."""
        return bool(match) and confidence >= self.min_confidence

    def anchor(self, ranking_ids: Sequence[str], verified: Mapping[str, dict]) -> str | None:
        """The best-ranked (or, with ``by="confidence"``, the most confident; ties by rank) candidate
        verified as a match with enough confidence."""
        yes = [i for i in ranking_ids if (v := verified.get(i)) and self.accepts(v["match"], v["confidence"])]
        if not yes:
            return None
        if self.by == "confidence":
            return max(yes, key=lambda i: verified[i]["confidence"])  # max keeps the first of equals
        return yes[0]


@dataclass(frozen=True)
class Agreement:
    """How well a candidate's own answers fit what is known about the target (see :func:`agreement`)."""

    score: float  # log-likelihood ratio: > 0 fits better than a random photo would
    agree: list[str]  # slots where the candidate's answer is the known value
    differ: list[str]  # slots where it answers something else

    @property
    def match(self) -> bool:
        return self.score > 0

    @property
    def confidence(self) -> float:
        """Confidence in ``match`` (a logistic of the score's size)."""
        return 1.0 / (1.0 + math.exp(-abs(self.score)))


def agreement(answers: Mapping[str, Sequence], known: Mapping[str, str], prior: float = 0.3,
              floor: float = 0.02, weights: Mapping[str, float] | None = None) -> Agreement:
    """Compare a candidate's answers ``{slot: [value or None, confidence]}`` with the ``known``
    facts about the target ``{slot: value}``: a naive-Bayes log-likelihood ratio of "this is the
    target" against "a random photo". An answer equal to the known value adds
    ``log(confidence / prior)`` (the eyes are right with that confidence; a random photo shows the
    value with probability ``prior``); another value adds ``log(max(1 - confidence, floor) /
    (1 - prior))`` (only an error of the eyes explains it, and a sure error is never impossible);
    "cannot tell" and unasked slots add nothing. ``weights`` scale slots (default 1), e.g. the
    photo's context, which the person's other photos do not share.

    >>> agreement({"hat": ["cap", 0.9]}, {"hat": "cap"}).score > 0
    True
    """
    if not 0.0 < prior < 1.0 or not 0.0 < floor < 1.0:
        raise ValueError("prior and floor must be within (0, 1)")
    score, agree, differ = 0.0, [], []
    for slot, value in known.items():
        answer = answers.get(slot)
        if not answer or answer[0] is None:
            continue
        seen, confidence = answer[0], min(max(float(answer[1]), floor), 1.0 - floor)
        w = 1.0 if weights is None else weights.get(slot, 1.0)
        if seen == value:
            score += w * math.log(confidence / prior)
            agree.append(slot)
        else:
            score += w * math.log(max(1.0 - confidence, floor) / (1.0 - prior))
            differ.append(slot)
    return Agreement(score, agree, differ)
