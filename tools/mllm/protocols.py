"""How a chat MLLM is talked to, as data: prompts, questions, answer parsing, sampling, image limits.

A :class:`Protocol` is a named preset; the chat backends (``openai``, ``langchain``,
``transformers``) take one with ``protocol=`` (a preset name, a :class:`Protocol`, a dict, or the
path of a JSON file). Two presets ship in ``tools/mllm/presets/``:

* ``ours`` (the default): a lenient yes/no check (only a visible contradiction is a "no"), read
  with the negation-aware rule of :func:`tools.mllm.chat.parse_yes_no`, with p(yes) from the
  server's log-probabilities; a person-presence question after each "yes" and before attribute
  questions (:attr:`PersonCheck.mode` ``question``); multiple-choice questions, one per slot of
  ``tools.attributes``, answered in its vocabulary; a merge that must keep the query word for word
  (checked with the query parser, else the grammar merge is used).
* ``icl``: ICL's THI protocol (Qin et al., CVPR 2025, "How the authors' code does it" in
  the project's ICL reference): one yes/no question per candidate, counted as "yes" when the reply
  contains the word; fifteen open questions on the anchor (the paper's attribute list, in this
  project's wording), free-text answers split on their numbers and kept as text; one text-only
  aggregation call whose reply is the new query, unchecked; temperature 0.01; images resized
  client-side to multiples of 28 within 50,176 pixels.

A JSON file holds the same fields (see ``presets/ours.json``); ``"extends": "icl"`` starts from a
shipped preset and replaces only the fields given (nested objects are merged key by key)::

    {"name": "icl-authors-prompt", "extends": "icl",
     "verify": {"prompt": "<the adapter's own training prompt, with {text} for the description>"}}

Prompt templates are Python ``str.format`` strings; the fields each must contain are checked on
load (:class:`VerifySpec`, :class:`AskSpec`, :class:`MergeSpec`).
"""

from __future__ import annotations

import hashlib
import json
import string
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tools.attributes import SLOTS

from .images import ImageLimits

__all__ = ["PRESETS", "PRESET_DIR", "AskSpec", "MergeSpec", "PersonCheck", "Protocol", "ProtocolError", "Question",
           "VerifySpec", "load_protocol"]

PRESET_DIR = Path(__file__).resolve().parent / "presets"
#: the shipped presets, by name
PRESETS: tuple[str, ...] = ("ours", "icl")


class ProtocolError(ValueError):
    """A protocol name, file or field that cannot be used (the message says which and why)."""


def _fields(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name}
    except ValueError as e:
        raise ValueError(f"not a valid template ({e}): {template[:80]!r}") from None


def _check_template(template: str, required: Sequence[str], allowed: Sequence[str], what: str) -> str:
    names = _fields(template)
    missing = [f for f in required if f not in names]
    unknown = sorted(names - set(allowed))
    if missing:
        raise ValueError(f"{what} must contain {', '.join('{' + f + '}' for f in missing)}")
    if unknown:
        raise ValueError(f"{what} has unknown fields {', '.join('{' + f + '}' for f in unknown)} "
                         f"(allowed: {', '.join('{' + f + '}' for f in allowed)})")
    return template


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VerifySpec(_Strict):
    """The yes/no question about one candidate.

    Attributes:
        prompt: the user turn after the image; ``{text}`` is the description.
        yes_rule: how the reply is read. ``negation``: the rule of
            :func:`tools.mllm.chat.parse_yes_no` (the first decisive phrase, negations and
            "no doubt" included; unreadable replies are a failed step). ``contains``: "yes" when
            the reply contains the word yes (any case), else "no" (ICL's rule).
    """

    prompt: str
    yes_rule: Literal["negation", "contains"] = "negation"

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        return _check_template(v, ["text"], ["text"], "verify.prompt")


class PersonCheck(_Strict):
    """Whether the backend asks if the photo shows a person at all.

    Attributes:
        mode: ``off``, or ``question``: one extra yes/no request per photo (cached), asked after a
            "yes" verdict (a "no" is already right for a photo without a person) and before
            attribute questions. Where the reply is "no", ``verify`` abstains
            (``Verdict(match=None)``) and ``ask`` answers "cannot tell" for every slot.
        prompt: the question, read with the negation-aware yes/no rule.
    """

    mode: Literal["off", "question"] = "off"
    prompt: str = ""

    @model_validator(mode="after")
    def _prompt(self) -> "PersonCheck":
        if self.mode == "question" and not self.prompt.strip():
            raise ValueError("person_check.prompt is needed when person_check.mode is 'question'")
        return self


class Question(_Strict):
    """One open question and the attribute slots its answer may fill."""

    text: str
    slots: tuple[str, ...] = Field(min_length=1)

    @field_validator("slots")
    @classmethod
    def _slots(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [s for s in v if s not in SLOTS]
        if unknown:
            raise ValueError(f"unknown attribute slots {unknown} (known: {', '.join(SLOTS)})")
        return v


class AskSpec(_Strict):
    """The attribute questions about one photo, asked in one request.

    Attributes:
        prompt: the user turn after the image; ``{questions}`` is the numbered question list.
        question: one line of that list: ``{n}`` (1-based), ``{question}``, and ``{options}`` (the
            slot's values, comma-separated; only with ``questions: "slots"``).
        questions: ``"slots"``: one question per requested slot, worded by ``tools.attributes``;
            or a list of questions, each covering some slots; a request for some slots asks
            every listed question that covers one of them, in list order.
        split: how the reply is cut into answers: ``lines`` (one numbered line each), or
            ``numbers`` (at each answer number "1." ... "n.", on one line or many).
        answers: ``values``: each answer is mapped onto its slot's vocabulary
            (:func:`tools.mllm.chat.answer_value`); the text is kept too. ``text``: answers are
            free text, kept as :attr:`Answer.text` with :attr:`Answer.question`; slot values are
            read from them where the query parser can, else left None.
    """

    prompt: str
    question: str = "{n}. {question}"
    questions: Literal["slots"] | tuple[Question, ...] = "slots"
    split: Literal["lines", "numbers"] = "lines"
    answers: Literal["values", "text"] = "values"

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        return _check_template(v, ["questions"], ["questions"], "ask.prompt")

    @model_validator(mode="after")
    def _question(self) -> "AskSpec":
        allowed = ["n", "question", "options"] if self.questions == "slots" else ["n", "question"]
        _check_template(self.question, ["question"], allowed, "ask.question")
        if self.questions != "slots":
            covered = {s for q in self.questions for s in q.slots}
            missing = [s for s in SLOTS if s not in covered]
            if missing:
                raise ValueError(f"ask.questions leave slots without a question: {missing}")
        return self


class MergeSpec(_Strict):
    """The text-only request that folds answers into the query.

    Attributes:
        system_prompt: its system turn (``None``: none).
        prompt: the user turn: ``{query}``, ``{facts}`` (one line per fact) and ``{limit}``.
        fact: one line of ``{facts}``: ``{n}``, ``{fact}`` (a sentence: the answer's slot value
            phrased by ``tools.attributes``, else its question and text), ``{question}`` and
            ``{answer}`` (the answer's free text, else the phrased value).
        limit: appended as ``{limit}`` when a token budget is given: ``{words}`` (about 3/4 of the
            budget); empty to tell the model nothing.
        checked: ``True``: the reply must keep every detail the query parser reads in the query
            and fit the budget, else the grammar merge is used instead. ``False``: the reply is the
            new query as it is (ICL); an empty reply is a failed step.
    """

    system_prompt: str | None = None
    prompt: str
    fact: str = "- {fact}"
    limit: str = ""
    checked: bool = True

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        return _check_template(v, ["query", "facts"], ["query", "facts", "limit"], "merge.prompt")

    @field_validator("fact")
    @classmethod
    def _fact(cls, v: str) -> str:
        names = _fields(v)
        if not names & {"fact", "answer"}:
            raise ValueError("merge.fact must contain {fact} or {answer}")
        return _check_template(v, [], ["n", "fact", "question", "answer"], "merge.fact")

    @field_validator("limit")
    @classmethod
    def _limit(cls, v: str) -> str:
        return _check_template(v, [], ["words"], "merge.limit")


class Protocol(_Strict):
    """A named way of talking to a chat MLLM. See the module docstring for the presets.

    Attributes:
        name: shown in traces and part of the backend's fingerprint.
        description: what it is, in a sentence or two.
        temperature: sampling temperature of every request.
        max_tokens: answer length cap (``None``: the server's).
        logprobs: request log-probabilities on yes/no questions (p(yes) from the first answer token).
        top_logprobs: alternatives per token to request (OpenAI allows 0-20).
        image: image limits (:class:`tools.mllm.images.ImageLimits`); a backend's ``image_limits``
            overrides single fields.
        system_prompt: the system turn of image requests (``None``: none).
        verify, person_check, ask, merge: the requests.
    """

    name: str = Field(min_length=1, max_length=80)
    description: str = ""
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int = Field(5, ge=1, le=20)
    image: ImageLimits = ImageLimits()
    system_prompt: str | None = None
    verify: VerifySpec
    person_check: PersonCheck = PersonCheck()
    ask: AskSpec
    merge: MergeSpec

    # -- derived -------------------------------------------------------------------------------

    @property
    def digest(self) -> str:
        """A short hash of every field: two protocols with the same digest talk the same way."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]

    def questions_for(self, slots: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
        """The questions to ask for ``slots``, in order: ``(question text, slots it covers)``.

        With ``ask.questions == "slots"`` one per slot (its ``tools.attributes`` question); else
        every listed question covering at least one requested slot, in the list's order.
        """
        if self.ask.questions == "slots":
            return [(SLOTS[s].question, (s,)) for s in slots]
        wanted = set(slots)
        return [(q.text, q.slots) for q in self.ask.questions if wanted & set(q.slots)]

    def question_lines(self, slots: Sequence[str]) -> str:
        """The numbered ``{questions}`` block of the ask prompt for ``slots``."""
        lines = []
        for n, (text, covered) in enumerate(self.questions_for(slots), 1):
            options = ", ".join(SLOTS[covered[0]].values) if self.ask.questions == "slots" else ""
            lines.append(self.ask.question.format(n=n, question=text, options=options))
        return "\n".join(lines)


# -- loading ------------------------------------------------------------------------------------

def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resolve(data: dict, where: str, seen: tuple[str, ...] = ()) -> dict:
    parent = data.get("extends")
    if parent is None:
        return data
    if not isinstance(parent, str) or parent not in PRESETS:
        raise ProtocolError(f"{where}: \"extends\" must name a shipped preset ({', '.join(PRESETS)}), not {parent!r}")
    if parent in seen:
        raise ProtocolError(f"{where}: \"extends\" loops through {parent!r}")
    base = _resolve(_read_json(PRESET_DIR / f"{parent}.json"), parent, seen + (parent,))
    merged = _deep_merge(base, {k: v for k, v in data.items() if k != "extends"})
    merged.pop("extends", None)
    return merged


def _read_json(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8-sig")  # editors on Windows write a byte-order mark
    except (OSError, UnicodeDecodeError) as e:
        raise ProtocolError(f"cannot read protocol file {path}: {e}") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ProtocolError(f"protocol file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"protocol file {path} must hold a JSON object, not {type(data).__name__}")
    return data


def _validate(data: dict, where: str) -> Protocol:
    try:
        return Protocol.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        # of a union's failed branches, the deepest says most ("unknown slot" beats "not 'slots'")
        first = max(errors, key=lambda err: len(err["loc"]))
        # union branch names ("tuple[Question, ...]") are pydantic's, not the file's
        loc = ".".join(str(p) for p in first["loc"] if not (isinstance(p, str) and "[" in p)) or "(top level)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ProtocolError(f"{where}: {loc}: {first['msg']}{more}") from None


@lru_cache(maxsize=None)
def _preset(name: str) -> Protocol:
    return _validate(_read_json(PRESET_DIR / f"{name}.json"), f"preset {name}")


def load_protocol(spec: "str | Path | Protocol | dict[str, Any] | None" = None) -> Protocol:
    """A :class:`Protocol` from a preset name (``ours``, ``icl``), a JSON file path, a dict, or a
    :class:`Protocol` (returned as is); ``None`` gives ``ours``.

    Raises :class:`ProtocolError` (a ``ValueError``) naming the file and the first bad field.
    """
    if spec is None:
        return _preset("ours")
    if isinstance(spec, Protocol):
        return spec
    if isinstance(spec, dict):
        return _validate(_resolve(spec, "protocol"), "protocol")
    text = str(spec)
    if text in PRESETS:
        return _preset(text)
    path = Path(text).expanduser()
    if path.suffix.lower() == ".json" or path.exists():
        if not path.is_file():
            raise ProtocolError(f"protocol file {path} not found")
        return _validate(_resolve(_read_json(path), str(path)), str(path))
    raise ProtocolError(f"unknown MLLM protocol {text!r}: choose {' or '.join(PRESETS)}, or give a .json file")
