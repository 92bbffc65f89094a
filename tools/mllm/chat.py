"""Shared logic of chat-style MLLM backends: prompts in, free text out, parsed into the interface.

A chat backend only has to implement ``_chat(messages) -> str`` over OpenAI-format messages::

    [{"role": "system", "content": "..."},
     {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}},
                                  {"type": "text", "text": "..."}]}]

:class:`ChatMLLM` builds those messages for ``verify`` (one image + the description, a yes/no
answer), ``ask`` (one image + all questions numbered, one numbered answer line each, mapped onto the
slot vocabulary of ``tools.attributes``) and ``merge`` (text only; falls back to the grammar merge
when the answer is empty, refused, over the token budget, or loses or alters a detail the query
parser reads in the query).

The prompts are module-level constants so they can be read, tuned and tested apart from the logic.
The parsing helpers (:func:`parse_yes_no`, :func:`parse_numbered`, :func:`answer_value`) are pure
functions and are tested directly.
"""

from __future__ import annotations

import base64
import logging
import re
from abc import abstractmethod
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path
from typing import Callable, Sequence

from tools.attributes import NONE, SLOTS

from .base import MLLM, Answer, ImageRef, MLLMError, Verdict, facts_context, grammar_merge
from .parser import parse

log = logging.getLogger(__name__)

# -- prompts -----------------------------------------------------------------------------------
# The merge keeps the user's words verbatim because agents.rewriter.Rewriter discards any merge
# that does not contain the query as typed (the user's words outrank a paraphrase).

SYSTEM_PROMPT = (
    "You look at photos of pedestrians taken by street cameras and answer questions about the "
    "appearance of the main person in the photo. Answer only from what the photo shows, briefly, "
    "in exactly the format asked for."
)

VERIFY_PROMPT = (
    'Description: "{text}"\n\n'
    "Does this description fit the person in the photo? Details the photo cannot show do not count "
    'against it; answer "no" only if something visible contradicts the description.\n'
    "Answer with one word: yes or no."
)

ASK_PROMPT = (
    "Answer these questions about the person in the photo.\n\n"
    "{questions}\n\n"
    'Reply with one line per question, in the same order, in the form "<number>. <answer>". '
    "Answer each question with one of the options listed after it "
    '("none" means the person has no such thing), or with "not visible" when the photo does not '
    "show it. No other text."
)

#: one numbered question; ``options`` lists the slot's allowed values
ASK_QUESTION = "{n}. {question} Options: {options}."

MERGE_SYSTEM_PROMPT = "You edit short descriptions of pedestrians for a person-search engine."

MERGE_PROMPT = (
    'Description: "{query}"\n\n'
    "New facts about the same person:\n{facts}\n\n"
    "Write one fluent description of this person: keep the description above word for word at the "
    "start, then continue it with the new facts, joining facts about the same item (\"a black cap\") "
    "and leaving out what the description already says. Do not invent anything else.{limit} "
    "Reply with the description only."
)

#: appended to MERGE_PROMPT when a token budget is given (tokens are roughly 3/4 of a word)
MERGE_LIMIT = " Use at most {words} words."

# -- parsing -----------------------------------------------------------------------------------

# reasoning models (Qwen3, DeepSeek-R1 served by vLLM/Ollama) may prepend their thoughts
_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.S | re.I)
_MARKUP = re.compile(r"[*_`#]+")
_LEADING_YES_NO = re.compile(r"^\W*(yes|no)\b", re.I)
_ANSWER_IS = re.compile(r"\b(?:answer|verdict)\s*(?:is|:)\s*\W*(yes|no)\b", re.I)
_REFUSAL = re.compile(
    r"\b(?:i\s*(?:can(?:'|’|no)?t|cannot|am\s+(?:not\s+able|unable)|'m\s+(?:not\s+able|unable)|won't|will\s+not)"
    r"|sorry|as\s+an\s+ai)\b", re.I)
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


def clean_reply(text: str) -> str:
    """The model's reply without reasoning blocks and markdown emphasis, whitespace-trimmed."""
    return _MARKUP.sub("", _THINK.sub("", text or "")).strip()


def is_refusal(text: str) -> bool:
    """Whether a reply opens with a refusal ("I can't help with that", "Sorry, ...")."""
    return bool(_REFUSAL.search(text[:80]))


def parse_yes_no(text: str) -> bool:
    """``True``/``False`` for a yes/no reply ("Yes.", "no", "YES, ...", "The answer is no").

    Raises :class:`MLLMError` with kind ``refused`` for a refusal, ``unparseable`` otherwise.
    """
    reply = clean_reply(text)
    m = _LEADING_YES_NO.match(reply) or _ANSWER_IS.search(reply)
    if m:
        return m.group(1).lower() == "yes"
    if is_refusal(reply):
        raise MLLMError(f"the model refused: {reply[:120]!r}", kind="refused")
    # a sentence that says exactly one of the two words ("It is a yes from me") still answers
    words = set(re.findall(r"\b(yes|no)\b", reply.lower()))
    if len(words) == 1:
        return words.pop() == "yes"
    raise MLLMError(f"no yes/no answer in {reply[:120]!r}", kind="unparseable")


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


def image_data_uri(path: str | Path) -> str:
    """The image file as a ``data:image/jpeg;base64,...`` URI (JPEGs are sent as they are)."""
    try:
        data = Path(path).read_bytes()
        if not data.startswith(b"\xff\xd8"):  # not a JPEG: re-encode so the MIME type is honest
            from PIL import Image

            with Image.open(BytesIO(data)) as im:
                buf = BytesIO()
                im.convert("RGB").save(buf, "JPEG", quality=95)
                data = buf.getvalue()
    except OSError as e:
        raise MLLMError(f"cannot read image {path}: {e}", kind="bad-image") from None
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


# -- the backend -------------------------------------------------------------------------------


class ChatMLLM(MLLM):
    """An MLLM reached through chat messages; subclasses implement :meth:`_chat`.

    >>> class Echo(ChatMLLM):
    ...     name = "echo"
    ...     def _chat(self, messages):
    ...         return "Yes."
    >>> Echo().verify(ImageRef("a.jpg", Path("a.jpg")), "a man in a red coat").match  # doctest: +SKIP
    True
    """

    name = "chat"
    #: parallel requests in :meth:`verify_many` (1: one after the other)
    max_concurrency: int = 1

    @abstractmethod
    def _chat(self, messages: list[dict]) -> str:
        """Send OpenAI-format messages, return the reply text; raise :class:`MLLMError` on failure."""

    # -- messages --------------------------------------------------------------------------

    def image_messages(self, image: ImageRef, prompt: str) -> list[dict]:
        """System prompt + one user turn with the image first, then the prompt."""
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": image_data_uri(image.path)}},
                {"type": "text", "text": prompt},
            ]},
        ]

    def _reply(self, messages: list[dict]) -> str:
        reply = self._chat(messages)
        if not isinstance(reply, str) or not clean_reply(reply):
            raise MLLMError("the model returned an empty answer", kind="unparseable")
        log.debug("%s reply: %r", self.name, reply[:300])
        return reply

    # -- the interface ---------------------------------------------------------------------

    def _verify(self, image: ImageRef, text: str) -> Verdict:
        reply = self._reply(self.image_messages(image, VERIFY_PROMPT.format(text=text.strip())))
        match = parse_yes_no(reply)
        return Verdict(match, 1.0, clean_reply(reply)[:200])

    def _ask(self, image: ImageRef, slots: Sequence[str]) -> list[Answer]:
        questions = "\n".join(
            ASK_QUESTION.format(n=i + 1, question=SLOTS[s].question, options=", ".join(SLOTS[s].values))
            for i, s in enumerate(slots))
        reply = self._reply(self.image_messages(image, ASK_PROMPT.format(questions=questions)))
        by_number = parse_numbered(reply, len(slots))
        answers, informative = [], False
        for i, slot in enumerate(slots):
            said = by_number.get(i + 1)
            if said is None:  # the model skipped this question: it cannot tell
                answers.append(Answer(slot, None, 0.0, ""))
                continue
            value = answer_value(slot, said)
            informative = informative or value is not None or is_unknown(said)
            answers.append(Answer(slot, value, 1.0 if value is not None else 0.0, said))
        if not informative:
            cleaned = clean_reply(reply)
            if is_refusal(cleaned):
                raise MLLMError(f"the model refused: {cleaned[:120]!r}", kind="refused")
            raise MLLMError(f"no usable answer to {len(slots)} questions in {cleaned[:160]!r}", kind="unparseable")
        return answers

    def _merge(self, query: str, facts: list[Answer], budget: int | None,
               count_tokens: Callable[[str], int] | None) -> str:
        known = [f for f in facts if f.value is not None]
        if not known:
            return grammar_merge(query, facts, budget, count_tokens)
        context = facts_context({f.slot: f.value for f in known})  # type: ignore[misc]
        sentences = [s for s in (f.sentence(context) for f in known) if s]
        limit = MERGE_LIMIT.format(words=max(5, budget * 3 // 4)) if budget else ""
        prompt = MERGE_PROMPT.format(query=query.strip(), facts="\n".join(f"- {s}" for s in sentences), limit=limit)
        messages = [{"role": "system", "content": MERGE_SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
        try:
            merged = self._clean_merge(self._reply(messages))
        except MLLMError as e:
            # an unusable answer still leaves a good merge to make; a dead backend does not
            if e.kind not in ("unparseable", "refused"):
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
        return self._timed("merge", lambda: clean_reply(self._reply(messages)))

    # -- several at once -------------------------------------------------------------------

    def verify_many(self, pairs: Sequence[tuple[ImageRef, str]],
                    return_exceptions: bool = False) -> list[Verdict | MLLMError]:
        """``verify`` each (image, text) pair, up to ``max_concurrency`` requests at a time.

        Goes through :meth:`verify`, so answers are cached and counted as usual. With
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
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{self.name}-verify") as pool:
                done = list(pool.map(one, unique))
        by_key = {(image.id, text): r for (image, text), r in zip(unique, done)}
        results = [by_key[(image.id, text)] for image, text in pairs]
        if not return_exceptions:
            for r in results:
                if isinstance(r, MLLMError):
                    raise r
        return results
