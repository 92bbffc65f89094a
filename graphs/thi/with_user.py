"""Our adaptive policy with a user: someone who knows the target (the person at the terminal, or a
simulated user in the benchmarks) answers the questions, so every fact describes the target itself
and checking many candidates against the facts pays off.

* Which candidates: each round the next ``user_verify_per_round`` unchecked candidates of the
  current ranking within its top ``user_verify_window``, up to ``user_verify_budget`` per query.
* Reading the checks, by ``user_check``:

  - ``"answers"`` (default): a checked candidate answers the whole questionnaire once (one MLLM
    call), and is scored fact by fact against everything known about the target, now and after
    later answers (``agents.inspector.agreement``: a naive-Bayes log-likelihood ratio; the photo's
    context counts ``user_elsewhere_factor``). The anchor is the best-fitting checked candidate
    (for the trace; it pins nothing).
  - ``"verify"``: one yes/no verification of the full description (every fact, not only what fits
    the text encoder) per candidate and round; a "no" is asked again about the person alone, since
    the same person photographed elsewhere is still the person.

* Questions: ``questions_per_round`` slots where the top-k disagree: by the candidates' own answers
  once two of them have answered the questionnaire, else by the retriever's zero-shot probe; with
  ``ask_context``, the photo's context (where, doing what, anyone nearby) too.
* Fusion: ``lam_user * original + (1 - lam_user) * new``, plus ``agreement_weight`` times each
  checked candidate's agreement ("answers"), or ``user_verify_weight * (2 p(match) - 1)`` per
  verdict ("verify", ``user_elsewhere_factor`` of it for the person photographed elsewhere).
* Stop: the user finished; nothing new learned; the top-k unchanged; the round limit.
"""

from __future__ import annotations

from agents.inspector import AdaptiveInspector, Agreement, agreement
from tools.attributes import SLOT_NAMES, SLOTS
from tools.mllm.base import Answer, MLLMError, grammar_merge

from ..config import THIConfig
from ..server import Live
from ..state import RoundRecord, THIState
from .policy import (USER_FINISHED, Answerer, Policy, Route, check_candidate, disagreement_questions, known, prefetch,
                     settled, skipped, verifications)
from .scoring import Fusion, Term


def person_description(state: THIState) -> str | None:
    """The query with the facts about the person only, or None when no fact is about the photo's
    context (where, doing what, anyone nearby)."""
    facts = state.get("facts") or {}
    if not any(SLOTS[s].scope == "image" for s in facts):
        return None
    return grammar_merge(state["query"], [Answer(s, v, 1.0, v) for s, v in facts.items() if SLOTS[s].scope != "image"])


class WithUserPolicy(Policy):
    name = "adaptive, with a user"

    def __init__(self, config: THIConfig, answerer: Answerer):
        super().__init__(config, answerer)
        self.inspector = AdaptiveInspector(config.user_verify_per_round, config.user_verify_window,
                                           config.min_yes_confidence, config.anchor_by)

    def agreement(self, answers: dict[str, list], facts: dict[str, str]) -> Agreement:
        # The photo's context (where, doing what, anyone nearby) singles out the photo the user saw;
        # the person's other photos differ there, so it counts less than the person's own facts.
        cfg = self.config
        weights = {s: cfg.user_elsewhere_factor for s in SLOT_NAMES if SLOTS[s].scope == "image"}
        return agreement(answers, facts, cfg.agreement_prior, cfg.agreement_floor, weights)

    def inspect(self, state: THIState, live: Live, pending: dict) -> dict:
        if self.config.user_check == "answers":
            return self._check_with_questionnaire(state, live, pending)
        return self._check_with_verification(state, live, pending)

    def _check_with_questionnaire(self, state: THIState, live: Live, pending: dict) -> dict:
        """The next unchecked candidates answer the whole questionnaire (one call each, once per
        query); the anchor is the best-fitting checked candidate, for the trace."""
        checked = dict(state.get("checked") or {})
        budget = max(0, self.config.user_verify_budget - verifications(state["rounds"]))
        ranking_ids = [c["id"] for c in state["ranking"]]
        chosen = self.inspector.candidates(ranking_ids, checked)[:budget]
        prefetch(live, chosen)
        facts = known(state)
        for image_id in chosen:
            rank = ranking_ids.index(image_id) + 1
            calls0 = live.mllm.stats.total_calls
            try:
                answers = live.mllm.ask(live.index.image(image_id), SLOT_NAMES)
            except MLLMError as e:
                pending["inspected"].append(skipped(image_id, rank, e))
                pending["notes"].append(f"questions about {image_id} skipped ({e.kind}: {e})")
                continue
            checked[image_id] = {a.slot: [a.value, round(float(a.confidence), 4)] for a in answers}
            a = self.agreement(checked[image_id], facts)
            differ = ", ".join(f"{slot} ({checked[image_id][slot][0]}, not {facts[slot]})" for slot in a.differ)
            pending["inspected"].append({
                "id": image_id, "rank": rank, "match": a.match, "confidence": round(a.confidence, 4),
                "reason": f"agrees on {len(a.agree)} of {len(a.agree) + len(a.differ)} facts it can tell"
                          + (f"; differs on {differ}" if differ else ""),
                "cached": live.mllm.stats.total_calls == calls0})
        fits = {i: self.agreement(ans, facts).score for i, ans in checked.items()}
        best = max(fits, key=fits.get, default=None)
        return {"checked": checked, "anchor": best if best is not None and fits[best] > 0 else None}

    def _check_with_verification(self, state: THIState, live: Live, pending: dict) -> dict:
        """Yes/no verification of everything known (not only what fitted the text encoder)."""
        verified = dict(state["verified"])
        anchor = state["anchor"]
        text = state.get("description") or state["current_query"]
        current = {i: v for i, v in verified.items() if v.get("query") == text}
        ranking_ids = [c["id"] for c in state["ranking"]]
        person_text = person_description(state)
        budget = max(0, self.config.user_verify_budget - verifications(state["rounds"]))
        chosen = self.inspector.candidates(ranking_ids, current)[:budget]
        prefetch(live, chosen)
        for image_id in chosen:
            check_candidate(live, image_id, ranking_ids, text, pending, verified, person_text)
        if anchor is None:  # the anchor is picked among this round's verdicts
            current = {i: v for i, v in verified.items() if v.get("query") == text}
            anchor = self.inspector.anchor(ranking_ids, current)
            pending["new_anchor"] = anchor is not None
        return {"verified": verified, "anchor": anchor}

    def after_inspect(self, state: THIState) -> Route:
        return "ask"

    def questions(self, state: THIState, live: Live) -> list[str]:
        return disagreement_questions(state, live, self.config.questions_per_round,
                                      include_context=self.config.ask_context)

    def fusion(self, state: THIState, live: Live) -> Fusion:
        idx, cfg = live.index, self.config
        original = ("text", state["query"])
        terms = [Term(1.0, original)]
        if state.get("current_query", state["query"]) != state["query"]:
            terms = [Term(cfg.lam_user, original), Term(1 - cfg.lam_user, ("text", state["current_query"]))]
        moves = []
        if cfg.user_check == "answers":
            facts = known(state)
            for image_id, answers in (state.get("checked") or {}).items():
                moves.append((idx.position[image_id], cfg.agreement_weight * self.agreement(answers, facts).score))
        for image_id, v in (state.get("verified") or {}).items():
            if v.get("match") is None:
                continue
            # move by the evidence: +w for a sure match, -w for a sure contradiction, ~0 when unsure
            p_match = float(v["confidence"]) if v["match"] else 1.0 - float(v["confidence"])
            weight = cfg.user_verify_weight
            if v.get("elsewhere"):
                weight *= cfg.user_elsewhere_factor  # the person, but not the photo the user saw
            moves.append((idx.position[image_id], weight * (2.0 * p_match - 1.0)))
        return Fusion(terms, moves)

    def stop(self, state: THIState, rounds: list[RoundRecord], pending: dict) -> str | None:
        if state.get("finished_by_user"):
            return USER_FINISHED
        return settled(state, rounds, pending, self.config.k, self.config.rounds)
