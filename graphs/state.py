"""State schemas of the graphs: TypedDicts holding plain JSON-like values only, so a checkpointer
can serialise every step. Models, the gallery and the MLLM live in the runtime context instead.

What grows during a THI dialogue has a reducer, so a node's update (what ``stream_mode="updates"``
sends) carries only what the node changed: ``rounds``, ``asked`` and ``messages`` are appended to;
``verified``, ``checked``, ``facts`` and ``pending`` are merged key by key. Writing ``None`` to
one of them empties it (``retrieve`` does, when a new query starts a fresh dialogue on a thread).
"""

from __future__ import annotations

from typing import Annotated

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from typing_extensions import NotRequired, TypedDict


def merged(old: dict | None, new: dict | None) -> dict:
    """Reducer: ``old`` updated with ``new``'s keys; ``None`` empties it."""
    if new is None:
        return {}
    return {**(old or {}), **new}


def extended(old: list | None, new: list | None) -> list:
    """Reducer: ``old`` followed by ``new``; ``None`` empties it."""
    if new is None:
        return []
    return [*(old or []), *new]


class Candidate(TypedDict):
    id: str
    score: float


class Inspection(TypedDict):
    id: str
    rank: int  # 1-based rank in the ranking it was taken from
    match: bool | None  # None when the MLLM call failed
    confidence: float
    reason: str
    cached: bool
    elsewhere: NotRequired[bool]  # with a user: the person matches, the photo's context does not
    confidence_from: NotRequired[str]  # "logprobs", "fixed", "model" or "" (tools.mllm.base.Verdict)
    image: NotRequired[dict]  # the photo as sent to a chat MLLM: width, height, bytes, original, quality


class QA(TypedDict):
    slot: str
    question: str  # the question the answerer was asked (an open question may cover several slots)
    value: str | None
    source: str  # "mllm:<backend> on <image id>", "simulated user", "human"
    text: NotRequired[str]  # what the answerer said, as free text


class RoundRecord(TypedDict):
    """One THI round, as written to the trace (one JSON line)."""

    round: int
    query: str  # the query the round started from
    inspected: list[Inspection]
    anchor: str | None
    questions: list[str]
    answers: list[QA]
    rewritten_query: str | None
    topk: list[Candidate]
    target_rank: NotRequired[int | None]
    mllm_calls: int  # MLLM calls this round made (completed; cache hits are not calls)
    mllm_failures: NotRequired[int]  # MLLM calls that failed this round
    mllm_ms: NotRequired[float]  # milliseconds spent in MLLM calls, failed ones included
    ms: float  # the round's own work in milliseconds (not a person's time to answer)
    wait_ms: NotRequired[float]  # with a person answering: how long the answers took to come back
    notes: list[str]


class Usage(TypedDict):
    """What a dialogue has spent so far, counted in the dialogue itself (so right across resumes,
    processes and concurrent dialogues on one backend)."""

    mllm_calls: int
    mllm_failures: int
    mllm_ms: float
    ms: float  # the dialogue's own work, retrieval included
    wait_ms: float  # time spent waiting for a person's answers


class THIState(TypedDict, total=False):
    """The THI dialogue. ``ranking`` holds the current top candidates (a shortlist)."""

    query: str  # as typed
    current_query: str  # the latest rewrite (what the text encoder sees)
    description: str  # the query with every fact learned (what verification checks; no token budget)
    round: int
    top1_similarity: float
    original_ranking: list[Candidate]
    ranking: list[Candidate]
    verified: Annotated[dict[str, dict], merged]  # image id -> {"match", "confidence", "query"[, "elsewhere"]}
    checked: Annotated[dict[str, dict[str, list]], merged]  # with a user: image id -> {slot: [value or None, confidence]}
    anchor: str | None
    facts: Annotated[dict[str, str], merged]  # slot -> value learned from answers
    stated: dict[str, str]  # slot -> value the query itself states
    asked: Annotated[list[str], extended]
    pending: Annotated[dict, merged]  # scratch of the round in progress
    rounds: Annotated[list[RoundRecord], extended]
    truncated: str  # words of the query the text encoder cannot see
    finished_by_user: bool
    stopped_because: str | None
    usage: Usage
    messages: Annotated[list[AnyMessage], add_messages]  # one summary per round, for chat UIs
    context: dict  # the run context the dialogue started with (graphs.config.THIContext's fields)


def apply_update(state: dict, update: dict, schema: type = None) -> dict:  # type: ignore[assignment]
    """``state`` after a node's ``update``, with the reducers of ``schema`` (default
    :class:`THIState`) applied as LangGraph applies them (for code that calls nodes directly)."""
    from typing import get_type_hints

    hints = get_type_hints(schema or THIState, include_extras=True)
    out = dict(state)
    for key, value in update.items():
        reducer = getattr(hints.get(key), "__metadata__", (None,))[0]
        if reducer is None:
            out[key] = value
        elif reducer is add_messages:  # it takes no None
            out[key] = add_messages(out.get(key) or [], value or [])
        else:
            out[key] = reducer(out.get(key), value)
    return out


class THIInput(TypedDict):
    """What a client sends to start a dialogue: the description of the person."""

    query: str


class THIOutput(TypedDict, total=False):
    """What the served THI graph returns (and what its ``updates`` stream carries): the query as
    typed, the final query (``current_query``), the ranking before and after, the anchor and the
    facts learned, the rounds (the trace), why it stopped, the cost, and the per-round summaries
    for chat UIs."""

    query: str
    current_query: str
    original_ranking: list[Candidate]
    ranking: list[Candidate]
    anchor: str | None
    facts: dict[str, str]
    rounds: list[RoundRecord]
    stopped_because: str | None
    truncated: str
    usage: Usage
    messages: list[AnyMessage]


__all__ = ["Candidate", "Inspection", "QA", "RoundRecord", "THIInput", "THIOutput", "THIState", "Usage", "apply_update",
           "extended", "merged"]
