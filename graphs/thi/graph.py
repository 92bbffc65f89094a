"""The THI graph: nodes wired, every decision delegated to the run's policy.

retrieve -> (inspect -> (ask -> rewrite -> re_retrieve ->) converge -> (inspect | END) | END)

The nodes read the run context (``graphs.config.THIContext``, plain values), resolve it to live
objects through ``graphs.server.resolve`` (cached per process) and ask the policy
(:func:`policy_for`) what to do. They keep the round's bookkeeping (:func:`open_round`,
:func:`close_round`) and the state's plain values; the policies never touch LangGraph.

The graph has its own round limit (``THIConfig.rounds``); it never relies on LangGraph's recursion
limit.

Every node also keeps the dialogue's accounting in the state (:class:`graphs.state.Usage`, and per
round ``mllm_calls``, ``mllm_failures``, ``mllm_ms``, ``ms``, ``wait_ms``): the MLLM calls counted
are the ones the node made (``tools.mllm.base.metering``), so they are right across resumes,
processes and dialogues sharing a backend, and a person's time to answer is ``wait_ms``, not
``ms``. With ``mllm_dialogue_timeout`` in the context, each node runs under the dialogue deadline
(the timeout less the work already spent, whatever process did it); a round whose MLLM calls ran
out of time ends the dialogue (:data:`DEADLINE_SPENT`) with the ranking it has.

Streaming: node updates carry only what changed (the state's reducers); with
``stream_mode="custom"`` the nodes also send one event per verification (``{"event":
"verification", "round", "id", "rank", "match", "confidence", "reason", ...}``), per round's
questions (``"questions"``) and answers (``"answers"``), and per finished round (``"round"``: the
anchor, the top-k, the rewritten query, the cost, the stop reason). The ``messages`` channel gets
the query and one summary per round, for chat UIs. In a LangChain run tree each node opens a
child run ``thi.<node>`` tagged and described with the round, policy, MLLM backend and model;
the MLLM, embedder and gallery calls it makes are its children.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import fields, is_dataclass
from functools import lru_cache
from typing import Any, Callable

import numpy as np
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from agents.rewriter import Rewriter
from tools.attributes import SLOTS
from tools.index import RowFilter
from tools.mllm.base import Answer, Deadline, MLLMError, dialogue_deadline, grammar_merge, metering
from tools.mllm.parser import ParsedQuery, parse
from tools.tracing import child_run

from ..config import THIConfig, THIContext
from ..server import Live, resolve
from ..state import QA, Candidate, RoundRecord, THIInput, THIOutput, THIState, Usage
from .adaptive import AdaptivePolicy
from .paper import PaperPolicy
from . import scoring
from .policy import HumanAnswerer, Policy, Route, answerer_for
from .scoring import Fusion, Term
from .with_user import WithUserPolicy

log = logging.getLogger(__name__)


#: Stop reason when the dialogue's MLLM time ran out (``mllm_dialogue_timeout``, or a deadline the
#: caller set with ``tools.mllm.base.dialogue_deadline``).
DEADLINE_SPENT = "MLLM time spent: the dialogue's deadline passed; the ranking so far is kept"


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


def _wall_clock() -> float:
    """Seconds since the epoch: a person's wait spans processes, so it is measured by the wall clock."""
    return time.time()


_NO_COST = {"mllm_calls": 0, "mllm_failures": 0, "failures_by_kind": {}, "mllm_ms": 0.0, "ms": 0.0, "wait_ms": 0.0}
_NO_USAGE: Usage = {"mllm_calls": 0, "mllm_failures": 0, "mllm_ms": 0.0, "ms": 0.0, "wait_ms": 0.0}


def open_round(state: THIState, live: Live) -> dict[str, Any]:
    """The record of the round that starts now (``state["pending"]``; see ``policy.py``). Its
    ``cost`` sums what the round's nodes spent (MLLM calls, failures, milliseconds, a person's
    wait)."""
    return {"round": state["round"] + 1, "query": state["current_query"], "inspected": [], "notes": [],
            "new_anchor": False, "cost": dict(_NO_COST)}


def close_round(state: THIState, live: Live) -> RoundRecord:
    """The trace's record of the round that ends now."""
    p = state["pending"]
    cost = p.get("cost") or _NO_COST
    record: RoundRecord = {
        "round": p["round"], "query": p["query"], "inspected": p["inspected"], "anchor": state["anchor"],
        "questions": p.get("questions", []), "answers": p.get("answers", []),
        "rewritten_query": p.get("rewritten_query"), "topk": state["ranking"][: live.config.k],
        "target_rank": p.get("target_rank"), "mllm_calls": cost["mllm_calls"], "mllm_failures": cost["mllm_failures"],
        "mllm_ms": round(cost["mllm_ms"], 2), "ms": round(cost["ms"], 2), "notes": p["notes"]}
    if cost["wait_ms"]:
        record["wait_ms"] = round(cost["wait_ms"], 2)
    return record


def _writer() -> Callable[[Any], None]:
    """The node's custom stream writer (a no-op outside a graph run)."""
    try:
        return get_stream_writer()
    except RuntimeError:
        return lambda _event: None


class _Emitting(list):
    """A list that reports every appended item (the round's checks, as the policy makes them)."""

    def __init__(self, emit: Callable[[Any], None]):
        super().__init__()
        self._emit = emit

    def append(self, item: Any) -> None:
        super().append(item)
        self._emit(item)

    def extend(self, items: Any) -> None:
        for item in items:
            self.append(item)

    def __iadd__(self, items: Any) -> "_Emitting":
        self.extend(items)
        return self


class _Step:
    """One node's run: its live objects and policy, a meter of the MLLM calls it makes, its own
    time, the dialogue deadline, and its child run in the trace."""

    def __init__(self, node: str, state: THIState, runtime: Runtime[THIContext]):
        self.node, self.state, self.ctx = node, state, runtime.context
        self.live = resolve(runtime.context)
        self.policy = policy_for(self.live)
        self.round = 0 if node == "retrieve" else state.get("round", 0) + (1 if node == "inspect" else 0)
        self.emit = _writer()

    def __enter__(self) -> "_Step":
        live, cfg = self.live, self.live.config
        self._stack = ExitStack()
        self.meter = self._stack.enter_context(metering())
        self._stack.enter_context(dialogue_deadline(self.deadline()))
        model = getattr(live.mllm, "model", None)
        meta = {"thi_round": self.round, "thi_policy": self.policy.name, "mllm_backend": live.mllm.name,
                **({"mllm_model": model} if isinstance(model, str) else {}),
                "retrieval_model": live.index.embedder.name}
        self.span = self._stack.enter_context(child_run(
            f"thi.{self.node}", {"round": self.round, "query": self.state.get("current_query") or self.state.get("query")},
            tags=("thi", f"round:{self.round}", f"policy:{cfg.policy}", f"mllm:{live.mllm.name}"), metadata=meta))
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.__exit__(*exc)

    def deadline(self) -> Deadline | None:
        """The dialogue's deadline for this node: the timeout less the work already spent."""
        timeout = getattr(self.ctx, "mllm_dialogue_timeout", None) if not isinstance(self.ctx, Mapping) \
            else self.ctx.get("mllm_dialogue_timeout")
        if timeout is None:
            return None
        spent = (self.state.get("usage") or _NO_USAGE)["ms"] / 1000 if self.node != "retrieve" else 0.0
        return Deadline(max(0.0, timeout - spent), "the dialogue")

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000

    def account(self, pending: dict, wait_ms: float = 0.0) -> tuple[dict, Usage]:
        """``pending`` with this node's cost added to the round's, and the dialogue's new totals."""
        m, ms = self.meter.snapshot(), self.elapsed_ms()
        cost = dict(pending.get("cost") or _NO_COST)
        kinds = dict(cost["failures_by_kind"])
        for kind, n in m["failures_by_kind"].items():
            kinds[kind] = kinds.get(kind, 0) + n
        cost.update(mllm_calls=cost["mllm_calls"] + m["calls"], mllm_failures=cost["mllm_failures"] + m["failures"],
                    failures_by_kind=kinds, mllm_ms=cost["mllm_ms"] + m["ms"], ms=cost["ms"] + ms,
                    wait_ms=cost["wait_ms"] + wait_ms)
        usage = dict(self.state.get("usage") or _NO_USAGE) if self.node != "retrieve" else dict(_NO_USAGE)
        usage.update(mllm_calls=usage["mllm_calls"] + m["calls"], mllm_failures=usage["mllm_failures"] + m["failures"],
                     mllm_ms=round(usage["mllm_ms"] + m["ms"], 2), ms=round(usage["ms"] + ms, 2),
                     wait_ms=round(usage["wait_ms"] + wait_ms, 2))
        return {**pending, "cost": cost, "t_wall": _wall_clock()}, usage  # type: ignore[return-value]


def _changed(old: Mapping | None, new: Mapping) -> dict:
    """The keys of ``new`` whose values differ from ``old``'s (a merged channel's delta)."""
    old = old or {}
    return {k: v for k, v in new.items() if k not in old or old[k] != v}


def _fresh(pending: Mapping) -> dict:
    """A copy of the round's scratch whose lists a node may append to (the state's stay as they are)."""
    out = dict(pending)
    for key in ("notes", "inspected"):
        if key in out:
            out[key] = list(out[key])
    return out


def round_summary(record: RoundRecord, stopped_because: str | None = None, shown: int = 5) -> str:
    """One round in a few sentences, for a chat UI."""
    parts = [f"Round {record['round']}:"]
    checks = record["inspected"]
    if checks:
        fit = sum(1 for i in checks if i["match"])
        parts.append(f"checked {len(checks)} candidate{'s' * (len(checks) != 1)}, {fit} fit;")
    parts.append(f"anchor {record['anchor']}." if record["anchor"] else "no anchor.")
    said = [f"{a['question']} {a['value'] if a['value'] is not None else 'cannot tell'}" for a in record["answers"]]
    if said:
        parts.append("Asked: " + "; ".join(said) + ".")
    if record["rewritten_query"]:
        parts.append(f"Query now: {record['rewritten_query']!r}.")
    parts.append("Top: " + ", ".join(f"{c['id']} ({c['score']:.3f})" for c in record["topk"][:shown]) + ".")
    if stopped_because:
        parts.append(f"Stopped: {stopped_because}.")
    return " ".join(parts)


# -------------------------------------------------------------------------------------------
# nodes


def retrieve(state: THIState, runtime: Runtime[THIContext]) -> dict:
    query = state.get("query")
    if not isinstance(query, str) or not query.strip():
        raise ValueError("the query is empty")
    with _Step("retrieve", state, runtime) as step:
        live = step.live
        ranking = _ranking(Fusion([Term(1.0, ("text", query))]), live)
        if not ranking:
            raise ValueError("no gallery image matches the metadata filter")
        embedder = live.index.embedder
        truncated = embedder.truncated_part(query)
        if truncated:
            log.warning("the query exceeds the %d-token budget; the encoder does not see: %r",
                        embedder.token_budget, truncated)
        reading = parse(query)
        unreadable = None if live.user is not None else unreadable_reason(reading, live.mllm)
        if unreadable:
            log.info("%s", unreadable)
        _, usage = step.account({})
    messages: list = [HumanMessage(content=query)]
    if unreadable:
        messages.append(AIMessage(content=f"Stopped: {unreadable}.", name="thi"))
    # A new query starts a fresh dialogue, whatever the thread held before: every value of the last
    # one is replaced or emptied (None empties a merged or appended channel).
    return {"current_query": query, "description": query, "round": 0, "original_ranking": ranking,
            "ranking": ranking, "top1_similarity": ranking[0]["score"], "verified": None, "checked": None,
            "anchor": None, "facts": None, "stated": reading.constraints, "asked": None, "rounds": None,
            "truncated": truncated, "finished_by_user": False, "pending": None, "stopped_because": unreadable,
            "usage": usage, "messages": messages, "context": _context_values(runtime.context)}


def unreadable_reason(reading: ParsedQuery, mllm: Any) -> str | None:
    """Why THI, without a user, does not question the MLLM about a description, or None when it
    does: a text with no words, or not in English (prompts, questions and rewritten queries are
    English), for every backend; a text that names no attribute the parser knows, for backends that
    understand a description only through the parser (``MLLM.parses_descriptions``: they could
    check nothing). THI then keeps the plain retrieval ranking, with no anchor and no added facts.
    With a user (a person or a simulated one) the dialogue goes on: the answers carry the facts."""
    if reading.readable:
        return None
    if reading.words == 0 or reading.english_words < 0.5 * reading.words or getattr(mllm, "parses_descriptions", False):
        return f"{reading.problem}: THI asks nothing and keeps the original ranking"
    return None


def _context_values(ctx: Any) -> dict:
    """The run context as plain values (kept in the state, so a dialogue resumes with its settings)."""
    if isinstance(ctx, Mapping):
        return dict(ctx)
    return {f.name: getattr(ctx, f.name) for f in fields(ctx)} if is_dataclass(ctx) else {}


def inspect(state: THIState, runtime: Runtime[THIContext]) -> dict:
    with _Step("inspect", state, runtime) as step:
        live, policy = step.live, step.policy
        pending = open_round(state, live)
        round_no = pending["round"]
        pending["inspected"] = _Emitting(lambda ins: step.emit({"event": "verification", "round": round_no, **ins}))
        update = policy.inspect(state, live, pending)
        inspected = []
        for ins in pending["inspected"]:
            sent = live.mllm.image_sent(ins["id"])
            inspected.append({**ins, "image": sent} if sent else dict(ins))
        pending["inspected"] = inspected
        pending, usage = step.account(pending)
    for key in ("verified", "checked"):  # merged channels: send what changed
        if key in update:
            update[key] = _changed(state.get(key), update[key])
    return {"round": round_no, "pending": pending, "usage": usage, **update}


def ask(state: THIState, runtime: Runtime[THIContext]) -> dict:
    with _Step("ask", state, runtime) as step:
        live, policy = step.live, step.policy
        pending = _fresh(state["pending"])
        slots = policy.questions(state, live)
        pending["questions"] = slots
        answers: list[Answer] = []
        finished, source, wait_ms = False, "", 0.0
        if slots:
            human = isinstance(policy.answerer, HumanAnswerer)
            if not human:
                step.emit({"event": "questions", "round": pending["round"],
                           "questions": [{"slot": s, "question": SLOTS[s].question} for s in slots]})
            answers, finished, source = policy.answerer.answer(state, slots, live, pending)
            if human:  # the time from the questions to the answers, less this run of the node
                now = _wall_clock()
                wait_ms = max(0.0, (now - state["pending"].get("t_wall", now)) * 1000 - step.elapsed_ms())
        by_slot = {a.slot: a for a in answers}
        qa: list[QA] = []
        for s in slots:
            a = by_slot.get(s)
            record: QA = {"slot": s, "question": (a.question if a is not None and a.question else SLOTS[s].question),
                          "value": a.value if a is not None else None, "source": source}
            if a is not None and a.text:
                record["text"] = a.text
            qa.append(record)
        new = {}
        for a in answers:
            if a.value is not None and a.slot not in state["stated"] and state["facts"].get(a.slot) != a.value \
                    and new.get(a.slot) != a.value:
                new[a.slot] = a.value
        pending["answers"] = qa
        pending["new_facts"] = list(new)
        if slots:
            step.emit({"event": "answers", "round": pending["round"], "answers": qa, "finished": finished})
        pending, usage = step.account(pending, wait_ms)
    asked = [s for s in slots if s not in state["asked"]]
    return {"pending": _changed(state["pending"], pending), "facts": new, "asked": asked,
            "finished_by_user": finished, "usage": usage}


def _dialogue_answers(state: THIState) -> list[Answer]:
    """Every answer of the dialogue so far, with its text and question (the latest per slot)."""
    latest: dict[str, Answer] = {}
    for qa in [a for r in state["rounds"] for a in r["answers"]] + list(state["pending"].get("answers", [])):
        if qa["value"] is not None or qa.get("text"):
            latest[qa["slot"]] = Answer(qa["slot"], qa["value"], 1.0, qa.get("text", ""), qa["question"])
    return list(latest.values())


def _merge_unchecked(state: THIState, live: Live, pending: dict) -> dict:
    """The protocol's own merge (ICL's: the MLLM rewrites the query from the answers' texts) used as
    the new query as it is: not checked to keep the query's words, since the protocol says so."""
    emb = live.index.embedder
    said = [a for a in _dialogue_answers(state) if a.text or a.value is not None]
    if not any(qa.get("text") or qa["value"] is not None for qa in pending.get("answers", [])):
        pending["rewritten_query"] = None
        return {"pending": pending}
    try:
        merged = live.mllm.merge(state["query"], said, emb.token_budget, emb.count_tokens)
    except MLLMError as e:
        pending["notes"].append(f"merge skipped ({e.kind}: {e}); the query is unchanged")
        pending["rewritten_query"] = None
        return {"pending": pending}
    pending["notes"].append(f"the {live.mllm.protocol.name} protocol's merge is the new query, unchecked")
    unseen = emb.truncated_part(merged)
    if unseen:
        pending["notes"].append(f"the merged query exceeds the {emb.token_budget}-token budget; the text encoder "
                                f"does not see: {unseen!r}")
    pending["rewritten_query"] = merged if merged != state["current_query"] else None
    return {"pending": pending, "current_query": merged, "description": merged}


def rewrite(state: THIState, runtime: Runtime[THIContext]) -> dict:
    with _Step("rewrite", state, runtime) as step:
        live = step.live
        pending = _fresh(state["pending"])
        out = _rewrite(state, live, pending)
        out["pending"], out["usage"] = step.account(out["pending"])
    out["pending"] = _changed(state["pending"], out["pending"])
    return out


def _rewrite(state: THIState, live: Live, pending: dict) -> dict:
    protocol = getattr(live.mllm, "protocol", None)
    if protocol is not None and not protocol.merge.checked:
        return _merge_unchecked(state, live, pending)
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
    with _Step("re_retrieve", state, runtime) as step:
        live, policy = step.live, step.policy
        fusion = policy.fusion(state, live)
        pending = _fresh(state["pending"])
        pending["target_rank"] = scoring.target_rank(fusion, live.index, live.target_pid, _filter(live))
        ranking = _ranking(fusion, live)
        pending, usage = step.account(pending)
    return {"ranking": ranking, "pending": _changed(state["pending"], pending), "usage": usage}


def _deadline_passed(state: THIState, ctx: Any, pending: dict, usage: Usage) -> bool:
    """Whether the round's MLLM calls ran out of time, or the dialogue's time is spent."""
    if (pending.get("cost") or _NO_COST)["failures_by_kind"].get("deadline"):
        return True
    timeout = ctx.get("mllm_dialogue_timeout") if isinstance(ctx, Mapping) else getattr(ctx, "mllm_dialogue_timeout", None)
    return timeout is not None and usage["ms"] >= timeout * 1000


def converge(state: THIState, runtime: Runtime[THIContext]) -> dict:
    with _Step("converge", state, runtime) as step:
        live, policy = step.live, step.policy
        pending, usage = step.account(_fresh(state["pending"]))
        record = close_round({**state, "pending": pending}, live)  # type: ignore[typeddict-item]
        rounds = list(state["rounds"]) + [record]
        stop = policy.stop(state, rounds, pending)
        if _deadline_passed(state, runtime.context, pending, usage):
            stop = DEADLINE_SPENT
        step.emit({"event": "round", **record, "stopped_because": stop})
    out: dict = {"rounds": [record], "pending": None, "usage": usage,
                 "messages": [AIMessage(content=round_summary(record, stop), name="thi")]}
    if stop:
        out["stopped_because"] = stop
    return out


def _after_inspect(state: THIState, runtime: Runtime[THIContext]) -> Route:
    return _run(runtime)[1].after_inspect(state)


def _after_retrieve(state: THIState) -> str:
    return END if state.get("stopped_because") else "inspect"  # a description THI cannot read


def _after_converge(state: THIState) -> str:
    return END if state.get("stopped_because") else "inspect"


def build_graph(checkpointer: Any = None):
    """The compiled THI graph, named "thi" (pass a checkpointer for interactive mode or resumable
    dialogues). Its runtime context is a :class:`graphs.config.THIContext` (or the same fields as a
    JSON object); its input is ``{"query": ...}`` (:class:`graphs.state.THIInput`); its output is
    the whole state.

    A LangGraph server may call this function as a graph factory (``"graphs.thi.graph:build_graph"``
    in ``langgraph.json``): it passes its run config as the argument, which gives
    :func:`served_graph` (the server brings its own checkpointer)."""
    if isinstance(checkpointer, Mapping):  # the LangGraph server's config: called as a graph factory
        return served_graph()
    return _compile(checkpointer, THIState)


def served_graph(checkpointer: Any = None):
    """The THI graph as a server serves it: the output, the streams and the thread state a client
    reads are the values of :class:`graphs.state.THIOutput` (the final query, rankings, anchor,
    facts, rounds, stop reason, cost, messages), not the scratch of the round in progress or
    every verdict (the checkpoint keeps everything, for resuming)."""
    compiled = _compile(checkpointer, THIOutput)
    compiled.stream_channels = list(compiled.output_channels)
    return compiled


def _compile(checkpointer: Any, output: type):
    g = StateGraph(THIState, context_schema=THIContext, input_schema=THIInput, output_schema=output)
    g.add_node("retrieve", retrieve)
    g.add_node("inspect", inspect)
    g.add_node("ask", ask)
    g.add_node("rewrite", rewrite)
    g.add_node("re_retrieve", re_retrieve)
    g.add_node("converge", converge)
    g.add_edge(START, "retrieve")
    g.add_conditional_edges("retrieve", _after_retrieve, ["inspect", END])
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
