"""State schemas of the graphs: TypedDicts holding plain JSON-like values only, so a checkpointer
can serialise every step. Models, the gallery and the MLLM live in the runtime context instead."""

from __future__ import annotations

from typing_extensions import NotRequired, TypedDict


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


class QA(TypedDict):
    slot: str
    question: str
    value: str | None
    source: str  # "mllm:<backend> on <image id>", "simulated user", "human"


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
    mllm_calls: int
    ms: float
    notes: list[str]


class THIState(TypedDict, total=False):
    """The THI dialogue. ``ranking`` holds the current top candidates (a shortlist)."""

    query: str  # as typed
    current_query: str  # the latest rewrite (what the text encoder sees)
    description: str  # the query with every fact learned (what verification checks; no token budget)
    round: int
    top1_similarity: float
    original_ranking: list[Candidate]
    ranking: list[Candidate]
    verified: dict[str, dict]  # image id -> {"match", "confidence", "query"[, "elsewhere"]}
    checked: dict[str, dict[str, list]]  # with a user: image id -> {slot: [value or None, confidence]}
    anchor: str | None
    facts: dict[str, str]  # slot -> value learned from answers
    stated: dict[str, str]  # slot -> value the query itself states
    asked: list[str]
    pending: dict  # scratch of the round in progress
    rounds: list[RoundRecord]
    truncated: str  # words of the query the text encoder cannot see
    finished_by_user: bool
    stopped_because: str
