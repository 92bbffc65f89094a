"""THI: test-time human-centered interaction, as a LangGraph state machine.

retrieve -> inspect -> ask -> rewrite -> re_retrieve -> converge -> (inspect | END)

* ``paper`` policy: ICL's algorithm: round r verifies the r-th candidate of the original ranking
  (yes/no), the xi gate on the top-1 similarity decides whether a "yes" becomes the anchor, the
  anchor answers the fixed questionnaire, the answers are merged into the query, and the final
  score is ``lam * original + (1 - lam) * new`` with the anchor's new similarity set to 1. A query
  is refined at most once; the loop stops as soon as no later round could accept an anchor (the
  paper's remaining rounds would change nothing).
* ``adaptive`` policy (ours): without a user, the anchor is searched for down the *current*
  ranking one verification at a time, stopping at the first confident "yes" (deeper than the
  paper's top 5 when the top candidates are wrong, cheaper when they are right), and a few more
  candidates are verified once it is known; with a user, several candidates per round, each
  answering the whole questionnaire once and scored fact by fact against what the user has told
  (``agents.inspector.agreement``; ``user_check="verify"`` keeps one yes/no verdict instead). Questions
  chosen where the top candidates disagree, refinement across rounds, verified
  candidates moved up (match) or down (contradiction) once an anchor exists, and a stop when the
  top-k no longer changes, nothing new was learned, or the round limit is hit. A query whose anchor
  check fails keeps its original ranking exactly.

The graph has its own round limit (``THIConfig.rounds``); it never relies on LangGraph's recursion
limit. Models, gallery and MLLM come through the runtime context (:class:`graphs.config.THIContext`).

>>> graph = build_graph()
>>> result = graph.invoke({"query": "a woman in a red coat"}, context=THIContext(index, OfflineMLLM()))  # doctest: +SKIP
>>> result["ranking"][:3], result["stopped_because"]                                                     # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import interrupt

from agents.inspector import AdaptiveInspector, Agreement, PaperInspector, agreement
from agents.questioner import AdaptiveQuestioner, answer_disagreement, paper_questions, with_items
from agents.rewriter import Rewriter
from agents.users import HumanUser, question_payload, read_human_answers
from tools.attributes import SLOT_NAMES, SLOTS
from tools.mllm.base import Answer, MLLMError, grammar_merge
from tools.mllm.parser import parse

from .config import THIConfig, THIContext
from .state import Candidate, Inspection, QA, RoundRecord, THIState

log = logging.getLogger(__name__)

#: Stop reasons (the ``stopped_because`` values).
CONVERGED = "converged: the top-k did not change"
NOTHING_NEW = "nothing new was learned"
ROUND_LIMIT = "round limit reached"
NO_ANCHOR = "no anchor: no candidate passed verification; the original ranking is kept"
REFINED_ONCE = "refined once (paper: each query is refined at most once)"
USER_FINISHED = "the user finished"
GATE_CLOSED = "no anchor: the xi gate admits no later candidate; the original ranking is kept"


# -------------------------------------------------------------------------------------------
# scoring


def _top(scores: np.ndarray, ids: list[str], n: int) -> list[Candidate]:
    n = min(n, int(np.isfinite(scores).sum()))
    if n == 0:
        return []
    part = np.argpartition(-scores, n - 1)[:n]
    order = part[np.argsort(-scores[part], kind="stable")]
    return [{"id": ids[i], "score": round(float(scores[i]), 6)} for i in order]


def final_scores(state: THIState, ctx: THIContext) -> np.ndarray:
    """Scores of every gallery image after the rounds recorded in ``state`` (recomputed from its
    plain values, so a checkpointed dialogue and a benchmark get the same numbers). Images outside
    the context's metadata filter score -inf."""
    scores = _fused(state, ctx)
    return _masked(scores, ctx)


def _masked(scores: np.ndarray, ctx: THIContext) -> np.ndarray:
    if ctx.allowed is None:
        return scores
    keep = np.fromiter((i in ctx.allowed for i in ctx.index.ids), bool, len(ctx.index.ids))
    return np.where(keep, scores, -np.inf)


def _fused(state: THIState, ctx: THIContext) -> np.ndarray:
    idx, cfg = ctx.index, ctx.config
    original = idx.scores(state["query"])
    user_mode = ctx.user is not None
    anchor = state.get("anchor")
    refined = state.get("current_query", state["query"]) != state["query"]
    if cfg.policy == "paper":
        if anchor is None:
            return original
        new = idx.scores(state["current_query"]) if refined else original.copy()
        new[idx.position[anchor]] = 1.0
        return cfg.lam * original + (1 - cfg.lam) * new
    if not user_mode and anchor is None:
        return original  # a failed anchor check never changes the ranking
    scores = original.copy()
    if refined:
        new = idx.scores(state["current_query"])
        if anchor is not None and not user_mode:
            new[idx.position[anchor]] = 1.0
        lam = cfg.lam_user if user_mode else cfg.lam_adaptive
        scores = lam * original + (1 - lam) * new
    elif anchor is not None and not user_mode:
        scores[idx.position[anchor]] = cfg.lam_adaptive * original[idx.position[anchor]] + (1 - cfg.lam_adaptive)
    if anchor is not None and not user_mode and cfg.anchor_image_weight > 0:
        # The accepted anchor is a photo of the person: its look pulls up the same person's other
        # photos (other cameras), which the caption alone ranks lower.
        scores = scores + cfg.anchor_image_weight * (idx.embeddings @ idx.embeddings[idx.position[anchor]])
    if user_mode and cfg.user_check == "answers":
        known = _known(state)
        for image_id, answers in (state.get("checked") or {}).items():
            scores[idx.position[image_id]] += cfg.agreement_weight * _agreement(cfg, answers, known).score
    for image_id, v in (state.get("verified") or {}).items():
        if v.get("match") is None:
            continue
        # move by the evidence: +w for a sure match, -w for a sure contradiction, ~0 when unsure
        p_match = float(v["confidence"]) if v["match"] else 1.0 - float(v["confidence"])
        weight = cfg.user_verify_weight if user_mode else cfg.verify_weight
        if v.get("elsewhere"):
            weight *= cfg.user_elsewhere_factor  # the person, but not the photo the user saw
        scores[idx.position[image_id]] += weight * (2.0 * p_match - 1.0)
    return scores


def _known(state: THIState) -> dict[str, str]:
    """Everything known about the target: the query's statements, then the answers."""
    return {**(state.get("stated") or {}), **(state.get("facts") or {})}


def _agreement(cfg: THIConfig, answers: dict[str, list], known: dict[str, str]) -> Agreement:
    # The photo's context (where, doing what, anyone nearby) singles out the photo the user saw;
    # the person's other photos differ there, so it counts less than the person's own facts.
    weights = {s: cfg.user_elsewhere_factor for s in SLOT_NAMES if SLOTS[s].scope == "image"}
    return agreement(answers, known, cfg.agreement_prior, cfg.agreement_floor, weights)


def _target_rank(scores: np.ndarray, ctx: THIContext) -> int | None:
    if ctx.target_pid is None:
        return None
    pids = np.asarray([m.get("pid", -1) for m in ctx.index.metadatas])
    hit = pids == ctx.target_pid
    if not hit.any():
        return None
    return int((scores > scores[hit].max()).sum()) + 1


# -------------------------------------------------------------------------------------------
# nodes


def retrieve(state: THIState, runtime: Runtime[THIContext]) -> dict:
    ctx = runtime.context
    query = state["query"]
    if not isinstance(query, str) or not query.strip():
        raise ValueError("the query is empty")
    scores = _masked(ctx.index.scores(query), ctx)
    ranking = _top(scores, ctx.index.ids, ctx.config.shortlist)
    if not ranking:
        raise ValueError("no gallery image matches the metadata filter")
    truncated = ctx.index.embedder.truncated_part(query)
    if truncated:
        log.warning("the query exceeds the %d-token budget; the encoder does not see: %r",
                    ctx.index.embedder.token_budget, truncated)
    return {"current_query": query, "description": query, "round": 0, "original_ranking": ranking,
            "ranking": ranking, "top1_similarity": ranking[0]["score"], "verified": {}, "checked": {}, "anchor": None,
            "facts": {}, "stated": parse(query).constraints, "asked": [], "rounds": [], "truncated": truncated,
            "finished_by_user": False, "pending": {}}


def _verifications(rounds: list[RoundRecord]) -> int:
    """Candidates inspected so far (what the verification budget counts)."""
    return sum(len(r["inspected"]) for r in rounds)


def _verifications_after_anchor(rounds: list[RoundRecord]) -> int:
    """Candidates inspected in the rounds after the one that found the anchor."""
    found = next((n for n, r in enumerate(rounds) if r["anchor"] is not None), len(rounds))
    return sum(len(r["inspected"]) for r in rounds[found + 1:])


def _anchor_budget(cfg: THIConfig) -> int:
    """Verifications the no-user adaptive policy may spend looking for an anchor."""
    return cfg.anchor_depth if cfg.anchor_search == "sequential" else cfg.verify_budget


def _verify(ctx: THIContext, image_id: str, rank: int, text: str) -> Inspection:
    try:
        v = ctx.mllm.verify(ctx.index.image(image_id), text)
        return {"id": image_id, "rank": rank, "match": bool(v.match), "confidence": round(float(v.confidence), 4),
                "reason": v.reason, "cached": bool(v.cached)}
    except MLLMError as e:
        return _skipped(image_id, rank, e)


def _skipped(image_id: str, rank: int, error: MLLMError) -> Inspection:
    """The trace's record of a candidate the MLLM could not judge (no verdict, no move)."""
    return {"id": image_id, "rank": rank, "match": None, "confidence": 0.0,
            "reason": f"skipped: {error.kind}: {error}", "cached": False}


def _person_description(state: THIState) -> str | None:
    """The query with the facts about the person only, or None when no fact is about the photo's
    context (where, doing what, anyone nearby)."""
    facts = state.get("facts") or {}
    if not any(SLOTS[s].scope == "image" for s in facts):
        return None
    return grammar_merge(state["query"], [Answer(s, v, 1.0, v) for s, v in facts.items() if SLOTS[s].scope != "image"])


def _check_with_questionnaire(state: THIState, ctx: THIContext, pending: dict) -> tuple[dict, str | None]:
    """With a user: the next unchecked candidates of the current ranking answer the whole
    questionnaire (one call each, once per query); every checked candidate is then scored against
    what is known, now and after later answers (``_fused``). Returns (checked, anchor): the anchor
    is the best-fitting checked candidate, for the trace."""
    cfg = ctx.config
    checked = dict(state.get("checked") or {})
    inspector = AdaptiveInspector(cfg.user_verify_per_round, cfg.user_verify_window)
    budget = max(0, cfg.user_verify_budget - _verifications(state["rounds"]))
    ranking_ids = [c["id"] for c in state["ranking"]]
    chosen = inspector.candidates(ranking_ids, checked)[:budget]
    ctx.mllm.prefetch([ctx.index.image(i) for i in chosen])
    known = _known(state)
    for image_id in chosen:
        rank = ranking_ids.index(image_id) + 1
        calls0 = ctx.mllm.stats.total_calls
        try:
            answers = ctx.mllm.ask(ctx.index.image(image_id), SLOT_NAMES)
        except MLLMError as e:
            pending["inspected"].append(_skipped(image_id, rank, e))
            pending["notes"].append(f"questions about {image_id} skipped ({e.kind}: {e})")
            continue
        checked[image_id] = {a.slot: [a.value, round(float(a.confidence), 4)] for a in answers}
        a = _agreement(cfg, checked[image_id], known)
        differ = ", ".join(f"{slot} ({checked[image_id][slot][0]}, not {known[slot]})" for slot in a.differ)
        pending["inspected"].append({
            "id": image_id, "rank": rank, "match": a.match, "confidence": round(a.confidence, 4),
            "reason": f"agrees on {len(a.agree)} of {len(a.agree) + len(a.differ)} facts it can tell"
                      + (f"; differs on {differ}" if differ else ""), "cached": ctx.mllm.stats.total_calls == calls0})
    fits = {i: _agreement(cfg, ans, known).score for i, ans in checked.items()}
    best = max(fits, key=fits.get, default=None)
    return checked, (best if best is not None and fits[best] > 0 else None)


def inspect(state: THIState, runtime: Runtime[THIContext]) -> dict:
    ctx, cfg = runtime.context, runtime.context.config
    round_no = state["round"] + 1
    pending: dict[str, Any] = {"round": round_no, "t0": time.perf_counter(), "calls0": ctx.mllm.stats.total_calls,
                               "query": state["current_query"], "inspected": [], "notes": [], "new_anchor": False}
    verified = dict(state["verified"])
    anchor = state["anchor"]
    if cfg.policy == "paper":
        inspector = PaperInspector(cfg.xi, cfg.depth)
        ids = [c["id"] for c in state["original_ranking"]]
        cand = inspector.candidate(ids, round_no)
        if cand is not None:
            ins = _verify(ctx, cand, round_no, state["query"])
            pending["inspected"].append(ins)
            earlier = [r["inspected"][0]["match"] is True for r in state["rounds"] if r["inspected"]]
            if ins["match"] is None:
                pending["notes"].append(f"verification of {cand} skipped ({ins['reason']})")
            elif inspector.accepts(round_no, ins["match"], state["top1_similarity"], earlier):
                anchor = cand
                pending["new_anchor"] = True
            verified[cand] = {"match": ins["match"], "confidence": ins["confidence"], "query": state["query"]}
    elif ctx.user is not None and cfg.user_check == "answers":
        checked, anchor = _check_with_questionnaire(state, ctx, pending)
        return {"round": round_no, "pending": pending, "checked": checked, "anchor": anchor}
    else:
        user_mode = ctx.user is not None
        inspector = AdaptiveInspector(cfg.user_verify_per_round if user_mode else cfg.verify_per_round,
                                      cfg.user_verify_window if user_mode else cfg.verify_window,
                                      cfg.min_yes_confidence, cfg.anchor_by)
        # with a user, check candidates against everything known, not only what fitted the text encoder
        text = (state.get("description") or state["current_query"]) if user_mode else state["query"]
        current = {i: v for i, v in verified.items() if v.get("query") == text}
        ranking_ids = [c["id"] for c in state["ranking"]]
        person_text = _person_description(state) if user_mode else None

        def check(image_id: str) -> Inspection:
            rank = ranking_ids.index(image_id) + 1
            ins = _verify(ctx, image_id, rank, text)
            if ins["match"] is False and person_text:
                # The same person photographed elsewhere is still the person: a "no" to the whole
                # description is asked again about the person alone (one more call).
                again = _verify(ctx, image_id, rank, person_text)
                if again["match"]:
                    ins = {**again, "elsewhere": True,
                           "reason": f"the person matches, the photo's context does not ({ins['reason']})"}
            pending["inspected"].append(ins)
            if ins["match"] is None:
                pending["notes"].append(f"verification of {image_id} skipped ({ins['reason']})")
            else:
                verified[image_id] = {"match": ins["match"], "confidence": ins["confidence"], "query": text,
                                      **({"elsewhere": True} if ins.get("elsewhere") else {})}
            return ins

        sequential = not user_mode and cfg.anchor_search == "sequential"
        if sequential and anchor is None:
            budget = max(0, _anchor_budget(cfg) - _verifications(state["rounds"]))
            chosen = inspector.search_order(ranking_ids, current, cfg.anchor_depth)[:budget]
            for n, image_id in enumerate(chosen):
                if n % cfg.verify_per_round == 0:  # read a few photos at once, not the whole depth
                    ctx.mllm.prefetch([ctx.index.image(i) for i in chosen[n: n + cfg.verify_per_round]])
                ins = check(image_id)
                if inspector.accepts(ins["match"], ins["confidence"]):
                    anchor = image_id
                    pending["new_anchor"] = True
                    break
        else:
            if sequential:  # the anchor is known: a few more candidates, to re-rank them
                budget = max(0, cfg.verify_after_anchor - _verifications_after_anchor(state["rounds"]))
            else:
                total = cfg.user_verify_budget if user_mode else cfg.verify_budget
                budget = max(0, total - _verifications(state["rounds"]))
            chosen = inspector.candidates(ranking_ids, current)[:budget]
            ctx.mllm.prefetch([ctx.index.image(i) for i in chosen])
            for image_id in chosen:
                check(image_id)
            if anchor is None:  # batch search, or a user: the anchor is picked among this round's verdicts
                current = {i: v for i, v in verified.items() if v.get("query") == text}
                anchor = inspector.anchor(ranking_ids, current)
                pending["new_anchor"] = anchor is not None
    return {"round": round_no, "pending": pending, "verified": verified, "anchor": anchor}


def _choose_questions(state: THIState, ctx: THIContext) -> list[str]:
    cfg = ctx.config
    if cfg.policy == "paper":
        return paper_questions() if state["pending"].get("new_anchor") else []
    if ctx.user is None:
        # Without a user every answer describes the anchor: ask once, when it is found.
        if not state["pending"].get("new_anchor"):
            return []
        per_round = cfg.anchor_questions
    else:
        per_round = cfg.questions_per_round
    known = _known(state)
    top_ids = [c["id"] for c in state["ranking"][: cfg.k]]
    checked = state.get("checked") or {}
    top_answers = [checked[i] for i in top_ids if i in checked]
    if cfg.questions_from == "answers" and len(top_answers) >= 2:
        # the top candidates have answered the questionnaire: ask where their answers differ
        disagreement = lambda slots: answer_disagreement(top_answers, list(slots))  # noqa: E731
    else:
        disagreement = lambda slots: ctx.index.disagreement(top_ids, list(slots))  # noqa: E731
    questioner = AdaptiveQuestioner(disagreement, per_round, include_context=ctx.user is not None and cfg.ask_context)
    return with_items(questioner.choose(known, state["asked"]))


def ask(state: THIState, runtime: Runtime[THIContext]) -> dict:
    ctx = runtime.context
    pending = dict(state["pending"])
    slots = _choose_questions(state, ctx)
    pending["questions"] = slots
    answers: list[Answer] = []
    finished = False
    if slots:
        if isinstance(ctx.user, HumanUser):
            top = [{"rank": n + 1, **c, "path": str(ctx.index.image(c["id"]).path)}
                   for n, c in enumerate(state["ranking"][: ctx.config.k])]
            reply = interrupt(question_payload(pending["round"], state["current_query"], slots, top))
            answers, finished = read_human_answers(slots, reply)
            source = "human"
        elif ctx.user is not None:
            try:
                answers = ctx.user.answer(slots)
            except MLLMError as e:
                pending["notes"].append(f"the simulated user could not answer ({e.kind}: {e})")
            source = "simulated user"
        else:
            anchor = state["anchor"]
            try:
                answers = ctx.mllm.ask(ctx.index.image(anchor), slots)
            except MLLMError as e:
                pending["notes"].append(f"questions about {anchor} skipped ({e.kind}: {e})")
            source = f"mllm:{ctx.mllm.name} on {anchor}"
    by_slot = {a.slot: a for a in answers}
    qa: list[QA] = [{"slot": s, "question": SLOTS[s].question, "value": by_slot[s].value if s in by_slot else None,
                     "source": source} for s in slots]
    facts = dict(state["facts"])
    new = []
    for a in answers:
        if a.value is not None and a.slot not in state["stated"] and facts.get(a.slot) != a.value:
            facts[a.slot] = a.value
            new.append(a.slot)
    pending["answers"] = qa
    pending["new_facts"] = new
    return {"pending": pending, "facts": facts, "asked": list(state["asked"]) + [s for s in slots if s not in state["asked"]],
            "finished_by_user": finished}


def rewrite(state: THIState, runtime: Runtime[THIContext]) -> dict:
    ctx = runtime.context
    pending = dict(state["pending"])
    if not pending.get("new_facts"):
        pending["rewritten_query"] = None
        return {"pending": pending}
    emb = ctx.index.embedder
    rewriter = Rewriter(ctx.mllm.merge, emb.count_tokens, emb.token_budget, emb.truncated_part)
    facts = [Answer(s, v, 1.0, v) for s, v in state["facts"].items()]
    try:
        result = rewriter(state["query"], facts)
    except MLLMError as e:
        pending["notes"].append(f"merge skipped ({e.kind}: {e}); the query is unchanged")
        pending["rewritten_query"] = None
        return {"pending": pending}
    if result.truncated:
        pending["notes"].append(f"the query alone fills the token budget; not added: facts; unseen words: {result.truncated!r}")
    dropped = [s for s in state["facts"] if s not in result.added and s not in state["stated"]]
    description = result.text
    if dropped:
        pending["notes"].append(f"facts left out to fit {emb.token_budget} tokens: {', '.join(dropped)}; "
                                "verification still checks them")
        # The token budget is the text encoder's, not the MLLM's: verification gets every fact.
        description = grammar_merge(state["query"], facts)
    pending["rewritten_query"] = result.text if result.text != state["current_query"] else None
    return {"pending": pending, "current_query": result.text, "description": description}


def re_retrieve(state: THIState, runtime: Runtime[THIContext]) -> dict:
    ctx = runtime.context
    scores = final_scores(state, ctx)
    pending = dict(state["pending"])
    pending["target_rank"] = _target_rank(scores, ctx)
    return {"ranking": _top(scores, ctx.index.ids, ctx.config.shortlist), "pending": pending}


def converge(state: THIState, runtime: Runtime[THIContext]) -> dict:
    ctx, cfg = runtime.context, runtime.context.config
    p = state["pending"]
    rounds = list(state["rounds"])
    before = rounds[-1]["topk"] if rounds else state["original_ranking"][: cfg.k]
    topk = state["ranking"][: cfg.k]
    record: RoundRecord = {
        "round": p["round"], "query": p["query"], "inspected": p["inspected"], "anchor": state["anchor"],
        "questions": p.get("questions", []), "answers": p.get("answers", []),
        "rewritten_query": p.get("rewritten_query"), "topk": topk, "target_rank": p.get("target_rank"),
        "mllm_calls": ctx.mllm.stats.total_calls - p["calls0"],
        "ms": round((time.perf_counter() - p["t0"]) * 1000, 2), "notes": p["notes"]}
    rounds.append(record)
    stop = None
    if cfg.policy == "paper":
        earlier = [r["inspected"][0]["match"] is True for r in rounds if r["inspected"]]
        if state["anchor"] is not None:
            stop = REFINED_ONCE
        elif not PaperInspector(cfg.xi, cfg.depth).can_still_accept(p["round"], state["top1_similarity"], earlier):
            stop = GATE_CLOSED if p["round"] < min(cfg.depth, cfg.rounds) else NO_ANCHOR
    else:
        same_top = [c["id"] for c in topk] == [c["id"] for c in before]
        learned = bool(p.get("new_facts")) or bool(p["inspected"])
        if state.get("finished_by_user"):
            stop = USER_FINISHED
        elif state["anchor"] is None and ctx.user is None:
            spent = _verifications(rounds) >= _anchor_budget(cfg)  # nothing left for another round
            stop = NO_ANCHOR if p["round"] >= cfg.rounds or not p["inspected"] or spent else None
        elif not learned:
            stop = NOTHING_NEW
        elif same_top and not p.get("new_facts") and p["round"] > 1:
            stop = CONVERGED
    if stop is None and p["round"] >= cfg.rounds:
        stop = NO_ANCHOR if state["anchor"] is None and ctx.user is None else ROUND_LIMIT
    out: dict = {"rounds": rounds, "pending": {}}
    if stop:
        out["stopped_because"] = stop
    return out


def _after_inspect(state: THIState, runtime: Runtime[THIContext]) -> str:
    cfg = runtime.context.config
    if cfg.policy == "paper" and not state["pending"].get("new_anchor"):
        return "converge"
    if cfg.policy == "adaptive" and state["anchor"] is None and runtime.context.user is None:
        return "converge"
    return "ask"


def _after_converge(state: THIState) -> str:
    return END if state.get("stopped_because") else "inspect"


def build_graph(checkpointer=None):
    """The compiled THI graph (pass a checkpointer for interactive mode or resumable dialogues)."""
    g = StateGraph(THIState, context_schema=THIContext)
    g.add_node("retrieve", retrieve)
    g.add_node("inspect", inspect)
    g.add_node("ask", ask)
    g.add_node("rewrite", rewrite)
    g.add_node("re_retrieve", re_retrieve)
    g.add_node("converge", converge)
    g.add_edge(START, "retrieve")
    g.add_edge("retrieve", "inspect")
    g.add_conditional_edges("inspect", _after_inspect, ["ask", "converge"])
    g.add_edge("ask", "rewrite")
    g.add_edge("rewrite", "re_retrieve")
    g.add_edge("re_retrieve", "converge")
    g.add_conditional_edges("converge", _after_converge, ["inspect", END])
    return g.compile(checkpointer=checkpointer)


def recursion_limit(cfg: THIConfig) -> int:
    """Enough LangGraph steps for ``cfg.rounds`` rounds (the graph stops itself before this)."""
    return 6 * cfg.rounds + 10


def run(query: str, ctx: THIContext, graph=None) -> THIState:
    """Run THI to the end (no interrupts) and return the final state."""
    graph = graph or build_graph()
    return graph.invoke({"query": query}, context=ctx, config={"recursion_limit": recursion_limit(ctx.config)})


if __name__ == "__main__":
    import sys

    from graphs.cli import main

    sys.exit(main())
