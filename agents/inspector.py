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
"""

from __future__ import annotations

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
