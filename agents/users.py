"""Who answers the questions in THI.

* ``None`` (no user): the MLLM answers about the anchor candidate (the paper's setting).
* :class:`SimulatedUser`: someone who knows the target: an MLLM backend answering about the true
  target photo (as ChatIR does). Benchmarks only; results are labelled "simulated user".
* :class:`HumanUser`: the person at the terminal or another UI, reached through a LangGraph
  ``interrupt``; its payload (:func:`question_payload`) and resume value (:class:`Resume`) are
  defined here.

The interrupt contract, for UI builders. The graph stops with this payload (JSON)::

    {"type": "questions", "round": 2, "query": "<the current query>",
     "questions": [{"slot": "hair_color", "question": "What colour is the person's hair?",
                    "options": ["black", "brown", ...]}, ...],
     "top": [{"rank": 1, "id": "...", "score": 0.41, "path": "..."}, ...],
     "how_to_answer": {"answers": {"<slot>": "<free text, one of options, or 'skip'>"}, "finish": false},
     "error": "<only when the previous resume value was refused: why>"}

and is resumed with ``Command(resume={"answers": {slot: text}, "finish": bool})`` (:class:`Resume`):
``answers`` maps slots of this round's questions to free text ("Black.", "dark brown", "yes, a
red cap"); a slot left out, empty, or ``"skip"`` is not answered; ``finish`` ends the dialogue
after this round. Every answer is read by the same parser as an MLLM's free-text answer
(:func:`tools.mllm.chat.answer_value`); text it cannot map onto the slot's vocabulary is no answer,
never an error. A resume value of any other shape (``None``, a string, ``{"answers": "black"}``,
unknown fields, slots not asked this round) is refused: the graph asks again with the same
questions and ``error`` saying what was wrong, so the dialogue survives any client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tools.attributes import SLOTS
from tools.mllm.base import MLLM, Answer, ImageRef
from tools.mllm.chat import answer_value

SKIP = "skip"


@dataclass
class SimulatedUser:
    """Answers about the true target photo with an MLLM backend (offline or oracle)."""

    mllm: MLLM
    target: ImageRef
    kind: str = "simulated"

    def answer(self, slots: Sequence[str]) -> list[Answer]:
        return self.mllm.ask(self.target, slots)


class HumanUser:
    """Marker for the interactive mode: the graph interrupts with :func:`question_payload`."""

    kind = "human"


class Resume(BaseModel):
    """The value a person's answers resume a THI question interrupt with."""

    model_config = ConfigDict(extra="forbid")

    answers: dict[str, str | None] = Field(
        default_factory=dict,
        description="slot -> the person's answer as free text; a slot left out, empty, null or 'skip' is not answered")
    finish: bool = Field(False, description="end the dialogue after this round")


class ResumeError(ValueError):
    """A resume value that is not a :class:`Resume` for this round's questions (one line)."""


_SHAPE = 'resume with {"answers": {slot: text}, "finish": false}'


def read_resume(slots: Sequence[str], reply: Any) -> Resume:
    """Validate a resume value against this round's ``slots``. Raises :class:`ResumeError`."""
    if isinstance(reply, Resume):
        resume = reply
    elif not isinstance(reply, Mapping):
        raise ResumeError(f"the resume value is {type(reply).__name__ if reply is not None else 'missing'}, "
                          f"not an object: {_SHAPE}")
    else:
        try:
            resume = Resume.model_validate(dict(reply))
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "(the value)"
            more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
            raise ResumeError(f"bad resume value: {where}: {err['msg']}{more}; {_SHAPE}") from None
    unknown = [s for s in resume.answers if s not in slots]
    if unknown:
        raise ResumeError(f"answers name slots not asked this round: {', '.join(map(str, unknown))} "
                          f"(asked: {', '.join(slots)})")
    return resume


def question_payload(round_no: int, query: str, slots: Sequence[str], top: Sequence[Mapping[str, Any]],
                     error: str | None = None) -> dict:
    """What the graph sends to the person (JSON-like; see the module docstring)."""
    payload = {
        "type": "questions",
        "round": round_no,
        "query": query,
        "questions": [{"slot": s, "question": SLOTS[s].question, "options": list(SLOTS[s].values)} for s in slots],
        "top": list(top),
        "how_to_answer": {"answers": {"<slot>": "<free text, one of options, or 'skip'>"}, "finish": False},
    }
    if error:
        payload["error"] = error
    return payload


def read_human_answers(slots: Sequence[str], reply: Any) -> tuple[list[Answer], bool]:
    """The answers in a resume value (see :func:`read_resume`, which raises :class:`ResumeError`
    for a bad one), each read by the MLLM answers' parser; returns (answers, finish). An answer the
    parser cannot map onto the slot's vocabulary keeps its text with value None (no fact)."""
    resume = read_resume(slots, reply)
    out = []
    for s in slots:
        text = (resume.answers.get(s) or "").strip()
        if not text or text.lower() == SKIP:
            continue
        value = answer_value(s, text)
        out.append(Answer(s, value, 1.0 if value is not None else 0.0, text))
    return out, resume.finish
