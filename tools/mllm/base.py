"""One interface for every MLLM backend: ``verify``, ``ask``, ``merge``.

* ``verify(image, text) -> Verdict``: does the description fit the person in the photo (yes/no and
  a confidence)?
* ``ask(image, slots) -> list[Answer]``: answer human-attribute questions (one per slot of
  ``tools.attributes``) about the person in the photo.
* ``merge(query, facts, budget, count_tokens) -> str``: fold answers into the query as one
  description the text encoder can read.

Every backend call is counted and timed (``stats``), and verify/ask answers are cached by
(backend, image id, question), so asking again about the same photo costs nothing. Failures
(timeouts, refusals, unparseable answers) raise :class:`MLLMError`; callers skip that step. A
failed call counts as a failure (``stats.failures``, by kind), never as a call.

Deadlines: ``with dialogue_deadline(seconds):`` (or ``mllm.deadline(seconds)``) bounds every MLLM
call made in that context (that thread or task, and the threads and tasks it starts with a copy of
its context: LangGraph's node executors, :meth:`ChatMLLM.verify_many`). Concurrent dialogues each
set their own; a call made after the time is spent fails at once with kind ``deadline``; a call
in flight is cut at the deadline by backends that can cut it (the chat backends).

Meters: ``with metering() as meter:`` counts the calls made in that context (calls by kind,
failures by kind, milliseconds, cache hits), whatever backend makes them and in whichever thread
that copies the context: a dialogue counts its own calls, however many dialogues share a backend
(``stats`` counts every call the backend made). In a LangChain run tree each call is a child run
(``mllm.verify``, ``mllm.ask``, ...; :func:`tools.tracing.child_run`).
"""

from __future__ import annotations

import contextvars
import math
import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from tools.attributes import NONE, SLOTS, phrase
from tools.photos import PhotoError, photo_changed
from tools.text import printable
from tools.tracing import child_run


class MLLMError(RuntimeError):
    """A backend call failed; the caller skips that step. ``kind`` says why:

    ``timeout`` (no complete answer within the call's deadline), ``deadline`` (the dialogue's MLLM
    time is spent), ``unreachable`` (no connection), ``unavailable`` (not tried: the circuit breaker
    is open after an earlier ``unreachable``/``timeout``), ``rejected-image`` (the server refused
    this photo; it is not sent again), ``bad-image`` (the photo cannot be read or encoded),
    ``bad-reply`` (the server's body is not a usable chat completion), ``unparseable``, ``refused``,
    ``load`` (a local model cannot be loaded), ``stale-image`` (not tried: the photo was deleted,
    emptied or replaced since it was indexed), ``error`` (anything else).

    The message is one line with control characters and escape sequences removed (it may quote
    the server).
    """

    def __init__(self, message: str, kind: str = "error"):
        super().__init__(printable(message, max_len=600))
        self.kind = kind


@dataclass(frozen=True)
class ImageRef:
    """A gallery image: its stable id (cache key) and where to read it; ``stamp`` is the file's
    ``(bytes, mtime_ns)`` when it was indexed (None: not recorded), so that a photo deleted, emptied
    or replaced since is not judged as if it were the one indexed (:meth:`changed`)."""

    id: str
    path: Path
    stamp: tuple[int, int] | None = field(default=None, compare=False)

    def changed(self) -> str | None:
        """Why the file is no longer the photo indexed (gone, empty, other size or time), or None."""
        if self.stamp is None:
            return None
        return photo_changed(self.path, {"bytes": self.stamp[0], "mtime_ns": self.stamp[1]})


@dataclass
class Verdict:
    """A verification answer. ``match`` is None when the backend abstains: it has no evidence either
    way (nothing in the description it can check, or no person in the photo); callers treat an
    abstention as no verdict, never as a yes or a no.

    ``confidence`` is the probability of the verdict as given (p(yes) for a yes, 1 - p(yes) for a
    no); ``confidence_from`` says where it comes from: ``logprobs`` (the server's token
    log-probabilities), ``fixed`` (a chat reply without them: 1.0), ``model`` (the backend's own
    calibrated probability), or ``""`` (not stated).
    """

    match: bool | None
    confidence: float
    reason: str = ""
    cached: bool = False
    confidence_from: str = ""


@dataclass
class Answer:
    """The answer to one slot's question. ``value`` is None when the backend cannot tell.

    ``text`` is what the backend said (free text, control characters removed) and ``question`` the
    question it answered, when the protocol asks open questions that cover several slots (the
    ``icl`` protocol: those slots share one ``text``); a merge may use the text rather than the
    value.
    """

    slot: str
    value: str | None
    confidence: float = 1.0
    text: str = ""
    question: str = ""

    def sentence(self, context: dict | None = None) -> str:
        if self.value is None:
            return ""
        return phrase(self.slot, self.value, context)

    def to_dict(self) -> dict:
        return asdict(self)


CALL_KINDS = ("verify", "ask", "merge", "person")


@dataclass
class CallStats:
    """Completed backend calls by kind and their milliseconds; failed calls by error kind and
    their milliseconds; cache hits. A failed call is a failure, not a call. ``person`` counts the
    person-presence questions of protocols that ask them."""

    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CALL_KINDS, 0))
    ms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CALL_KINDS, 0.0))
    cache_hits: int = 0
    failures: int = 0
    failures_by_kind: dict[str, int] = field(default_factory=dict)
    failed_ms: float = 0.0

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def snapshot(self) -> dict:
        return {"calls": dict(self.calls), "ms": {k: round(v, 2) for k, v in self.ms.items()},
                "cache_hits": self.cache_hits, "failures": self.failures,
                "failures_by_kind": dict(self.failures_by_kind), "failed_ms": round(self.failed_ms, 2),
                "total_calls": self.total_calls}


class CallMeter:
    """The MLLM calls made in one scope (see :func:`metering`): completed calls by kind, failed
    calls by error kind, milliseconds of each, cache hits. Thread-safe (``verify_many``'s workers
    add to their caller's meter)."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.failures_by_kind: dict[str, int] = {}
        self.ms = 0.0  # completed calls
        self.failed_ms = 0.0
        self.cache_hits = 0
        self._lock = threading.Lock()

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    @property
    def failures(self) -> int:
        return sum(self.failures_by_kind.values())

    def _call(self, kind: str, ms: float) -> None:
        with self._lock:
            self.calls[kind] = self.calls.get(kind, 0) + 1
            self.ms += ms

    def _failure(self, kind: str, ms: float) -> None:
        with self._lock:
            self.failures_by_kind[kind] = self.failures_by_kind.get(kind, 0) + 1
            self.failed_ms += ms

    def _hit(self) -> None:
        with self._lock:
            self.cache_hits += 1

    def snapshot(self) -> dict:
        """Plain values: ``calls`` (total), ``by_kind``, ``failures``, ``failures_by_kind``, ``ms``
        (completed and failed calls together), ``cache_hits``."""
        with self._lock:
            return {"calls": sum(self.calls.values()), "by_kind": dict(self.calls),
                    "failures": sum(self.failures_by_kind.values()), "failures_by_kind": dict(self.failures_by_kind),
                    "ms": round(self.ms + self.failed_ms, 2), "cache_hits": self.cache_hits}


_METERS: contextvars.ContextVar[tuple[CallMeter, ...]] = contextvars.ContextVar("thi_mllm_meters", default=())
#: the backend whose call is running: a backend wrapping another (a noisy verifier, a test double)
#: makes one call, not two, on the meters; a backend's own extra request (the person check inside
#: a verification) is a call of its own
_IN_CALL: contextvars.ContextVar[object | None] = contextvars.ContextVar("thi_mllm_in_call", default=None)


@contextmanager
def metering() -> Iterator[CallMeter]:
    """Count the MLLM calls made inside the ``with`` block (in this context, and in the threads and
    tasks it starts with a copy of it) on a new :class:`CallMeter`. Meters nest: a call counts on
    every meter open around it."""
    meter = CallMeter()
    token = _METERS.set(_METERS.get() + (meter,))
    try:
        yield meter
    finally:
        _METERS.reset(token)


class Deadline:
    """A point in time (``time.monotonic``) by which MLLM work must end.

    >>> d = Deadline(30.0)
    >>> 29.0 < d.remaining() <= 30.0 and not d.expired
    True
    """

    def __init__(self, seconds: float, what: str = "the dialogue"):
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"a deadline needs a finite number of seconds >= 0, not {seconds!r}")
        self.seconds = float(seconds)
        self.what = what
        self.at = time.monotonic() + self.seconds

    def remaining(self) -> float:
        """Seconds left (negative once passed)."""
        return self.at - time.monotonic()

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0

    def error(self) -> "MLLMError":
        return MLLMError(f"{self.what}'s MLLM time ({self.seconds:g} s) is spent", kind="deadline")

    def __repr__(self) -> str:
        return f"Deadline({self.seconds:g} s, {self.remaining():.2f} s left)"


_DEADLINE: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("thi_mllm_deadline", default=None)


@contextmanager
def dialogue_deadline(seconds: "float | Deadline | None", what: str = "the dialogue") -> Iterator[Deadline | None]:
    """Bound every MLLM call made inside the ``with`` block (in this context) to ``seconds`` in all.

    A :class:`Deadline` may be given instead of seconds, to carry one dialogue's bound across
    several blocks (a dialogue resumed after a human's answer). ``None`` sets no new bound. Nested
    blocks keep the earlier of the two deadlines. The bound
    belongs to the current context (thread or asyncio task, and the copies of its context that
    LangGraph and :meth:`ChatMLLM.verify_many` hand to their worker threads), so concurrent
    dialogues on one backend each have their own.

    >>> with dialogue_deadline(60) as d:  # doctest: +SKIP
    ...     graph.invoke({"query": q}, context=ctx)
    """
    if seconds is None:
        yield _DEADLINE.get()
        return
    new = seconds if isinstance(seconds, Deadline) else Deadline(seconds, what)
    outer = _DEADLINE.get()
    token = _DEADLINE.set(outer if outer is not None and outer.at <= new.at else new)
    try:
        yield _DEADLINE.get()
    finally:
        _DEADLINE.reset(token)


def current_deadline() -> Deadline | None:
    """The dialogue deadline of the current context, if any."""
    return _DEADLINE.get()


def facts_context(facts: dict[str, str]) -> dict[str, str]:
    """Parent items for phrasing colour answers ("a red cap" needs the hat)."""
    return dict(facts)


class MLLM(ABC):
    """Base class: caching, counting and timing around the backend's ``_verify``/``_ask``/``_merge``."""

    name: str = "mllm"
    #: True for backends that read ground truth (simulation only).
    is_oracle: bool = False
    #: True for backends that understand a description only through ``tools.mllm.parser`` (the
    #: offline and oracle backends): a description it reads nothing in gives them nothing to check
    parses_descriptions: bool = False
    #: the chat protocol (:class:`tools.mllm.protocols.Protocol`); None for backends without prompts
    protocol = None

    def __init__(self, cache: bool = True):
        self.stats = CallStats()
        self._cache: dict[tuple, object] = {} if cache else None  # type: ignore[assignment]
        self._lock = threading.Lock()

    @property
    def fingerprint(self) -> str:
        """What decides this backend's answers (name, plus model and weights where known): a resumed
        offline job (RDA) refuses to mix answers from two different fingerprints."""
        return self.name

    @property
    def unavailable(self) -> MLLMError | None:
        """The error that made this backend stop trying (its circuit breaker is open), or None.

        A CLI checks it after a run: when set, the server could not be used at all, and the run
        should end with that error in one line and a non-zero exit."""
        return None

    def preflight(self) -> None:
        """Check, before a run, that the backend can answer at all (a server: reachable, serving the
        model); raise :class:`MLLMError` in one line when it cannot. Backends without a server
        have nothing to check."""

    def image_sent(self, image_id: str) -> dict | None:
        """What was last sent for this photo (``{"width", "height", "bytes", "original",
        "quality"}``), or None (not sent, or a backend that sends no images)."""
        return None

    @staticmethod
    def deadline(seconds: "float | Deadline | None", what: str = "the dialogue"):
        """:func:`dialogue_deadline`: ``with mllm.deadline(60): ...`` bounds the MLLM calls of one
        dialogue (every backend's, in this context)."""
        return dialogue_deadline(seconds, what)

    # -- the interface ---------------------------------------------------------------------

    def verify(self, image: ImageRef, text: str) -> Verdict:
        _check_unchanged(image)
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
        _check_unchanged(image)
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
                if a.slot not in SLOTS:
                    continue
                # an open question may answer slots not asked for (the icl protocol's grouped
                # questions): keep them for later, return what was asked
                self._put((self.name, image.id, "ask", a.slot), a)
                if a.slot in missing:
                    answers[a.slot] = a
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
        """Run one call: counted and timed as a call when it returns, as a failure (by error kind)
        when it raises :class:`MLLMError`. Fails at once when the dialogue deadline has passed."""
        running = _IN_CALL.get()
        meters = _METERS.get() if running is None or running is self else ()
        with child_run(f"mllm.{kind}", _trace_inputs(args), tags=("mllm",),
                       metadata={"mllm_backend": self.name, **self._trace_metadata()}) as run:
            t0 = time.perf_counter()
            try:
                deadline = _DEADLINE.get()
                if deadline is not None and deadline.expired:
                    raise deadline.error()
                nested = _IN_CALL.set(self if running is None else running)
                try:
                    result = fn(*args)
                except PhotoError as e:  # the photo cannot be read (a backend reading it itself)
                    raise MLLMError(str(e), kind="bad-image") from None
                finally:
                    _IN_CALL.reset(nested)
            except MLLMError as e:
                ms = (time.perf_counter() - t0) * 1000
                with self._lock:
                    self.stats.failures += 1
                    self.stats.failures_by_kind[e.kind] = self.stats.failures_by_kind.get(e.kind, 0) + 1
                    self.stats.failed_ms += ms
                for meter in meters:
                    meter._failure(e.kind, ms)
                raise
            ms = (time.perf_counter() - t0) * 1000
            with self._lock:
                self.stats.calls[kind] = self.stats.calls.get(kind, 0) + 1
                self.stats.ms[kind] = self.stats.ms.get(kind, 0.0) + ms
            for meter in meters:
                meter._call(kind, ms)
            if run is not None:
                run.outputs = _trace_outputs(result)
        return result

    def _trace_metadata(self) -> dict:
        """What a trace's MLLM runs say about this backend besides its name (model, protocol)."""
        out = {}
        model = getattr(self, "model", None)
        if isinstance(model, str):
            out["mllm_model"] = model
        if self.protocol is not None:
            out["mllm_protocol"] = self.protocol.name
        return out

    def _get(self, key: tuple):
        if self._cache is None:
            return None
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self.stats.cache_hits += 1
        if hit is not None and _IN_CALL.get() in (None, self):
            for meter in _METERS.get():
                meter._hit()
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


def _trace_inputs(args: tuple) -> dict:
    """A call's arguments as a trace shows them: image ids, texts, slot lists (no pixels)."""
    out: dict = {}
    for n, a in enumerate(args):
        if isinstance(a, ImageRef):
            out["image"] = a.id
        elif isinstance(a, str):
            out["text" if "text" not in out else f"arg{n}"] = a
        elif isinstance(a, (list, tuple)) and all(isinstance(x, str) for x in a):
            out["slots"] = list(a)
        elif isinstance(a, (list, tuple)) and all(isinstance(x, Answer) for x in a):
            out["facts"] = [{"slot": x.slot, "value": x.value} for x in a]
    return out


def _trace_outputs(result: object) -> dict:
    if isinstance(result, Verdict):
        return {"match": result.match, "confidence": result.confidence, "reason": result.reason}
    if isinstance(result, list) and all(isinstance(x, Answer) for x in result):
        return {"answers": {a.slot: a.value for a in result}}
    if isinstance(result, (str, bool)):
        return {"output": result}
    return {}


def _check_unchanged(image: ImageRef) -> None:
    reason = image.changed() if isinstance(image, ImageRef) else None
    if reason:
        raise MLLMError(f"{image.id}: {reason}", kind="stale-image")


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
