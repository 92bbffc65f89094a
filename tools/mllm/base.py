"""One interface for every MLLM backend: ``verify``, ``ask``, ``merge``.

* ``verify(image, text) -> Verdict``: does the description fit the person in the photo (yes/no and
  a confidence)?
* ``ask(image, slots) -> list[Answer]``: answer human-attribute questions (one per slot of
  ``tools.attributes``) about the person in the photo.
* ``merge(query, facts, budget, count_tokens) -> str``: fold answers into the query as one
  description the text encoder can read.

Every backend call is counted and timed (``stats``), and verify/ask answers are cached by
(backend, image id, question), so asking again about the same photo costs nothing. Failures
(timeouts, refusals, unparseable answers) raise :class:`MLLMError`; callers skip that step.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from tools.attributes import NONE, SLOTS, phrase


class MLLMError(RuntimeError):
    """A backend call failed (timeout, refusal, unparseable answer). ``kind`` says which."""

    def __init__(self, message: str, kind: str = "error"):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ImageRef:
    """A gallery image: its stable id (cache key) and where to read it."""

    id: str
    path: Path


@dataclass
class Verdict:
    """A verification answer. ``match`` is None when the backend abstains: it has no evidence either
    way (nothing in the description it can check, or no person in the photo); callers treat an
    abstention as no verdict, never as a yes or a no."""

    match: bool | None
    confidence: float
    reason: str = ""
    cached: bool = False


@dataclass
class Answer:
    """The answer to one slot's question. ``value`` is None when the backend cannot tell."""

    slot: str
    value: str | None
    confidence: float = 1.0
    text: str = ""

    def sentence(self, context: dict | None = None) -> str:
        if self.value is None:
            return ""
        return phrase(self.slot, self.value, context)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CallStats:
    """Backend calls by kind, their total milliseconds, and cache hits."""

    calls: dict[str, int] = field(default_factory=lambda: {"verify": 0, "ask": 0, "merge": 0})
    ms: dict[str, float] = field(default_factory=lambda: {"verify": 0.0, "ask": 0.0, "merge": 0.0})
    cache_hits: int = 0
    failures: int = 0

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def snapshot(self) -> dict:
        return {"calls": dict(self.calls), "ms": {k: round(v, 2) for k, v in self.ms.items()},
                "cache_hits": self.cache_hits, "failures": self.failures, "total_calls": self.total_calls}


def facts_context(facts: dict[str, str]) -> dict[str, str]:
    """Parent items for phrasing colour answers ("a red cap" needs the hat)."""
    return dict(facts)


class MLLM(ABC):
    """Base class: caching, counting and timing around the backend's ``_verify``/``_ask``/``_merge``."""

    name: str = "mllm"
    #: True for backends that read ground truth (simulation only).
    is_oracle: bool = False

    def __init__(self, cache: bool = True):
        self.stats = CallStats()
        self._cache: dict[tuple, object] = {} if cache else None  # type: ignore[assignment]
        self._lock = threading.Lock()

    @property
    def fingerprint(self) -> str:
        """What decides this backend's answers (name, plus model and weights where known): a resumed
        offline job (RDA) refuses to mix answers from two different fingerprints."""
        return self.name

    # -- the interface ---------------------------------------------------------------------

    def verify(self, image: ImageRef, text: str) -> Verdict:
        key = (self.name, image.id, "verify", text)
        hit = self._get(key)
        if hit is not None:
            return Verdict(**{**asdict(hit), "cached": True})  # type: ignore[arg-type]
        verdict = self._timed("verify", self._verify, image, text)
        self._put(key, verdict)
        return verdict

    def ask(self, image: ImageRef, slots: Sequence[str]) -> list[Answer]:
        unknown = [s for s in slots if s not in SLOTS]
        if unknown:
            raise ValueError(f"unknown attribute slots: {unknown}")
        answers: dict[str, Answer] = {}
        missing = []
        for s in slots:
            hit = self._get((self.name, image.id, "ask", s))
            if hit is not None:
                answers[s] = hit  # type: ignore[assignment]
            else:
                missing.append(s)
        if missing:
            fresh = self._timed("ask", self._ask, image, missing)
            for a in fresh:
                if a.slot in missing:
                    answers[a.slot] = a
                    self._put((self.name, image.id, "ask", a.slot), a)
            for s in missing:  # the backend skipped a question: it cannot tell
                answers.setdefault(s, Answer(s, None, 0.0, ""))
        return [answers[s] for s in slots]

    def prefetch(self, images: Sequence[ImageRef]) -> None:
        """A hint that these images are about to be asked about; backends that can look at many
        images in one pass (the offline recogniser) do it here. Not a call."""

    def merge(self, query: str, facts: Sequence[Answer], budget: int | None = None,
              count_tokens: Callable[[str], int] | None = None) -> str:
        """One description: the query with the facts folded in (within ``budget`` tokens when given)."""
        return self._timed("merge", self._merge, query, list(facts), budget, count_tokens)

    # -- for backends ----------------------------------------------------------------------

    @abstractmethod
    def _verify(self, image: ImageRef, text: str) -> Verdict: ...

    @abstractmethod
    def _ask(self, image: ImageRef, slots: Sequence[str]) -> list[Answer]: ...

    def _merge(self, query: str, facts: list[Answer], budget: int | None,
               count_tokens: Callable[[str], int] | None) -> str:
        return grammar_merge(query, facts, budget, count_tokens)

    # -- plumbing ---------------------------------------------------------------------------

    def _timed(self, kind: str, fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        except MLLMError:
            with self._lock:
                self.stats.failures += 1
            raise
        finally:
            with self._lock:
                self.stats.calls[kind] += 1
                self.stats.ms[kind] += (time.perf_counter() - t0) * 1000

    def _get(self, key: tuple):
        if self._cache is None:
            return None
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self.stats.cache_hits += 1
            return hit

    def _put(self, key: tuple, value: object) -> None:
        if self._cache is not None:
            with self._lock:
                self._cache[key] = value

    def reset_stats(self) -> None:
        self.stats = CallStats()

    def clear_cache(self) -> None:
        """Forget cached answers (benchmarks do this between dialogues, so that the calls counted per
        query are what a dialogue costs on its own)."""
        if self._cache is not None:
            with self._lock:
                self._cache.clear()


def grammar_merge(query: str, facts: Sequence[Answer], budget: int | None = None,
                  count_tokens: Callable[[str], int] | None = None) -> str:
    """Keep the query's own words and append the new facts as short sentences, most useful first,
    while they fit the budget. Facts the query already states are not repeated."""
    from tools.mllm.parser import parse

    stated = parse(query).constraints
    known = {**{f.slot: f.value for f in facts if f.value is not None}, **stated}
    sentences = []
    covered: set[str] = set()
    for f in facts:
        if f.value is None or f.slot in stated or f.slot in covered:
            continue
        if f.value == NONE and not SLOTS[f.slot].has_absent:
            continue
        sentences.append(_fact_sentence(f, known, covered))
    text = query.strip()
    if text and text[-1] not in ".!?":
        text += "."
    for sentence in sentences:
        if not sentence:
            continue
        candidate = f"{text} {sentence}"
        if budget is not None and count_tokens is not None and count_tokens(candidate) > budget:
            continue  # a later, shorter fact may still fit
        text = candidate
    return text


def _fact_sentence(f: Answer, known: dict[str, str | None], covered: set[str]) -> str:
    """A sentence for one fact, folding its colour or item in when both are known ("a red cap")."""
    from tools.attributes import COLOR_PARENT

    covered.add(f.slot)
    children = {c: p for c, p in COLOR_PARENT.items()}
    if f.slot in children.values():  # an item: say its colour with it when known
        colour_slot = next(c for c, p in children.items() if p == f.slot)
        colour = known.get(colour_slot)
        if colour and f.value != NONE:
            covered.add(colour_slot)
            return phrase(colour_slot, colour, {f.slot: f.value})
    if f.slot in children:  # a colour: name its item when known
        return phrase(f.slot, f.value, {children[f.slot]: known.get(children[f.slot])})  # type: ignore[arg-type]
    return phrase(f.slot, f.value)  # type: ignore[arg-type]
