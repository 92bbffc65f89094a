"""Who answers the questions in THI.

* ``None`` (no user): the MLLM answers about the anchor candidate (the paper's setting).
* :class:`SimulatedUser`: someone who knows the target: an MLLM backend answering about the true
  target photo (as ChatIR does). Benchmarks only; results are labelled "simulated user".
* :class:`HumanUser`: the person at the terminal or another UI, reached through a LangGraph
  ``interrupt``; its payload and resume format are defined here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from tools.attributes import SLOTS
from tools.mllm.base import MLLM, Answer, ImageRef
from tools.mllm.parser import parse

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


def question_payload(round_no: int, query: str, slots: Sequence[str], top: Sequence[Mapping[str, Any]]) -> dict:
    """What the graph sends to the person (JSON-like)."""
    return {
        "type": "questions",
        "round": round_no,
        "query": query,
        "questions": [{"slot": s, "question": SLOTS[s].question, "options": list(SLOTS[s].values)} for s in slots],
        "top": list(top),
        "how_to_answer": {"answers": {"<slot>": "<one of options, free text, or 'skip'>"}, "finish": False},
    }


def read_human_answers(slots: Sequence[str], reply: Any) -> tuple[list[Answer], bool]:
    """Parse a resume value: ``{"answers": {slot: text}, "finish": bool}`` or a plain text answer
    (applied to all questions). Returns (answers, finish)."""
    if isinstance(reply, str):
        reply = {"answers": {s: reply for s in slots}}
    if not isinstance(reply, Mapping):
        return [], True
    finish = bool(reply.get("finish", False))
    given = reply.get("answers") or {}
    out = []
    for s in slots:
        text = str(given.get(s, SKIP)).strip()
        if not text or text.lower() == SKIP:
            continue
        value = text.lower() if text.lower() in SLOTS[s].values else _value_from_text(s, text)
        if value is not None:
            out.append(Answer(s, value, 1.0, text))
    return out, finish


def _value_from_text(slot: str, text: str) -> str | None:
    """Map a free answer to the slot's vocabulary ("yes" to 'is there a backpack?' -> backpack)."""
    low = text.lower().strip().rstrip(".")
    spec = SLOTS[slot]
    if low in ("yes", "y", "yeah") and spec.has_absent:
        present = spec.present_values()
        return present[0] if len(present) == 1 else None
    if low in ("no", "n", "none", "nope") and spec.has_absent:
        return "none"
    if slot.endswith("_color") or slot == "hair_color":
        probe = {"hair_color": f"{low} hair"}.get(slot, f"a {low} {_item_word(slot)}")
    else:
        probe = low
    return parse(probe).constraints.get(slot)


def _item_word(colour_slot: str) -> str:
    return {"upper_color": "top", "lower_color": "bottoms", "shoes_color": "shoes", "hand_object_color": "object",
            "backpack_color": "backpack", "bag_color": "bag", "hat_color": "hat"}[colour_slot]
