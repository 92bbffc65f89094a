"""MLLM backend for any OpenAI-compatible chat-completions server with image input.

Works with vLLM (``vllm serve Qwen/Qwen2-VL-7B-Instruct``), Ollama (``http://localhost:11434/v1``),
LM Studio and OpenAI itself, through the maintained ``openai`` client (no hand-written HTTP).

Configuration, by argument or environment:

* ``THI_MLLM_BASE_URL``: the server's ``/v1`` URL (default ``http://localhost:8000/v1``, vLLM's);
* ``THI_MLLM_MODEL``: the served model name (default: the first model the server lists);
* ``THI_MLLM_API_KEY``, else ``OPENAI_API_KEY``, else ``"EMPTY"`` (vLLM and Ollama ignore it).

Deadlines: ``timeout`` bounds a whole call (connecting, sending, every byte of the answer, the
client's retries and its waits between them); a dialogue deadline set with
``mllm.deadline(seconds)`` bounds all calls of a dialogue. The request runs on the async client in
a private event loop and is cancelled (its connection closed) when the deadline passes
(:mod:`tools.mllm.transport`), because httpx's own read timeout restarts with every byte.

Retries: within those deadlines the ``openai`` client retries connection errors, timeouts,
408/409/429 and 5xx answers itself, ``max_retries`` times, with exponential backoff (0.5 s doubling
up to 8 s, with jitter) or after the server's ``Retry-After``.

Failures become an :class:`MLLMError`: ``timeout`` (the call's deadline passed), ``deadline`` (the
dialogue's), ``unreachable`` (no connection), ``rejected-image`` (HTTP 400/413/422 about the photo:
too small, too large, prompt too long; the photo is not sent again), ``bad-reply`` (malformed or
empty JSON, no choices, a null message), ``refused``, ``unparseable`` (an empty answer), ``error``
(any other HTTP error). After an ``unreachable`` or ``timeout`` failure the circuit breaker stops
the backend from trying again (``unavailable``; see :class:`tools.mllm.chat.CircuitBreaker`).

Log-probabilities: yes/no questions are sent with ``logprobs=true, top_logprobs=k`` when the
protocol asks for them (``ours``); p(yes) is read from the first answer token. A server that
refuses the parameter (HTTP 400 naming it) is asked without it from then on.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import weakref
from typing import Any, Awaitable, Callable

from .base import MLLMError
from .chat import ChatMLLM, ChatOptions, ChatReply, logprob_tokens
from .chat import response_part as _get
from .transport import DeadlineExceeded, LoopThread

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://localhost:8000/v1"

# what a 4xx about the photo says (vLLM/transformers for Qwen2-VL: "height:10 or width:10 must be
# larger than factor:28", "absolute aspect ratio must be smaller than 200", "This model's maximum
# context length is 4096 tokens. However, you requested ..."; Ollama/OpenAI: "image too large",
# "invalid image", "prompt is too long")
_IMAGE_TROUBLE = re.compile(
    r"image|pixel|resolution|aspect\s+ratio|factor|too\s+(?:long|large|big|small)|context\s+length"
    r"|maximum\s+context|prompt\s+(?:is\s+)?too|payload|request\s+entity|body\s+(?:is\s+)?too", re.I)


class OpenAIMLLM(ChatMLLM):
    """An OpenAI-compatible server behind the MLLM interface.

    >>> mllm = OpenAIMLLM(base_url="http://localhost:8000/v1", model="Qwen/Qwen2-VL-7B-Instruct")  # doctest: +SKIP
    >>> mllm.verify(ImageRef("0001.jpg", Path("imgs/0001.jpg")), "a woman in a red coat")  # doctest: +SKIP
    Verdict(match=True, confidence=0.9731, reason='Yes. [p(yes) 0.973 from log-probabilities]', ...)
    >>> with mllm.deadline(60):  # every call of this dialogue ends within 60 s in all  # doctest: +SKIP
    ...     mllm.verify_many([(img, text) for img in candidates])

    Args:
        base_url: the server's ``/v1`` URL.
        model: the model name the server serves; ``None`` asks the server (``GET /v1/models``).
        api_key: sent as a bearer token.
        timeout: seconds one call may take in all, retries included (the per-call deadline).
        max_retries: extra attempts the ``openai`` client makes within that deadline.
        connect_timeout: seconds to wait for a connection (at most ``timeout``).
        max_concurrency: requests in flight at once (``verify_many`` and any caller threads).
        protocol: ``ours`` (default), ``icl``, a :class:`~tools.mllm.protocols.Protocol` or a JSON file.
        image_limits: fields of :class:`~tools.mllm.images.ImageLimits` overriding the protocol's.
        breaker_cooldown: seconds before a backend stopped by its circuit breaker tries again
            (None: never, for this object's life).
        temperature, max_tokens, logprobs: override the protocol's.
        cache: cache verify/ask answers by (image id, question).
    """

    name = "openai"

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0, max_retries: int = 2, temperature: float | None = None,
                 max_concurrency: int = 4, max_tokens: int | None = None, cache: bool = True,
                 protocol: Any = None, image_limits: Any = None, breaker_cooldown: float | None = None,
                 logprobs: bool | None = None, connect_timeout: float = 10.0):
        super().__init__(protocol=protocol, image_limits=image_limits, timeout=timeout,
                         breaker_cooldown=breaker_cooldown, temperature=temperature, max_tokens=max_tokens,
                         logprobs=logprobs, cache=cache)
        import openai  # imported here so the other backends work without the package

        self.base_url = base_url or os.environ.get("THI_MLLM_BASE_URL") or DEFAULT_BASE_URL
        self.model = model or os.environ.get("THI_MLLM_MODEL") or None
        key = api_key or os.environ.get("THI_MLLM_API_KEY") or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.max_retries = int(max_retries)
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.max_concurrency = int(max_concurrency)
        # bounds requests from every thread, not only verify_many's pool: servers queue or reject the rest
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._model_lock = threading.Lock()
        self._logprobs_ok = True
        self._openai = openai
        per_read = self.timeout or 600.0  # each read/write; the whole call is bounded by the deadline
        self.client = openai.AsyncOpenAI(
            base_url=self.base_url, api_key=key, max_retries=self.max_retries,
            timeout=openai.Timeout(per_read, connect=min(float(connect_timeout), per_read)))
        self._io = LoopThread(f"openai-{self.base_url}")
        client, io = self.client, self._io
        self._finalizer = weakref.finalize(self, io.close, client.close)

    def __repr__(self) -> str:
        return f"OpenAIMLLM(base_url={self.base_url!r}, model={self.model!r}, protocol={self.protocol.name!r})"

    def close(self) -> None:
        """Close the client's connections and stop the backend's event loop (also done when the
        object is garbage-collected)."""
        self._finalizer()

    def __enter__(self) -> "OpenAIMLLM":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- transport -----------------------------------------------------------------------------

    def _call(self, make: Callable[[], Awaitable[Any]], options: ChatOptions) -> Any:
        """Run one client request within ``options.deadline``, turning every failure into
        :class:`MLLMError`."""
        openai = self._openai
        remaining = options.remaining()
        if remaining <= 0 or not self._slots.acquire(timeout=min(remaining, 1e6)):
            raise MLLMError(f"{self.base_url}: " + str(options.expired_error()), kind=options.deadline_kind)
        try:
            return self._io.run(make, options.remaining())
        except DeadlineExceeded:
            raise MLLMError(f"{self.base_url}: no complete answer within {options.deadline_text}",
                            kind=options.deadline_kind) from None
        except openai.APITimeoutError:  # a subclass of APIConnectionError: test it first
            raise MLLMError(f"{self.base_url}: no answer (connection or read timed out after "
                            f"{self.max_retries} retries)", kind="timeout") from None
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e.__context__
            detail = f" ({type(cause).__name__})" if cause is not None else ""
            raise MLLMError(f"cannot reach {self.base_url}: {_first_line(str(e))}{detail}",
                            kind="unreachable") from None
        except openai.APIStatusError as e:
            message = _first_line(_status_message(e))
            status = e.status_code
            if options.has_image and (status == 413 or (status in (400, 422) and _IMAGE_TROUBLE.search(message))):
                raise MLLMError(f"{self.base_url} rejected the image (HTTP {status}): {message}",
                                kind="rejected-image") from None
            error = MLLMError(f"{self.base_url} answered HTTP {status}: {message}", kind="error")
            error.status_code = status  # type: ignore[attr-defined]
            raise error from None
        except openai.OpenAIError as e:
            raise MLLMError(f"{self.base_url}: {_first_line(str(e))}", kind="bad-reply") from None
        except Exception as e:  # the body is not a chat completion (malformed JSON, empty, wrong types)
            raise MLLMError(f"{self.base_url} sent an unusable reply ({type(e).__name__}: {_first_line(str(e))})",
                            kind="bad-reply") from None
        finally:
            self._slots.release()

    def preflight(self) -> None:
        """One ``GET /v1/models`` within the call timeout: raises :class:`MLLMError` when the server
        cannot be reached (``unreachable``/``timeout``, which also opens the circuit breaker) or does
        not serve the configured model (``error``, naming what it serves). Picks the model when none
        was configured."""
        self.breaker.before_call()
        options = self._options("models")
        try:
            listed = self._call(lambda: self.client.models.list(), options)
        except MLLMError as e:
            self.breaker.record(e, quiet=True)  # the error is the caller's one line
            raise
        self.breaker.record(None)
        names = [m for m in (_get(x, "id") for x in (_get(listed, "data") or [])) if isinstance(m, str)]
        with self._model_lock:
            if self.model is None:
                if not names:
                    raise MLLMError(f"{self.base_url} serves no model; set THI_MLLM_MODEL", kind="error")
                self.model = names[0]
            elif names and self.model not in names:
                shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
                raise MLLMError(f"{self.base_url} does not serve {self.model!r} (it serves {shown})", kind="error")

    def resolve_model(self, options: ChatOptions | None = None) -> str:
        """The model name to request; asks the server once when none was configured."""
        with self._model_lock:
            if self.model is None:
                options = options or self._options("models")
                listed = self._call(lambda: self.client.models.list(), options)
                names = [m for m in (_get(x, "id") for x in (_get(listed, "data") or [])) if isinstance(m, str)]
                if not names:
                    raise MLLMError(f"{self.base_url} serves no model; set THI_MLLM_MODEL", kind="error")
                if len(names) > 1:
                    log.warning("%s serves %d models; using %s (set THI_MLLM_MODEL to choose)",
                                self.base_url, len(names), names[0])
                self.model = names[0]
            return self.model

    def _chat(self, messages: list[dict], options: ChatOptions) -> ChatReply:
        kwargs: dict[str, Any] = {"model": self.resolve_model(options), "messages": messages}
        if options.temperature is not None:
            kwargs["temperature"] = options.temperature
        if options.max_tokens is not None:
            kwargs["max_tokens"] = options.max_tokens
        if options.top_logprobs and self._logprobs_ok:
            kwargs.update(logprobs=True, top_logprobs=options.top_logprobs)
        try:
            response = self._call(lambda: self.client.chat.completions.create(**kwargs), options)
        except MLLMError as e:
            if "logprobs" in kwargs and getattr(e, "status_code", None) in (400, 422) and "logprob" in str(e).lower():
                log.warning("%s does not offer log-probabilities; confidence will be 1.0/0.0", self.base_url)
                self._logprobs_ok = False
                kwargs.pop("logprobs"), kwargs.pop("top_logprobs")
                response = self._call(lambda: self.client.chat.completions.create(**kwargs), options)
            else:
                raise
        return self._read(response)

    def _read(self, response: Any) -> ChatReply:
        """The reply text (and log-probabilities) of a chat completion; :class:`MLLMError` for a
        body that is not one."""
        choices = _get(response, "choices")
        if not isinstance(choices, list) or not choices:
            raise MLLMError(f"{self.base_url} returned no choices", kind="bad-reply")
        choice = choices[0]
        message = _get(choice, "message")
        if message is None:
            raise MLLMError(f'{self.base_url} returned a choice whose "message" is null', kind="bad-reply")
        refusal = _get(message, "refusal")
        if refusal or _get(choice, "finish_reason") == "content_filter":
            raise MLLMError(f"the model refused: {refusal or 'content filter'}", kind="refused")
        content = _get(message, "content")
        if isinstance(content, list):  # content parts
            content = "".join(str(_get(p, "text") or "") for p in content if _get(p, "type") in ("text", None))
        if content is None or (isinstance(content, str) and not content.strip()):
            raise MLLMError(f"{self.base_url} returned an empty answer", kind="unparseable")
        if not isinstance(content, str):
            raise MLLMError(f"{self.base_url} returned content of type {type(content).__name__}", kind="bad-reply")
        return ChatReply(content, logprob_tokens(choice))


def _status_message(e: Any) -> str:
    """The server's own error text: ``{"message": ...}`` (vLLM) or ``{"error": {"message": ...}}``."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        if isinstance(inner.get("message"), str):
            return inner["message"]
    return str(getattr(e, "message", "") or e)


def _first_line(text: str) -> str:
    return (str(text).strip().splitlines() or [""])[0][:300]
