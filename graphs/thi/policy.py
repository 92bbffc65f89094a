"""What every THI policy decides, and the pieces the policies share.

A policy makes each decision of a round; ``graph.py`` only wires the nodes and keeps the round's
bookkeeping. The interface (:class:`Policy`):

==================  =====================================================================
``inspect``         which candidates to check this round, checking them (through the MLLM)
                    and reading the checks: the verdicts kept, the anchor
``after_inspect``   where the round goes next: ``"ask"`` or straight to ``"converge"``
``questions``       which attribute slots to ask about
``answerer``        who answers them (:func:`answerer_for`: the MLLM about the anchor, a
                    simulated user, or a human through a LangGraph interrupt)
``fusion``          the score of every gallery image after what the dialogue has learned, as
                    an expression over the index's score vectors (:mod:`.scoring`), so a
                    round ranks a shortlist exactly instead of scoring every image
``stop``            why the dialogue stops after this round, or None to go on
==================  =====================================================================

The round in progress is ``state["pending"]``, a plain dict: ``round`` (1-based), ``query`` (the
query the round started from), ``inspected`` (a list of :class:`graphs.state.Inspection`, in check
order), ``notes`` (strings for the trace), ``new_anchor`` (an anchor was accepted this round), and
after ``ask``: ``questions``, ``answers``, ``new_facts``; after ``rewrite``: ``rewritten_query``;
after ``re_retrieve``: ``target_rank``. ``inspect`` appends to ``inspected`` and ``notes`` and sets
``new_anchor``; everything else it decides comes back as a state update.

Policies: :mod:`.paper` (ICL's algorithm), :mod:`.adaptive` (ours, without a user),
:mod:`.with_user` (ours, with a user who knows the target).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any, Callable, Literal, Protocol

import numpy as np
from langgraph.types import interrupt

from agents.questioner import AdaptiveQuestioner, answer_disagreement, with_items
from agents.users import HumanUser, ResumeError, question_payload, read_human_answers
from tools.mllm.base import Answer, MLLMError

from ..config import THIConfig
from ..server import Live
from ..state import Inspection, RoundRecord, THIState
from .scoring import Fusion

log = logging.getLogger(__name__)

#: Stop reasons (the ``stopped_because`` values).
CONVERGED = "converged: the top-k did not change"
NOTHING_NEW = "nothing new was learned"
ROUND_LIMIT = "round limit reached"
NO_ANCHOR = "no anchor: no candidate passed verification; the original ranking is kept"
REFINED_ONCE = "refined once (paper: each query is refined at most once)"
USER_FINISHED = "the user finished"
GATE_CLOSED = "no anchor: the xi gate admits no later candidate; the original ranking is kept"

Route = Literal["ask", "converge"]


# -------------------------------------------------------------------------------------------
# who answers the questions


class Answerer(Protocol):
    def answer(self, state: THIState, slots: list[str], live: Live, pending: dict) -> tuple[list[Answer], bool, str]:
        """(answers, whether the user finished the dialogue, the answers' source for the trace).
        A failure is a note in ``pending["notes"]`` and no answers, never an exception."""
        ...


class AnchorAnswerer:
    """No user: the MLLM answers about the anchor candidate (the paper's setting)."""

    def answer(self, state: THIState, slots: list[str], live: Live, pending: dict) -> tuple[list[Answer], bool, str]:
        anchor = state["anchor"]
        answers: list[Answer] = []
        try:
            answers = live.mllm.ask(live.index.image(anchor), slots)
        except MLLMError as e:
            pending["notes"].append(f"questions about {anchor} skipped ({e.kind}: {e})")
        return answers, False, f"mllm:{live.mllm.name} on {anchor}"


class SimulatedAnswerer:
    """Someone who knows the target, simulated (``agents.users.SimulatedUser``: an MLLM backend
    answering about the true target photo)."""

    def __init__(self, user: Any):
        self.user = user

    def answer(self, state: THIState, slots: list[str], live: Live, pending: dict) -> tuple[list[Answer], bool, str]:
        answers: list[Answer] = []
        try:
            answers = self.user.answer(slots)
        except MLLMError as e:
            pending["notes"].append(f"the simulated user could not answer ({e.kind}: {e})")
        return answers, False, "simulated user"


class HumanAnswerer:
    """The person at the terminal or another UI: the graph interrupts with
    ``agents.users.question_payload`` and reads the resume value with ``read_human_answers``. A
    resume value of the wrong shape is asked again, with the reason in the payload's ``error``."""

    def answer(self, state: THIState, slots: list[str], live: Live, pending: dict) -> tuple[list[Answer], bool, str]:
        top = [{"rank": n + 1, **c, "path": str(live.index.image(c["id"]).path)}
               for n, c in enumerate(state["ranking"][: live.config.k])]
        error = None
        while True:  # each refused value is one more interrupt of this node, replayed in order on resume
            reply = interrupt(question_payload(pending["round"], state["current_query"], slots, top, error))
            try:
                answers, finished = read_human_answers(slots, reply)
            except ResumeError as e:
                error = str(e)
                continue
            return answers, finished, "human"


def answerer_for(user: Any) -> Answerer:
    """Who answers: the MLLM about the anchor (no user), a human, or a simulated user."""
    if user is None:
        return AnchorAnswerer()
    if isinstance(user, HumanUser):
        return HumanAnswerer()
    return SimulatedAnswerer(user)


# -------------------------------------------------------------------------------------------
# the interface


class Policy(ABC):
    """One THI policy: every decision of a round (see the module docstring)."""

    name: str

    def __init__(self, config: THIConfig, answerer: Answerer):
        self.config = config
        self.answerer = answerer

    @abstractmethod
    def inspect(self, state: THIState, live: Live, pending: dict) -> dict:
        """Check this round's candidates and read the checks; returns the state update
        (``anchor``, and ``verified`` or ``checked``)."""

    @abstractmethod
    def after_inspect(self, state: THIState) -> Route:
        """``"ask"``, or ``"converge"`` when this round asks nothing."""

    @abstractmethod
    def questions(self, state: THIState, live: Live) -> list[str]:
        """The slots to ask about this round (empty: none)."""

    @abstractmethod
    def fusion(self, state: THIState, live: Live) -> Fusion:
        """The score of every image after the rounds in ``state``, before any metadata filter."""

    def fuse(self, state: THIState, live: Live) -> np.ndarray:
        """Scores (float32 [N], the gallery index's order) after the rounds in ``state``, before any
        metadata filter: :meth:`fusion` evaluated on the whole gallery."""
        return self.fusion(state, live).evaluate(live.index)

    @abstractmethod
    def stop(self, state: THIState, rounds: list[RoundRecord], pending: dict) -> str | None:
        """Why the dialogue stops after the round in ``pending`` (``rounds`` ends with its
        record), or None to go on."""


# -------------------------------------------------------------------------------------------
# shared pieces


def verify(live: Live, image_id: str, rank: int, text: str) -> Inspection:
    """One yes/no verification, as the trace records it. A failed call or an abstention (the
    backend has no evidence either way) is no verdict: ``match`` None, no move, never an anchor."""
    try:
        v = live.mllm.verify(live.index.image(image_id), text)
    except MLLMError as e:
        return skipped(image_id, rank, e)
    if v.match is None:
        return {"id": image_id, "rank": rank, "match": None, "confidence": 0.0, "reason": f"abstained: {v.reason}",
                "cached": bool(v.cached)}
    return {"id": image_id, "rank": rank, "match": bool(v.match), "confidence": round(float(v.confidence), 4),
            "reason": v.reason, "cached": bool(v.cached), "confidence_from": v.confidence_from}


def prefetch(live: Live, image_ids: list[str]) -> None:
    """Let the backend read these candidates' photos in one pass (a hint, not a call). Photos that
    changed or vanished since indexing are left out, and a photo that cannot be read only costs the
    batch: each candidate is then read on its own, where a failure is that step's note."""
    refs = [ref for ref in (live.index.image(i) for i in image_ids) if not ref.changed()]
    if not refs:
        return
    try:
        live.mllm.prefetch(refs)
    except (OSError, MLLMError) as e:
        log.info("batched reading of %d photos failed (%s); reading them one by one", len(refs), e)


def skipped(image_id: str, rank: int, error: MLLMError) -> Inspection:
    """The trace's record of a candidate the MLLM could not judge (no verdict, no move)."""
    return {"id": image_id, "rank": rank, "match": None, "confidence": 0.0,
            "reason": f"skipped: {error.kind}: {error}", "cached": False}


def check_candidate(live: Live, image_id: str, ranking_ids: list[str], text: str, pending: dict,
                    verified: dict[str, dict], person_text: str | None = None) -> Inspection:
    """Verify one candidate of the current ranking against ``text``, trace it, and keep its verdict
    in ``verified`` (a verdict-less check is only noted). With ``person_text`` (the facts about the
    person alone), a "no" is asked again about the person: the same person photographed elsewhere
    is still the person (one more call)."""
    rank = ranking_ids.index(image_id) + 1
    ins = verify(live, image_id, rank, text)
    if ins["match"] is False and person_text:
        again = verify(live, image_id, rank, person_text)
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


def known(state: THIState) -> dict[str, str]:
    """Everything known about the target: the query's statements, then the answers."""
    return {**(state.get("stated") or {}), **(state.get("facts") or {})}


def verifications(rounds: list[RoundRecord]) -> int:
    """Candidates inspected so far (what a verification budget counts)."""
    return sum(len(r["inspected"]) for r in rounds)


def disagreement_questions(state: THIState, live: Live, per_round: int, include_context: bool) -> list[str]:
    """Up to ``per_round`` open slots where the top-k candidates disagree (plus the item slot of a
    colour question): judged by their own questionnaire answers once two or more of them have
    answered it (``questions_from="answers"``), else by the retriever's zero-shot probe."""
    cfg = live.config
    top_ids = [c["id"] for c in state["ranking"][: cfg.k]]
    checked = state.get("checked") or {}
    top_answers = [checked[i] for i in top_ids if i in checked]
    disagreement: Callable[[Any], dict[str, float]]
    if cfg.questions_from == "answers" and len(top_answers) >= 2:
        disagreement = lambda slots: answer_disagreement(top_answers, list(slots))  # noqa: E731
    else:
        disagreement = lambda slots: live.index.disagreement(top_ids, list(slots))  # noqa: E731
    questioner = AdaptiveQuestioner(disagreement, per_round, include_context=include_context)
    return with_items(questioner.choose(known(state), state["asked"]))


def settled(state: THIState, rounds: list[RoundRecord], pending: dict, k: int, limit: int) -> str | None:
    """The stop reasons shared by the adaptive policies once a round has run: nothing new learned
    (no new fact, nothing checked), the top-``k`` unchanged after round 1 with no new fact, or the
    round ``limit``; None when the dialogue goes on."""
    if not (pending.get("new_facts") or pending["inspected"]):
        return NOTHING_NEW
    if same_top(state, rounds, k) and not pending.get("new_facts") and pending["round"] > 1:
        return CONVERGED
    if pending["round"] >= limit:
        return ROUND_LIMIT
    return None


def same_top(state: THIState, rounds: list[RoundRecord], k: int) -> bool:
    """Whether this round left the top-k ids as the round before (or the original ranking) had them."""
    before = rounds[-2]["topk"] if len(rounds) > 1 else state["original_ranking"][:k]
    return [c["id"] for c in rounds[-1]["topk"]] == [c["id"] for c in before]
