"""Our adaptive policy without a user: THI knows only the query, and the MLLM answers about an
anchor it has verified.

* Which candidates: the *current* ranking, not the original one. With the default sequential
  search (``anchor_search="sequential"``) candidates are verified one at a time, best-ranked
  first, down to ``anchor_depth``, stopping at the first confident "yes": usually one or two
  calls, so the search can go deeper than the paper's top 5 when the top candidates are wrong.
  Once the anchor is known, ``verify_after_anchor`` more candidates are verified to re-rank them.
  The batch search (``anchor_search="batch"``) verifies ``verify_per_round`` candidates per round
  within ``verify_budget`` and picks the anchor among their verdicts (``anchor_by``).
* Reading the checks: a "yes" with at least ``min_yes_confidence`` can be the anchor; every verdict
  moves its candidate by ``verify_weight * (2 p(match) - 1)`` once there is an anchor.
* Questions: ``anchor_questions`` slots where the top-k disagree (the retriever's zero-shot probe),
  asked once, of the anchor, when it is found.
* Fusion: ``lam_adaptive * original + (1 - lam_adaptive) * new`` with the anchor's new similarity
  set to 1, plus ``anchor_image_weight`` times each photo's image similarity to the anchor (the
  same person's photos from other cameras). A query whose anchor check fails keeps its original
  ranking exactly.
* Stop: no anchor within the search budget; nothing new learned; the top-k unchanged; the round
  limit.
"""

from __future__ import annotations

from agents.inspector import AdaptiveInspector

from ..config import THIConfig
from ..server import Live
from ..state import RoundRecord, THIState
from .policy import (NO_ANCHOR, Answerer, Policy, Route, check_candidate, disagreement_questions, prefetch, settled,
                     verifications)
from .scoring import Fusion, Term


def _verifications_after_anchor(rounds: list[RoundRecord]) -> int:
    """Candidates inspected in the rounds after the one that found the anchor."""
    found = next((n for n, r in enumerate(rounds) if r["anchor"] is not None), len(rounds))
    return sum(len(r["inspected"]) for r in rounds[found + 1:])


class AdaptivePolicy(Policy):
    name = "adaptive"

    def __init__(self, config: THIConfig, answerer: Answerer):
        super().__init__(config, answerer)
        self.inspector = AdaptiveInspector(config.verify_per_round, config.verify_window, config.min_yes_confidence,
                                           config.anchor_by)
        self.sequential = config.anchor_search == "sequential"

    @property
    def anchor_budget(self) -> int:
        """Verifications the search for an anchor may spend."""
        return self.config.anchor_depth if self.sequential else self.config.verify_budget

    def inspect(self, state: THIState, live: Live, pending: dict) -> dict:
        cfg = self.config
        verified = dict(state["verified"])
        anchor = state["anchor"]
        text = state["query"]  # every verification checks the query as typed
        current = {i: v for i, v in verified.items() if v.get("query") == text}
        ranking_ids = [c["id"] for c in state["ranking"]]

        def check(image_id: str):
            return check_candidate(live, image_id, ranking_ids, text, pending, verified)

        if self.sequential and anchor is None:
            budget = max(0, self.anchor_budget - verifications(state["rounds"]))
            chosen = self.inspector.search_order(ranking_ids, current, cfg.anchor_depth)[:budget]
            for n, image_id in enumerate(chosen):
                if n % cfg.verify_per_round == 0:  # read a few photos at once, not the whole depth
                    prefetch(live, chosen[n: n + cfg.verify_per_round])
                ins = check(image_id)
                if self.inspector.accepts(ins["match"], ins["confidence"]):
                    anchor = image_id
                    pending["new_anchor"] = True
                    break
            return {"verified": verified, "anchor": anchor}
        if self.sequential:  # the anchor is known: a few more candidates, to re-rank them
            budget = max(0, cfg.verify_after_anchor - _verifications_after_anchor(state["rounds"]))
        else:
            budget = max(0, cfg.verify_budget - verifications(state["rounds"]))
        chosen = self.inspector.candidates(ranking_ids, current)[:budget]
        prefetch(live, chosen)
        for image_id in chosen:
            check(image_id)
        if anchor is None:  # batch search: the anchor is picked among this round's verdicts
            current = {i: v for i, v in verified.items() if v.get("query") == text}
            anchor = self.inspector.anchor(ranking_ids, current)
            pending["new_anchor"] = anchor is not None
        return {"verified": verified, "anchor": anchor}

    def after_inspect(self, state: THIState) -> Route:
        return "converge" if state["anchor"] is None else "ask"

    def questions(self, state: THIState, live: Live) -> list[str]:
        # every answer describes the anchor: ask once, when it is found
        if not state["pending"].get("new_anchor"):
            return []
        return disagreement_questions(state, live, self.config.anchor_questions, include_context=False)

    def fusion(self, state: THIState, live: Live) -> Fusion:
        idx, cfg = live.index, self.config
        original = ("text", state["query"])
        anchor = state.get("anchor")
        if anchor is None:
            return Fusion([Term(1.0, original)])  # a failed anchor check never changes the ranking
        at = idx.position[anchor]
        lam = cfg.lam_adaptive
        if state.get("current_query", state["query"]) != state["query"]:
            # lam * original + (1 - lam) * new, the anchor's new similarity set to 1
            terms = [Term(lam, original), Term(1 - lam, ("text", state["current_query"]), {at: 1.0})]
        else:  # the original ranking, the anchor raised as if its new similarity were 1
            terms = [Term(1.0, original, {at: lam * idx.vector(original)[at] + (1 - lam)})]
        if cfg.anchor_image_weight > 0:
            # The accepted anchor is a photo of the person: its look pulls up the same person's other
            # photos (other cameras), which the caption alone ranks lower.
            terms.append(Term(cfg.anchor_image_weight, ("image", anchor)))
        moves = []
        for image_id, v in (state.get("verified") or {}).items():
            if v.get("match") is None:
                continue
            # move by the evidence: +w for a sure match, -w for a sure contradiction, ~0 when unsure
            p_match = float(v["confidence"]) if v["match"] else 1.0 - float(v["confidence"])
            moves.append((idx.position[image_id], cfg.verify_weight * (2.0 * p_match - 1.0)))
        return Fusion(terms, moves)

    def stop(self, state: THIState, rounds: list[RoundRecord], pending: dict) -> str | None:
        round_no = pending["round"]
        if state["anchor"] is None:
            spent = verifications(rounds) >= self.anchor_budget  # nothing left for another round
            return NO_ANCHOR if round_no >= self.config.rounds or not pending["inspected"] or spent else None
        return settled(state, rounds, pending, self.config.k, self.config.rounds)
