"""The paper's policy: ICL's THI algorithm (see ``reference/ICL.md``).

* Which candidate: round r shows the MLLM the r-th candidate of the *original* ranking (up to
  ``depth``, 5), with the query as typed (yes/no verification).
* Reading the check: the xi gate on the query's top-1 similarity s1 decides whether a "yes"
  becomes the anchor: in round 1 only if s1 > xi; in a later round only if every earlier answer was
  "no" and s1 <= xi (``agents.inspector.PaperInspector``).
* Questions: the fixed questionnaire, once, to the accepted anchor (whoever answers: the MLLM
  about the anchor, or the user when there is one).
* Fusion: ``lam * original + (1 - lam) * new``, with the anchor's new similarity set to 1; no
  anchor keeps the original ranking.
* Stop: a query is refined at most once; without an anchor the dialogue stops as soon as no later
  round could accept one (the paper's remaining rounds would change nothing).
"""

from __future__ import annotations

from agents.inspector import PaperInspector
from agents.questioner import paper_questions

from ..config import THIConfig
from ..server import Live
from ..state import RoundRecord, THIState
from .policy import GATE_CLOSED, NO_ANCHOR, REFINED_ONCE, ROUND_LIMIT, Answerer, Policy, Route, verify
from .scoring import Fusion, Term


def _earlier_matches(rounds: list[RoundRecord]) -> list[bool]:
    """Whether each round's verified candidate was a "yes"."""
    return [r["inspected"][0]["match"] is True for r in rounds if r["inspected"]]


class PaperPolicy(Policy):
    name = "paper"

    def __init__(self, config: THIConfig, answerer: Answerer, has_user: bool = False):
        super().__init__(config, answerer)
        self.inspector = PaperInspector(config.xi, config.depth)
        self.has_user = has_user  # only changes how the round limit reads without an anchor

    def inspect(self, state: THIState, live: Live, pending: dict) -> dict:
        round_no = pending["round"]
        verified = dict(state["verified"])
        anchor = state["anchor"]
        cand = self.inspector.candidate([c["id"] for c in state["original_ranking"]], round_no)
        if cand is not None:
            ins = verify(live, cand, round_no, state["query"])
            pending["inspected"].append(ins)
            if ins["match"] is None:
                pending["notes"].append(f"verification of {cand} skipped ({ins['reason']})")
            elif self.inspector.accepts(round_no, ins["match"], state["top1_similarity"],
                                        _earlier_matches(state["rounds"])):
                anchor = cand
                pending["new_anchor"] = True
            verified[cand] = {"match": ins["match"], "confidence": ins["confidence"], "query": state["query"]}
        return {"verified": verified, "anchor": anchor}

    def after_inspect(self, state: THIState) -> Route:
        return "ask" if state["pending"].get("new_anchor") else "converge"

    def questions(self, state: THIState, live: Live) -> list[str]:
        return paper_questions() if state["pending"].get("new_anchor") else []

    def fusion(self, state: THIState, live: Live) -> Fusion:
        idx, lam = live.index, self.config.lam
        original = ("text", state["query"])
        anchor = state.get("anchor")
        if anchor is None:
            return Fusion([Term(1.0, original)])
        refined = state.get("current_query", state["query"]) != state["query"]
        new = ("text", state["current_query"]) if refined else original
        # lam * original + (1 - lam) * new, the anchor's new similarity set to 1
        return Fusion([Term(lam, original), Term(1 - lam, new, {idx.position[anchor]: 1.0})])

    def stop(self, state: THIState, rounds: list[RoundRecord], pending: dict) -> str | None:
        cfg, round_no = self.config, pending["round"]
        if state["anchor"] is not None:
            return REFINED_ONCE
        if not self.inspector.can_still_accept(round_no, state["top1_similarity"], _earlier_matches(rounds)):
            return GATE_CLOSED if round_no < min(cfg.depth, cfg.rounds) else NO_ANCHOR
        if round_no >= cfg.rounds:
            return ROUND_LIMIT if self.has_user else NO_ANCHOR
        return None
