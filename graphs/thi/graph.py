"""The THI graph: nodes wired, every decision delegated to the run's policy.

retrieve -> inspect -> (ask -> rewrite -> re_retrieve ->) converge -> (inspect | END)

The nodes read the run context (``graphs.config.THIContext``, plain values), resolve it to live
objects through ``graphs.server.resolve`` (cached per process) and ask the policy
(:func:`policy_for`) what to do. They keep the round's bookkeeping (:func:`open_round`,
:func:`close_round`) and the state's plain values; the policies never touch LangGraph.

The graph has its own round limit (``THIConfig.rounds``); it never relies on LangGraph's recursion
limit.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from typing import Any

import numpy as np
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from agents.rewriter import Rewriter
from tools.attributes import SLOTS
from tools.mllm.base import Answer, MLLMError, grammar_merge
from tools.index import RowFilter
from tools.mllm.parser import parse

from ..config import THIConfig, THIContext
from ..server import Live, resolve
from ..state import Candidate, QA, RoundRecord, THIState
from .adaptive import AdaptivePolicy
from .paper import PaperPolicy
from . import scoring
from .policy import Policy, Route, answerer_for
from .scoring import Fusion, Term
from .with_user import WithUserPolicy

log = logging.getLogger(__name__)


@lru_cache(maxsize=256)  # a run asks at every node
def policy_for(live: Live) -> Policy:
    """The policy a run follows: the paper's (whoever answers), ours without a user, or ours with one."""
    cfg, answerer = live.config, answerer_for(live.user)
    if cfg.policy == "paper":
        return PaperPolicy(cfg, answerer, has_user=live.user is not None)
    if live.user is None:
        return AdaptivePolicy(cfg, answerer)
    return WithUserPolicy(cfg, answerer)


def _run(runtime: Runtime[THIContext]) -> tuple[Live, Policy]:
    live = resolve(runtime.context)
    return live, policy_for(live)


# -------------------------------------------------------------------------------------------
# scoring: each query's full-gallery scores are computed once (the index keeps them); a round
# ranks a shortlist of them exactly (see scoring.py)


def _filter(live: Live) -> RowFilter | None:
    return live.index.row_filter(live.allowed)


def _candidates(rows: np.ndarray, scores: np.ndarray, ids) -> list[Candidate]:
    return [{"id": ids[int(r)], "score": round(float(s), 6)} for r, s in zip(rows, scores)]


def _ranking(fusion: Fusion, live: Live) -> list[Candidate]:
    rows, scores = scoring.top(fusion, live.index, live.config.shortlist, _filter(live))
    return _candidates(rows, scores, live.index.ids)


def final_scores(state: THIState, ctx: THIContext) -> np.ndarray:
    """Scores (float [N], the gallery index's order) of every gallery image after the rounds
    recorded in ``state``, recomputed from its plain values (so a checkpointed dialogue and a
    benchmark get the same numbers). Images outside the context's metadata filter score -inf."""
    live = resolve(ctx)
    return scoring.full(policy_for(live).fusion(state, live), live.index, _filter(live))


# -------------------------------------------------------------------------------------------
# the round's bookkeeping


def open_round(state: THIState, live: Live) -> dict[str, Any]:
    """The record of the round that starts now (``state["pending"]``; see ``policy.py``)."""
    return {"round": state["round"] + 1, "t0": time.perf_counter(), "calls0": live.mllm.stats.total_calls,
            "query": state["current_query"], "inspected": [], "notes": [], "new_anchor": False}


def close_round(state: THIState, live: Live) -> RoundRecord:
    """The trace's record of the round that ends now."""
    p = state["pending"]
    return {
        "round": p["round"], "query": p["query"], "inspected": p["inspected"], "anchor": state["anchor"],
        "questions": p.get("questions", []), "answers": p.get("answers", []),
        "rewritten_query": p.get("rewritten_query"), "topk": state["ranking"][: live.config.k],
        "target_rank": p.get("target_rank"), "mllm_calls": live.mllm.stats.total_calls - p["calls0"],
        "ms": round((time.perf_counter() - p["t0"]) * 1000, 2), "notes": p["notes"]}


# -------------------------------------------------------------------------------------------
# nodes


def retrieve(state: THIState, runtime: Runtime[THIContext]) -> dict:
    live = resolve(runtime.context)
    query = state["query"]
    if not isinstance(query, str) or not query.strip():
        raise ValueError("the query is empty")
    ranking = _ranking(Fusion([Term(1.0, ("text", query))]), live)
    if not ranking:
        raise ValueError("no gallery image matches the metadata filter")
    embedder = live.index.embedder
    truncated = embedder.truncated_part(query)
    if truncated:
        log.warning("the query exceeds the %d-token budget; the encoder does not see: %r",
                    embedder.token_budget, truncated)
    return {"current_query": query, "description": query, "round": 0, "original_ranking": ranking,
            "ranking": ranking, "top1_similarity": ranking[0]["score"], "verified": {}, "checked": {}, "anchor": None,
            "facts": {}, "stated": parse(query).constraints, "asked": [], "rounds": [], "truncated": truncated,
            "finished_by_user": False, "pending": {}}


def inspect(state: THIState, runtime: Runtime[THIContext]) -> dict:
    live, policy = _run(runtime)
    pending = open_round(state, live)
    update = policy.inspect(state, live, pending)
    return {"round": pending["round"], "pending": pending, **update}


def ask(state: THIState, runtime: Runtime[THIContext]) -> dict:
    live, policy = _run(runtime)
    pending = dict(state["pending"])
    slots = policy.questions(state, live)
    pending["questions"] = slots
    answers: list[Answer] = []
    finished, source = False, ""
    if slots:
        answers, finished, source = policy.answerer.answer(state, slots, live, pending)
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
    live = resolve(runtime.context)
    pending = dict(state["pending"])
    if not pending.get("new_facts"):
        pending["rewritten_query"] = None
        return {"pending": pending}
    emb = live.index.embedder
    rewriter = Rewriter(live.mllm.merge, emb.count_tokens, emb.token_budget, emb.truncated_part)
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
    live, policy = _run(runtime)
    fusion = policy.fusion(state, live)
    pending = dict(state["pending"])
    pending["target_rank"] = scoring.target_rank(fusion, live.index, live.target_pid, _filter(live))
    return {"ranking": _ranking(fusion, live), "pending": pending}


def converge(state: THIState, runtime: Runtime[THIContext]) -> dict:
    live, policy = _run(runtime)
    rounds = list(state["rounds"]) + [close_round(state, live)]
    stop = policy.stop(state, rounds, state["pending"])
    out: dict = {"rounds": rounds, "pending": {}}
    if stop:
        out["stopped_because"] = stop
    return out


def _after_inspect(state: THIState, runtime: Runtime[THIContext]) -> Route:
    return _run(runtime)[1].after_inspect(state)


def _after_converge(state: THIState) -> str:
    return END if state.get("stopped_because") else "inspect"


def build_graph(checkpointer=None):
    """The compiled THI graph, named "thi" (pass a checkpointer for interactive mode or resumable
    dialogues). Its runtime context is a :class:`graphs.config.THIContext`."""
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
    return g.compile(checkpointer=checkpointer, name="thi")


def recursion_limit(cfg: THIConfig) -> int:
    """Enough LangGraph steps for ``cfg.rounds`` rounds (the graph stops itself before this)."""
    return 6 * cfg.rounds + 10


def run(query: str, ctx: THIContext, graph=None) -> THIState:
    """Run THI to the end (no interrupts) and return the final state."""
    graph = graph or build_graph()
    return graph.invoke({"query": query}, context=ctx, config={"recursion_limit": recursion_limit(ctx.thi_config())})
