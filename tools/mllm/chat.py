"""Shared logic of chat-style MLLM backends: a protocol's prompts in, free text out, parsed.

A chat backend only implements ``_chat(messages, options) -> str | ChatReply`` over OpenAI-format
messages::

    [{"role": "system", "content": "..."},
     {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}},
                                  {"type": "text", "text": "..."}]}]

and must end the request by ``options.deadline`` (raising :class:`MLLMError` of kind
``options.deadline_kind``). :class:`ChatMLLM` does the rest, as its
:class:`~tools.mllm.protocols.Protocol` (``ours`` by default, or ``icl``, or a JSON file) says:

* **verify**: one image + the description -> yes/no, read by the protocol's rule
  (:func:`read_yes_no`, or "contains yes" for ``icl``); confidence p(yes) from the first answer
  token's log-probabilities when the server returns them (:func:`yes_probability`), else 1.0,
  recorded in ``Verdict.confidence_from`` and at the end of ``Verdict.reason``.
* **person presence** (``person_check.mode == "question"``, the ``ours`` preset): after a "yes",
  and before attribute questions, one cached question "does the photo show a person?"; where the
  answer is no, ``verify`` abstains (``Verdict(match=None)``) and ``ask`` answers "cannot tell".
  A "no" verdict needs no check: a photo without a person is not the person described. A verify
  reply that itself says the photo shows no person also abstains.
* **ask**: one image + the protocol's numbered questions -> one answer per question, mapped onto
  the slots each covers (:func:`answer_value`, :func:`group_values`); free text is kept in
  ``Answer.text`` with ``Answer.question``.
* **merge**: text only. ``ours``: the reply must keep what the query parser reads in the query and
  fit the token budget, else the grammar merge is used. ``icl``: the reply is the new query as it
  is (only an empty or refused reply fails the step).

Every request goes through :meth:`ChatMLLM._send`: the circuit breaker (after an
``unreachable``/``timeout`` failure the backend stops trying; :attr:`ChatMLLM.unavailable`), the
per-call deadline (``timeout``) and the dialogue deadline (:func:`tools.mllm.base.dialogue_deadline`),
and the sanitising of every reply (:func:`tools.text.printable`). Photos are read upright,
resized to the protocol's pixel range and JPEG-encoded (:mod:`tools.mllm.images`); a photo the
server rejected is remembered with its error and never sent again by this backend object.

The parsing helpers (:func:`read_yes_no`, :func:`parse_yes_no`, :func:`contains_yes`,
:func:`parse_numbered`, :func:`split_numbered`, :func:`answer_value`, :func:`group_values`,
:func:`yes_probability`) are pure functions and are tested directly.
"""

from __future__ import annotations

import contextvars
import logging
import math
import re
import threading
import time
from abc import abstractmethod
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from tools.attributes import NONE, SLOTS
from tools.text import printable

from .base import MLLM, Answer, ImageRef, MLLMError, Verdict, current_deadline, facts_context, grammar_merge
from .images import ImageLimits, PreparedImage, prepare_image
from .parser import parse
from .protocols import Protocol, load_protocol

log = logging.getLogger(__name__)

# -- the ``ours`` preset's prompts, as constants (the preset file is their source) ---------------
_OURS = load_protocol("ours")
SYSTEM_PROMPT: str = _OURS.system_prompt or ""
VERIFY_PROMPT: str = _OURS.verify.prompt
ASK_PROMPT: str = _OURS.ask.prompt
ASK_QUESTION: str = _OURS.ask.question
MERGE_SYSTEM_PROMPT: str = _OURS.merge.system_prompt or ""
MERGE_PROMPT: str = _OURS.merge.prompt
MERGE_LIMIT: str = _OURS.merge.limit

#: ``Answer.text`` of every slot when the person check found nobody in the photo
NO_PERSON = "no person in the photo"

# -- parsing -----------------------------------------------------------------------------------

# reasoning models (Qwen3, DeepSeek-R1 served by vLLM/Ollama) may prepend their thoughts
_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.S | re.I)
_MARKUP = re.compile(r"[*_`#]+")
_LEADING_YES_NO = re.compile(r"^\W*(yes|no)\b", re.I)
_REFUSAL = re.compile(
    r"\b(?:i\s*(?:(?:can(?:'|’|no)?t|cannot)(?!\s+(?:tell|see|say|determine|be\s+sure))|am\s+(?:not\s+able|unable)"
    r"|'m\s+(?:not\s+able|unable)|won't|will\s+not)|sorry|as\s+an\s+ai)\b", re.I)
_UNKNOWN = re.compile(
    r"\b(?:not\s+(?:clearly\s+)?(?:visible|shown|seen|apparent|determinable)|invisible|unknown|unclear|unsure|"
    r"not\s+sure|n/?a|not\s+applicable|no\s+idea|can(?:'|’|no)?t\s+(?:tell|see|determine|say)|"
    r"cannot\s+(?:be\s+)?(?:tell|see|seen|determined?|say)|hard\s+to\s+(?:tell|say)|impossible\s+to\s+(?:tell|say)|"
    r"obscured|occluded|hidden|out\s+of\s+(?:frame|view))\b", re.I)
_NUMBERED = re.compile(r"^\s*(?:q(?:uestion)?\s*)?(\d{1,2})\s*[.):\]-]\s*(.*)$", re.I)
_ARTICLE = re.compile(r"^(?:a|an|the)\s+", re.I)

# A bare answer ("red", "short") is read by the query parser inside a phrase that names the slot's
# item, so the parser binds it to the right slot ("red" -> "red top" -> upper_color).
_CONTEXT: dict[str, str] = {
    "hair_length": "{} hair", "hair_color": "{} hair",
    "upper_color": "{} top", "sleeve_length": "{} sleeved top", "pattern": "{} top",
    "lower_color": "{} lower garment", "lower_length": "{} lower garment",
    "shoes_color": "{} shoes", "hand_object_color": "{} object", "backpack_color": "{} backpack",
    "bag_color": "{} bag", "hat_color": "{} hat",
}

# The yes/no rule (see read_yes_no). Each phrase has a meaning; the reply's answer is the
# earliest phrase in it, the longest where several start at the same place.
_NEG = "(?:n[o']?t|n't)"
_PHRASES: tuple[tuple[str, str], ...] = (
    # a photo without a person (verify abstains on it)
    (r"there\s+(?:is|are)\s+no\s+(?:visible\s+)?(?:person|people|humans?|pedestrians?|one)"
     r"|no\s+(?:visible\s+)?(?:person|people|humans?|pedestrians?)\s+(?:is\s+|are\s+)?(?:in|visible|shown|present|at\s+all)"
     r"|(?:does|do)\s*" + _NEG + r"\s+(?:show|contain|depict|include)\s+(?:a|any)\s+(?:person|people|humans?|pedestrians?)"
     r"|nobody\s+(?:is\s+)?(?:in|visible|shown)"
     r"|(?:not|no)\s+(?:a\s+)?(?:photo|picture|image)\s+of\s+(?:a\s+)?(?:person|people|pedestrians?)", "no-person"),
    # uncertainty: the reply answers nothing
    (r"not\s+sure|unsure|uncertain|unclear|maybe|perhaps|possibly|partly|partially|it\s+depends"
     r"|yes\s+and\s+no|yes\s+or\s+no|no\s+or\s+yes"
     r"|can\s*(?:not|'?t|’t)\s+(?:tell|say|determine|be\s+sure|see)|hard\s+to\s+(?:tell|say)"
     r"|(?:impossible|difficult)\s+to\s+(?:tell|say|determine)"
     r"|(?:(?:it|this|that)\s+)?(?:is\s*" + _NEG + r"|isn't|not)\s+"
     r"(?:clear|certain|obvious|visible|possible\s+to\s+(?:tell|say|determine))",
     "unsure"),
    # negated affirmations, and negations of the fit itself: no
    (r"not\s+(?:a\s+)?yes"
     r"|(?:absolutely|definitely|certainly|surely|of\s+course|unfortunately|probably|clearly|obviously|sadly"
     r"|really|actually|likely|most\s+likely)\s+not"
     r"|(?:do|does|did|would|could|should|is|are|was|were)\s*" + _NEG
     + r"\s+(?:think|believe|say|seem|look|appear|fit|match|correspond|describe|agree|reckon|the\s+same)"
     r"|(?:don't|doesn't|didn't|wouldn't|isn't|aren't|wasn't|weren't)\s+(?:think|believe|say|seem|look|appear|fit"
     r"|match|correspond|describe|agree|reckon|the\s+same)"
     r"|(?:it|they|he|she|that|this)\s+(?:does|do|is|are)\s*" + _NEG + r"\b"
     r"|not\s+(?:really|at\s+all|quite|exactly|likely|so|the\s+case|a\s+match|matching|correct|true|the\s+same"
     r"|him|her|them|this\s+person|the\s+person)"
     r"|no\s+way|by\s+no\s+means|no\s+match", "no"),
    # negated doubts: yes
    (r"no\s+doubt|no\s+question|without\s+(?:a\s+|any\s+)?doubt|undoubtedly", "yes"),
    (r"yes|yeah|yep|yup|yea|affirmative|correct|true|absolutely|definitely|certainly|indeed|of\s+course"
     r"|sure|exactly|(?:i\s+)?(?:think|believe|guess|reckon)\s+so|that(?:'s|\s+is)\s+(?:right|correct)"
     r"|fits|matches|a\s+match|consistent", "yes"),
    (r"no|nope|nah|not|never|negative|incorrect|false|wrong|mismatch|contradicts?", "no"),
)
_PHRASE_RES = tuple((re.compile(rf"(?<![\w'’-])(?:{p})(?![\w'’-])", re.I), meaning) for p, meaning in _PHRASES)
_YES_WORD = re.compile(r"\byes\b", re.I)


def clean_reply(text: str) -> str:
    """The model's reply without reasoning blocks, markdown emphasis and control characters,
    whitespace-trimmed (line breaks kept)."""
    return printable(_MARKUP.sub("", _THINK.sub("", text or "")), newlines=True)


def is_refusal(text: str) -> bool:
    """Whether a reply opens with a refusal ("I can't help with that", "Sorry, ...")."""
    return bool(_REFUSAL.search(text[:80]))


def read_yes_no(text: str) -> Literal["yes", "no", "no-person"]:
    """Read a yes/no reply by the first decisive phrase in it.

    The rule: reading left to right, the reply's answer is its first decisive phrase (of phrases
    starting at the same word, the longest):

    * a negated affirmation or a negated fit is a **no**: "Not yes.", "Absolutely not", "I don't
      think so", "It does not match", "Not really", "Not the same person", "No way";
    * a negated doubt is a **yes**: "No doubt, yes!", "Without a doubt", "Undoubtedly";
    * otherwise yes-words are a **yes** (yes, yeah, yep, sure, correct, true, absolutely,
      definitely, indeed, of course, "I think so", fits, matches) and no-words a **no** (no, nope,
      not, never, false, incorrect, wrong, mismatch);
    * uncertainty makes the reply unusable ("Not sure", "Maybe", "I can't tell", "It is not
      clear", "Yes and no"): :class:`MLLMError` kind ``unparseable``;
    * a statement that the photo shows no person ("There is no person in the image", "The image
      does not show a person") gives ``"no-person"``.

    What follows the first decisive phrase does not change it: "Yes, although the shoes are not
    visible" is a yes; "No, the coat is blue" a no. Reasoning blocks (``<think>...</think>``) and
    markdown are ignored. With no decisive phrase, a refusal ("I can't help with that", "Sorry")
    raises kind ``refused``, anything else kind ``unparseable``.
    """
    reply = clean_reply(text)
    best: tuple[int, int, str] | None = None
    for pattern, meaning in _PHRASE_RES:
        m = pattern.search(reply)
        if m and (best is None or (m.start(), -(m.end() - m.start())) < (best[0], -best[1])):
            best = (m.start(), m.end() - m.start(), meaning)
    if best is None:
        if is_refusal(reply):
            raise MLLMError(f"the model refused: {reply[:120]!r}", kind="refused")
        raise MLLMError(f"no yes/no answer in {reply[:120]!r}", kind="unparseable")
    if best[2] == "unsure":
        raise MLLMError(f"the model is unsure: {reply[:120]!r}", kind="unparseable")
    return best[2]  # type: ignore[return-value]


def parse_yes_no(text: str) -> bool:
    """``True``/``False`` for a yes/no reply by the rule of :func:`read_yes_no` (a reply saying
    the photo shows no person is a ``False``). Raises :class:`MLLMError` (``refused`` or
    ``unparseable``)."""
    return read_yes_no(text) == "yes"


def contains_yes(text: str) -> bool:
    """ICL's rule: "yes" when the reply contains the word yes (any case; "eyes" does not count),
    "no" for anything else."""
    return bool(_YES_WORD.search(clean_reply(text)))


def parse_numbered(text: str, n: int) -> dict[int, str]:
    """Answer text by question number (1-based) from a reply with one numbered line per question.

    Lines without a number are ignored, except when the reply has none at all: then a single question
    takes the first line and ``n`` bare lines are taken in order (models sometimes drop numbering).
    """
    reply = clean_reply(text)
    lines = [ln.strip() for ln in reply.splitlines() if ln.strip()]
    out: dict[int, str] = {}
    for ln in lines:
        m = _NUMBERED.match(ln)
        if m and 1 <= int(m.group(1)) <= n:
            out.setdefault(int(m.group(1)), m.group(2).strip())
    if not out and lines:
        if n == 1:
            out[1] = lines[0]
        elif len(lines) == n:
            out = {i + 1: ln for i, ln in enumerate(lines)}
    return out


def split_numbered(text: str, n: int) -> dict[int, str]:
    """Answer text by question number from a reply split at its answer numbers "1." ... "n."
    (ICL's reading): the numbers may sit on one line or many; each answer runs to the next
    number in sequence. A number is "k." / "k)" / "k:" at the start or after white space, taken
    in increasing order (so "size 2. " inside answer 5 is not answer 2). A reply with no numbers
    is one answer when ``n`` is 1, else nothing."""
    reply = clean_reply(text)
    marks: list[tuple[int, int, int]] = []  # (number, start of mark, start of answer)
    pos, k = 0, 1
    while k <= n:
        m = re.compile(rf"(?:^|(?<=\s))(?:q(?:uestion)?\s*)?{k}\s*[.):]\s*", re.I).search(reply, pos)
        if m is None:
            k += 1  # a skipped number: look for the next one from the same place
            continue
        marks.append((k, m.start(), m.end()))
        pos, k = m.end(), k + 1
    if not marks:
        return {1: reply.strip()} if n == 1 and reply.strip() else {}
    out: dict[int, str] = {}
    for i, (number, _, start) in enumerate(marks):
        end = marks[i + 1][1] if i + 1 < len(marks) else len(reply)
        answer = " ".join(reply[start:end].split()).strip()
        if answer:
            out[number] = answer
    return out


def _strip_question(answer: str) -> str:
    """Drop an echoed question, option list and answer label: "What colour is the hat? Options: ...
    Answer: red" -> "red"."""
    if "?" in answer:
        answer = answer.rsplit("?", 1)[1]
    labels = list(re.finditer(r"\banswer\s*:|^\s*a\s*:", answer, re.I))
    if labels:
        answer = answer[labels[-1].end():]
    answer = re.sub(r"^\s*options?\s*:[^.]*\.\s*", "", answer, flags=re.I)
    return answer.strip(" \t.,;:!\"'")


def is_unknown(answer: str) -> bool:
    """Whether an answer says the photo does not show it ("not visible", "can't tell", "unknown")."""
    return bool(_UNKNOWN.search(answer))


def answer_value(slot: str, answer: str) -> str | None:
    """Map one free-text answer onto a value of ``slot``; ``None`` when it cannot tell.

    Tried in order: "cannot tell" phrases -> None; exact value ("Red." -> red); yes/no for presence
    slots ("no" -> none, "yes" -> the only present value); the query parser reading the answer in
    the slot's context ("navy blue" -> navy, "trainers" -> sneakers); finally a single value word in
    the answer ("it is long" -> long).
    """
    spec = SLOTS[slot]
    text = _strip_question(clean_reply(answer))
    low = text.lower()
    if not low or is_unknown(low):
        return None
    bare = _ARTICLE.sub("", low)
    if bare in spec.values:
        return bare
    present = spec.present_values()
    lead = _LEADING_YES_NO.match(low)
    if spec.has_absent:
        if (lead and lead.group(1) == "no") or re.match(r"^(?:none|nothing|nobody|no one)\b", low):
            return NONE
        if lead and len(present) == 1:
            return present[0]
    elif lead and lead.group(1) == "no":
        return None  # "no" to "what colour is the hat?": there is nothing to colour
    if lead:  # "yes, a cap": the rest says which
        low = low[lead.end():].strip(" ,.;:-")
    found = parse(_CONTEXT.get(slot, "{}").format(low)).constraints.get(slot)
    if found is not None:
        return found
    # the last resort: the answer names exactly one of the slot's values as a word
    rest, hits = f" {low} ", set()
    for value in sorted(spec.values, key=len, reverse=True):  # "t-shirt" before "shirt"
        pattern = rf"(?<![\w-]){re.escape(value)}(?![\w-])"
        if re.search(pattern, rest):
            hits.add(value)
            rest = re.sub(pattern, " ", rest)
    return hits.pop() if len(hits) == 1 else None


def group_values(slots: Sequence[str], answer: str) -> dict[str, str | None]:
    """Slot values from a free-text answer to one question covering ``slots`` (an ``icl``
    question such as "Is the person carrying a backpack or a bag? If so, what kind and what
    colour?"); None where the answer does not say.

    One slot: :func:`answer_value`. Several: the query parser reads the answer and only the
    question's own slots are kept ("Yes, a black backpack." -> backpack, backpack_color black);
    a bare negative ("No.", "None", "No, nothing.") with nothing else read sets the presence
    slots to none; "cannot tell" phrases with nothing read give None everywhere.
    """
    if len(slots) == 1:
        return {slots[0]: answer_value(slots[0], answer)}
    text = _strip_question(clean_reply(answer))
    low = text.lower()
    out: dict[str, str | None] = dict.fromkeys(slots)
    if not low:
        return out
    lead = _LEADING_YES_NO.match(low)
    rest = low[lead.end():].strip(" ,.;:-") if lead else low
    found = parse(rest).constraints if rest else {}
    for s in slots:
        out[s] = found.get(s)
    if any(v is not None for v in out.values()) or is_unknown(low):
        return out
    negative = (lead and lead.group(1) == "no") or re.match(r"^(?:none|nothing|nobody|no one)\b", low)
    if negative:
        for s in slots:
            if SLOTS[s].has_absent:
                out[s] = NONE
    return out


def token_word(token: Any) -> str:
    """A token's text as a word: without byte-level space markers, white space, markup or
    punctuation, lower-case ("ĠYes," -> "yes")."""
    t = str(token or "").replace("Ġ", " ").replace("▁", " ")
    return t.strip().strip("*_`'\".,!?:;()[]").lower()


def yes_probability(tokens: Sequence[tuple[str, Sequence[tuple[str, float]]]],
                    scan: int = 8) -> tuple[float, str] | None:
    """p(yes) from the log-probabilities of a reply's first answer token, and that token's own
    reading (``"yes"`` or ``"no"``); None when they do not say.

    ``tokens`` lists the generated tokens in order, each as ``(token, [(alternative, logprob),
    ...])`` (the server's top alternatives, the token itself included or not). The answer token
    is the first of the first ``scan`` tokens that reads as yes or no once case, spaces,
    byte-level markers (``Ġ``, ``▁``) and punctuation are ignored. p(yes) is the probability mass
    of the yes variants among its alternatives ("Yes", " yes", "YES", ...) over that of the yes and
    no variants together (each distinct alternative counted once).
    """
    for token, alternatives in list(tokens)[:scan]:
        reading = token_word(token)
        if reading not in ("yes", "no"):
            continue
        seen: dict[str, float] = {}
        for alt, logprob in list(alternatives):
            if isinstance(logprob, (int, float)) and math.isfinite(logprob):
                seen.setdefault(str(alt), float(logprob))
        yes = sum(math.exp(lp) for alt, lp in seen.items() if token_word(alt) == "yes")
        no = sum(math.exp(lp) for alt, lp in seen.items() if token_word(alt) == "no")
        if yes + no <= 0:
            return None
        return yes / (yes + no), reading
    return None


def response_part(obj: Any, name: str) -> Any:
    """An attribute or key of a response part (objects when parsed, dicts when not)."""
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def logprob_tokens(choice: Any) -> list[tuple[str, list[tuple[str, float]]]] | None:
    """``[(token, [(alternative, logprob), ...]), ...]`` from a chat-completion choice's
    ``logprobs.content`` (the token itself first among its alternatives), or None when absent."""
    content = response_part(response_part(choice, "logprobs"), "content")
    if not isinstance(content, list) or not content:
        return None
    out = []
    for item in content:
        token, logprob = response_part(item, "token"), response_part(item, "logprob")
        if not isinstance(token, str):
            return None
        alternatives = []
        if isinstance(logprob, (int, float)):
            alternatives.append((token, float(logprob)))
        for alt in response_part(item, "top_logprobs") or []:
            t, lp = response_part(alt, "token"), response_part(alt, "logprob")
            if isinstance(t, str) and isinstance(lp, (int, float)):
                alternatives.append((t, float(lp)))
        out.append((token, alternatives))
    return out


# -- requests and replies ----------------------------------------------------------------------

@dataclass(frozen=True)
class ChatOptions:
    """What one request needs besides its messages.

    Attributes:
        purpose: ``verify``, ``person``, ``ask``, ``merge`` or ``complete``.
        temperature: sampling temperature.
        max_tokens: answer length cap (None: the server's).
        top_logprobs: request log-probabilities with this many alternatives per token (None: not).
        deadline: ``time.monotonic()`` by which the request must have ended (``inf``: none).
        deadline_kind: the :class:`MLLMError` kind to raise when it passes: ``timeout`` (the call's
            own limit) or ``deadline`` (the dialogue's).
        deadline_text: says which limit, for the error message.
        has_image: the messages carry a photo.
    """

    purpose: str
    temperature: float | None = None
    max_tokens: int | None = None
    top_logprobs: int | None = None
    deadline: float = math.inf
    deadline_kind: str = "timeout"
    deadline_text: str = ""
    has_image: bool = False

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def expired_error(self) -> MLLMError:
        return MLLMError(f"no complete answer within {self.deadline_text}", kind=self.deadline_kind)


@dataclass
class ChatReply:
    """A reply: its text and, when the server returned them, the log-probabilities of its tokens as
    ``[(token, [(alternative, logprob), ...]), ...]`` (see :func:`yes_probability`)."""

    text: str
    tokens: list[tuple[str, list[tuple[str, float]]]] | None = None


class CircuitBreaker:
    """Stops a backend from trying a server that failed to answer at all.

    Opens on the first failure whose kind is in ``trip_on`` (``unreachable``, ``timeout``); while
    open every call fails at once with kind ``unavailable``, naming the failure that opened it.
    With ``cooldown`` seconds set, one call is let through after that long: its success closes the
    breaker, its failure opens it again. ``cooldown=None`` keeps it open for the backend's life
    (the run). Thread-safe.
    """

    def __init__(self, cooldown: float | None = None, trip_on: Sequence[str] = ("unreachable", "timeout")):
        self.cooldown = cooldown
        self.trip_on = frozenset(trip_on)
        self._error: MLLMError | None = None
        self._opened_at = 0.0
        self._trial = False
        self._lock = threading.Lock()

    @property
    def error(self) -> MLLMError | None:
        """The failure that opened the breaker (None while closed)."""
        return self._error

    def before_call(self) -> None:
        with self._lock:
            if self._error is None:
                return
            if (self.cooldown is not None and not self._trial
                    and time.monotonic() - self._opened_at >= self.cooldown):
                self._trial = True  # half-open: this call tries
                return
            raise MLLMError(f"not tried: the backend stopped after {self._error.kind}: {self._error}",
                            kind="unavailable")

    def record(self, error: MLLMError | None, quiet: bool = False) -> None:
        """Record a call's outcome: success (None) or a failure that shows the server answered
        closes the breaker; a failure of a ``trip_on`` kind opens it (with a warning, unless
        ``quiet``: the caller raises the error itself); a ``deadline`` failure (the dialogue's time
        ran out, which says nothing about the server) leaves it as it is."""
        with self._lock:
            if error is not None and error.kind in self.trip_on:
                if self._error is None and not quiet:
                    log.warning("MLLM backend stops trying after %s: %s", error.kind, error)
                self._error, self._opened_at = error, time.monotonic()
            elif error is None or error.kind != "deadline":
                self._error = None
            self._trial = False


# -- the backend -------------------------------------------------------------------------------

_IMAGE_CACHE = 32  # prepared photos kept per backend (verify, then ask, on the same anchor)
_SENT_KEEP = 10_000  # size-sent records kept per backend


class ChatMLLM(MLLM):
    """An MLLM reached through chat messages; subclasses implement :meth:`_chat`.

    >>> class Echo(ChatMLLM):
    ...     name = "echo"
    ...     def _chat(self, messages, options):
    ...         return "Yes."
    >>> Echo(protocol="icl").verify(ImageRef("a.jpg", Path("a.jpg")), "a man in a red coat").match  # doctest: +SKIP
    True

    Args:
        protocol: a preset name (``ours``, ``icl``), a :class:`Protocol`, a dict or a JSON file path.
        image_limits: fields of :class:`~tools.mllm.images.ImageLimits` that override the
            protocol's for this backend (e.g. ``{"max_pixels": 401408}`` for a server started with a
            short context).
        timeout: seconds one call may take in all (connection, upload, every byte of the answer,
            retries and their waits); None: no limit of its own.
        breaker_cooldown: seconds after which a backend stopped by its circuit breaker tries once
            more; None: it stays stopped for its life.
        temperature, max_tokens: override the protocol's.
        logprobs: override the protocol's log-probability request (False: never ask).
        cache: cache verify/ask answers by (image id, question).
    """

    name = "chat"
    #: parallel requests in :meth:`verify_many` (1: one after the other)
    max_concurrency: int = 1

    def __init__(self, protocol: "str | Path | Protocol | dict | None" = None,
                 image_limits: "ImageLimits | dict | None" = None, timeout: float | None = None,
                 breaker_cooldown: float | None = None, temperature: float | None = None,
                 max_tokens: int | None = None, logprobs: bool | None = None, cache: bool = True):
        super().__init__(cache=cache)
        self.protocol: Protocol = load_protocol(protocol)
        self.image_limits: ImageLimits = self.protocol.image.merged(image_limits)
        if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self.timeout = None if timeout is None else float(timeout)
        self.temperature = self.protocol.temperature if temperature is None else float(temperature)
        self.max_tokens = self.protocol.max_tokens if max_tokens is None else int(max_tokens)
        self.logprobs = self.protocol.logprobs if logprobs is None else bool(logprobs)
        self.breaker = CircuitBreaker(breaker_cooldown)
        self._rejected: dict[str, str] = {}
        self._prepared: OrderedDict[tuple, PreparedImage] = OrderedDict()
        self._sent: OrderedDict[str, dict] = OrderedDict()
        self._images_lock = threading.Lock()
        self._person_locks = tuple(threading.Lock() for _ in range(16))

    # -- status ----------------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        if self.protocol.name == "ours" and self.protocol.digest == _OURS.digest:
            return self.name
        return f"{self.name}[protocol={self.protocol.name}:{self.protocol.digest}]"

    @property
    def unavailable(self) -> MLLMError | None:
        return self.breaker.error

    def image_sent(self, image_id: str) -> dict | None:
        with self._images_lock:
            info = self._sent.get(image_id)
            return dict(info) if info is not None else None

    def rejected_images(self) -> dict[str, str]:
        """Photos the server refused, by image id, with its error: they are not sent again."""
        with self._images_lock:
            return dict(self._rejected)

    # -- the transport ----------------------------------------------------------------------

    @abstractmethod
    def _chat(self, messages: list[dict], options: ChatOptions) -> "str | ChatReply":
        """Send OpenAI-format messages; return the reply text (or a :class:`ChatReply` with
        log-probabilities). End by ``options.deadline``; raise :class:`MLLMError` on failure."""

    def _options(self, purpose: str, logprobs: bool = False, has_image: bool = False) -> ChatOptions:
        now = time.monotonic()
        call_at = now + self.timeout if self.timeout is not None else math.inf
        dialogue = current_deadline()
        if dialogue is not None and dialogue.at < call_at:
            at, kind, text = dialogue.at, "deadline", f"{dialogue.what}'s MLLM time ({dialogue.seconds:g} s)"
        else:
            at, kind, text = call_at, "timeout", f"{self.timeout:g} s" if self.timeout is not None else "no limit"
        return ChatOptions(purpose, self.temperature, self.max_tokens,
                           self.protocol.top_logprobs if (logprobs and self.logprobs) else None,
                           at, kind, text, has_image)

    def _send(self, messages: list[dict], purpose: str, logprobs: bool = False,
              image: ImageRef | None = None) -> ChatReply:
        """One request through the breaker and the deadlines; the reply sanitised."""
        self.breaker.before_call()
        options = self._options(purpose, logprobs, image is not None)
        if options.remaining() <= 0:
            raise options.expired_error()
        try:
            out = self._chat(messages, options)
        except MLLMError as e:
            if e.kind == "rejected-image" and image is not None:
                with self._images_lock:
                    self._rejected[image.id] = str(e)
            self.breaker.record(e)
            raise
        self.breaker.record(None)
        reply = out if isinstance(out, ChatReply) else ChatReply(out)  # type: ignore[arg-type]
        if not isinstance(reply.text, str):
            raise MLLMError(f"the reply is {type(reply.text).__name__}, not text", kind="bad-reply")
        reply.text = printable(reply.text, newlines=True)
        if not clean_reply(reply.text):
            raise MLLMError("the model returned an empty answer", kind="unparseable")
        log.debug("%s %s reply: %r", self.name, purpose, reply.text[:300])
        return reply

    def _reply(self, messages: list[dict], purpose: str = "complete") -> str:
        return self._send(messages, purpose).text

    # -- images ----------------------------------------------------------------------------

    def prepare(self, image: ImageRef) -> PreparedImage:
        """The photo as it will be sent (read upright, resized, JPEG), cached while the file is
        unchanged. Raises :class:`MLLMError`: ``rejected-image`` for a photo the server refused
        before (not sent again), ``bad-image`` when it cannot be read."""
        with self._images_lock:
            rejected = self._rejected.get(image.id)
        if rejected is not None:
            raise MLLMError(f"{rejected} (rejected before: not sent again)", kind="rejected-image")
        try:
            st = Path(image.path).stat()
            key: tuple = (image.id, str(image.path), st.st_mtime_ns, st.st_size)
        except OSError as e:
            raise MLLMError(f"cannot read image {image.path}: {e.strerror or e}", kind="bad-image") from None
        with self._images_lock:
            hit = self._prepared.get(key)
            if hit is not None:
                self._prepared.move_to_end(key)
                return hit
        prepared = prepare_image(image.path, self.image_limits)
        with self._images_lock:
            self._prepared[key] = prepared
            while len(self._prepared) > _IMAGE_CACHE:
                self._prepared.popitem(last=False)
        return prepared

    def image_messages(self, image: ImageRef, prompt: str) -> list[dict]:
        """The protocol's system prompt (if any) + one user turn with the image first, then the
        prompt. Records the size sent (:meth:`image_sent`)."""
        prepared = self.prepare(image)
        with self._images_lock:
            self._sent[image.id] = prepared.summary()
            self._sent.move_to_end(image.id)
            while len(self._sent) > _SENT_KEEP:
                self._sent.popitem(last=False)
        system = self.protocol.system_prompt
        return ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": prepared.data_uri()}},
                {"type": "text", "text": prompt},
            ]},
        ]

    # -- the interface ---------------------------------------------------------------------

    def _verify(self, image: ImageRef, text: str) -> Verdict:
        p = self.protocol
        messages = self.image_messages(image, p.verify.prompt.format(text=text.strip()))
        reply = self._send(messages, "verify", logprobs=True, image=image)
        said = clean_reply(reply.text)
        short = printable(said, max_len=200)
        if p.verify.yes_rule == "contains":
            match = contains_yes(said)
        else:
            reading = read_yes_no(said)
            if reading == "no-person":
                return Verdict(None, 0.0, f"{NO_PERSON}: {short}")
            match = reading == "yes"
        confidence, source, note = 1.0, "fixed", ""
        asked = self.logprobs
        found = yes_probability(reply.tokens) if reply.tokens else None
        if not asked:
            note = "confidence 1.0: log-probabilities not requested"
        elif found is None:
            note = "confidence 1.0: no log-probabilities for a yes/no token"
        elif (found[1] == "yes") != match:
            note = f"confidence 1.0: the first yes/no token ({found[1]}) differs from the reply's answer"
        else:
            p_yes = found[0]
            confidence, source = (p_yes if match else 1.0 - p_yes), "logprobs"
            note = f"p(yes) {p_yes:.3f} from log-probabilities"
        if match and p.person_check.mode == "question" and self._person_present(image) is False:
            return Verdict(None, 0.0, f"{NO_PERSON} (the verification said {short!r})")
        return Verdict(match, round(float(confidence), 6), f"{short} [{note}]", confidence_from=source)

    def _person_present(self, image: ImageRef) -> bool | None:
        """Whether the photo shows a person, asked once per photo (cached); None when the question
        failed (the caller goes on as without the check)."""
        key = (self.name, image.id, "person")
        hit = self._get(key)
        if hit is not None:
            return bool(hit)
        with self._images_lock:
            if image.id in self._rejected:  # the request itself fails at once with the remembered error
                return None
        # one question per photo even when several threads verify it at once
        lock = self._person_locks[hash(image.id) % len(self._person_locks)]
        wait = self._options("person").remaining()
        if not lock.acquire(timeout=min(max(wait, 0.0), 1e6)):
            return None
        try:
            hit = self._get(key)
            if hit is not None:
                return bool(hit)
            try:
                present = self._timed("person", self._ask_person, image)
            except MLLMError as e:
                log.info("%s: person check on %s failed (%s: %s); going on without it",
                         self.name, image.id, e.kind, e)
                return None
            self._put(key, present)
            return present
        finally:
            lock.release()

    def _ask_person(self, image: ImageRef) -> bool:
        messages = self.image_messages(image, self.protocol.person_check.prompt)
        reply = self._send(messages, "person", image=image)
        return read_yes_no(reply.text) == "yes"

    def _ask(self, image: ImageRef, slots: Sequence[str]) -> list[Answer]:
        p = self.protocol
        if p.person_check.mode == "question" and self._person_present(image) is False:
            return [Answer(s, None, 0.0, NO_PERSON) for s in slots]
        questions = p.questions_for(slots)
        prompt = p.ask.prompt.format(questions=p.question_lines(slots))
        reply = self._send(self.image_messages(image, prompt), "ask", image=image)
        split = parse_numbered if p.ask.split == "lines" else split_numbered
        by_number = split(reply.text, len(questions))
        answers: list[Answer] = []
        informative = False
        for i, (question, covered) in enumerate(questions):
            said = by_number.get(i + 1)
            if said is None:  # the model skipped this question: it cannot tell
                answers.extend(Answer(s, None, 0.0, "", question) for s in covered)
                continue
            said = printable(said, max_len=500)
            values = group_values(covered, said)
            if p.ask.answers == "text":
                informative = informative or bool(said)
            else:
                informative = informative or any(v is not None for v in values.values()) or is_unknown(said)
            answers.extend(Answer(s, values[s], 1.0 if values[s] is not None else 0.0, said, question)
                           for s in covered)
        if not informative:
            cleaned = printable(clean_reply(reply.text), max_len=160)
            if is_refusal(cleaned):
                raise MLLMError(f"the model refused: {cleaned[:120]!r}", kind="refused")
            raise MLLMError(f"no usable answer to {len(questions)} questions in {cleaned!r}", kind="unparseable")
        return answers

    def _fact_lines(self, facts: list[Answer]) -> list[str]:
        """The ``{facts}`` lines of the merge prompt: one per fact with a value (``ours``), or one
        per question answered in free text plus one per other fact with a value (``icl``)."""
        spec = self.protocol.merge
        known = [f for f in facts if f.value is not None]
        context = facts_context({f.slot: f.value for f in known})  # type: ignore[misc]
        lines: list[str] = []
        if spec.checked:
            items = [(f.question or SLOTS[f.slot].question, s, s) for f in known if (s := f.sentence(context))]
        else:
            items, seen = [], set()
            for f in facts:
                free = f.question and f.text and f.text not in (f.value, NO_PERSON)
                if free:
                    if f.question in seen:
                        continue
                    seen.add(f.question)
                    items.append((f.question, f"{f.question} {f.text}", f.text))
                elif f.value is not None and (s := f.sentence(context)):
                    items.append((SLOTS[f.slot].question, s, s))
        for n, (question, fact, answer) in enumerate(items, 1):
            lines.append(spec.fact.format(n=n, fact=fact, question=question, answer=answer))
        return lines

    def _merge(self, query: str, facts: list[Answer], budget: int | None,
               count_tokens: Callable[[str], int] | None) -> str:
        spec = self.protocol.merge
        lines = self._fact_lines(facts)
        if not lines:
            return grammar_merge(query, facts, budget, count_tokens) if spec.checked else query.strip()
        limit = spec.limit.format(words=max(5, budget * 3 // 4)) if (budget and spec.limit) else ""
        prompt = spec.prompt.format(query=query.strip(), facts="\n".join(lines), limit=limit)
        messages = ([{"role": "system", "content": spec.system_prompt}] if spec.system_prompt is not None else []) + [
            {"role": "user", "content": prompt}]
        if not spec.checked:  # the reply is the new query as it is (ICL)
            merged = self._clean_merge(self._send(messages, "merge").text)
            if not merged:
                raise MLLMError("the merge reply is empty", kind="unparseable")
            if is_refusal(merged):
                raise MLLMError(f"the model refused the merge: {merged[:120]!r}", kind="refused")
            return merged
        try:
            merged = self._clean_merge(self._send(messages, "merge").text)
        except MLLMError as e:
            # an unusable answer still leaves a good merge to make; a dead backend does not
            if e.kind not in ("unparseable", "refused", "bad-reply"):
                raise
            log.info("%s merge fell back to the grammar merge: %s", self.name, e)
            return grammar_merge(query, facts, budget, count_tokens)
        if not merged or is_refusal(merged):
            log.info("%s merge fell back to the grammar merge: empty or refused answer", self.name)
            return grammar_merge(query, facts, budget, count_tokens)
        if budget is not None and count_tokens is not None and count_tokens(merged) > budget:
            log.info("%s merge fell back to the grammar merge: %d tokens > budget %d",
                     self.name, count_tokens(merged), budget)
            return grammar_merge(query, facts, budget, count_tokens)
        stated, said = parse(query).constraints, parse(merged).constraints
        lost = {s: (v, said.get(s)) for s, v in stated.items() if said.get(s) != v}
        if lost:  # the rewrite dropped or altered what the user said: never trust it over the user
            log.info("%s merge fell back to the grammar merge: query details lost or changed %s", self.name, lost)
            return grammar_merge(query, facts, budget, count_tokens)
        return merged

    @staticmethod
    def _clean_merge(reply: str) -> str:
        text = clean_reply(reply)
        text = re.sub(r"^(?:here is|here's)[^:\n]*:\s*", "", text, flags=re.I)
        text = re.sub(r"^(?:merged\s+)?description\s*:\s*", "", text, flags=re.I)
        text = " ".join(text.split()).strip().strip('"“”').strip()
        return text

    def complete(self, prompt: str, system: str | None = None) -> str:
        """A text-only request (e.g. paraphrasing for RDA): the reply text. Counted as a merge call."""
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return self._timed("merge", lambda: clean_reply(self._send(messages, "complete").text))

    # -- several at once -------------------------------------------------------------------

    def verify_many(self, pairs: Sequence[tuple[ImageRef, str]],
                    return_exceptions: bool = False) -> list[Verdict | MLLMError]:
        """``verify`` each (image, text) pair, up to ``max_concurrency`` requests at a time.

        Goes through :meth:`verify`, so answers are cached and counted as usual, and each worker
        runs in a copy of the caller's context (its dialogue deadline applies). With
        ``return_exceptions`` a failed pair gives its :class:`MLLMError` in place of a verdict;
        otherwise the first failure is raised once all requests have finished.
        """
        pairs = list(pairs)
        if not pairs:
            return []
        # identical requests in one batch would all miss the cache at once: send each only once
        unique = list({(image.id, text): (image, text) for image, text in pairs}.values())

        def one(pair: tuple[ImageRef, str]) -> Verdict | MLLMError:
            try:
                return self.verify(*pair)
            except MLLMError as e:
                return e

        workers = max(1, min(int(self.max_concurrency), len(unique)))
        if workers == 1:
            done = [one(p) for p in unique]
        else:
            jobs = [(contextvars.copy_context(), p) for p in unique]  # one context copy per job
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{self.name}-verify") as pool:
                done = list(pool.map(lambda job: job[0].run(one, job[1]), jobs))
        by_key = {(image.id, text): r for (image, text), r in zip(unique, done)}
        results = [by_key[(image.id, text)] for image, text in pairs]
        if not return_exceptions:
            for r in results:
                if isinstance(r, MLLMError):
                    raise r
        return results
