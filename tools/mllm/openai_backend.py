"""MLLM backend for any OpenAI-compatible chat-completions server with image input.

Works with vLLM (``vllm serve Qwen/Qwen2-VL-7B-Instruct``), Ollama (``http://localhost:11434/v1``),
LM Studio and OpenAI itself, through the maintained ``openai`` client (no hand-written HTTP).

Configuration, by argument or environment:

* ``THI_MLLM_BASE_URL``: the server's ``/v1`` URL (default ``http://localhost:8000/v1``, vLLM's);
* ``THI_MLLM_MODEL``: the served model name (default: the first model the server lists);
* ``THI_MLLM_API_KEY``, else ``OPENAI_API_KEY``, else ``"EMPTY"`` (vLLM and Ollama ignore it).

Retries: the ``openai`` client retries connection errors, timeouts, 408/409/429 and 5xx answers
itself, ``max_retries`` times, with exponential backoff (0.5 s doubling up to 8 s, with jitter,
or the server's ``Retry-After``). What is left after the retries becomes an :class:`MLLMError`:
``timeout``, ``unreachable`` (no connection), ``error`` (any other API error), ``unparseable``
(an empty answer) or ``refused`` (the server's content filter or refusal field).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from .base import MLLMError
from .chat import ChatMLLM

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://localhost:8000/v1"


class OpenAIMLLM(ChatMLLM):
    """An OpenAI-compatible server behind the MLLM interface.

    >>> mllm = OpenAIMLLM(base_url="http://localhost:8000/v1", model="Qwen/Qwen2-VL-7B-Instruct")  # doctest: +SKIP
    >>> mllm.verify(ImageRef("0001.jpg", Path("imgs/0001.jpg")), "a woman in a red coat")  # doctest: +SKIP
    Verdict(match=True, confidence=1.0, reason='Yes.', cached=False)
    >>> mllm.verify_many([(img, text) for img in candidates])  # doctest: +SKIP

    Args:
        base_url: the server's ``/v1`` URL.
        model: the model name the server serves; ``None`` asks the server (``GET /v1/models``).
        api_key: sent as a bearer token.
        timeout: seconds per request attempt.
        max_retries: extra attempts the ``openai`` client makes, with exponential backoff.
        temperature: 0 for repeatable answers.
        max_concurrency: requests in flight at once (``verify_many`` and any caller threads).
        max_tokens: cap on the answer length; ``None`` leaves it to the server.
        cache: cache verify/ask answers by (image id, question).
    """

    name = "openai"

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0, max_retries: int = 2, temperature: float = 0.0,
                 max_concurrency: int = 4, max_tokens: int | None = None, cache: bool = True):
        super().__init__(cache=cache)
        import openai  # imported here so the other backends work without the package

        self.base_url = base_url or os.environ.get("THI_MLLM_BASE_URL") or DEFAULT_BASE_URL
        self.model = model or os.environ.get("THI_MLLM_MODEL") or None
        key = api_key or os.environ.get("THI_MLLM_API_KEY") or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.temperature = temperature
        self.max_tokens = max_tokens
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.max_concurrency = int(max_concurrency)
        # bounds requests from every thread, not only verify_many's pool: servers queue or reject the rest
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._model_lock = threading.Lock()
        self._openai = openai
        self.client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=self.timeout,
                                    max_retries=self.max_retries)

    def __repr__(self) -> str:
        return f"OpenAIMLLM(base_url={self.base_url!r}, model={self.model!r})"

    # -- transport -----------------------------------------------------------------------------

    def _call(self, fn, *args: Any, **kwargs: Any) -> Any:
        """Run one client call, turning the client's exceptions into :class:`MLLMError`."""
        openai = self._openai
        try:
            with self._slots:
                return fn(*args, **kwargs)
        except openai.APITimeoutError:  # a subclass of APIConnectionError: test it first
            raise MLLMError(f"{self.base_url}: no answer within {self.timeout:g} s "
                            f"({self.max_retries} retries)", kind="timeout") from None
        except openai.APIConnectionError as e:
            raise MLLMError(f"cannot reach {self.base_url}: {e}", kind="unreachable") from None
        except openai.APIStatusError as e:
            raise MLLMError(f"{self.base_url} answered HTTP {e.status_code}: {_first_line(e.message)}",
                            kind="error") from None
        except openai.OpenAIError as e:
            raise MLLMError(f"{self.base_url}: {_first_line(str(e))}", kind="error") from None

    def resolve_model(self) -> str:
        """The model name to request; asks the server once when none was configured."""
        with self._model_lock:
            if self.model is None:
                listed = self._call(self.client.models.list)
                names = [m.id for m in getattr(listed, "data", [])]
                if not names:
                    raise MLLMError(f"{self.base_url} serves no model; set THI_MLLM_MODEL", kind="error")
                if len(names) > 1:
                    log.warning("%s serves %d models; using %s (set THI_MLLM_MODEL to choose)",
                                self.base_url, len(names), names[0])
                self.model = names[0]
            return self.model

    def _chat(self, messages: list[dict]) -> str:
        kwargs: dict[str, Any] = {"model": self.resolve_model(), "messages": messages,
                                  "temperature": self.temperature}
        if self.max_tokens is not None:
            kwargs["max_tokens"] = self.max_tokens
        response = self._call(self.client.chat.completions.create, **kwargs)
        choices = getattr(response, "choices", None) or []
        if not choices:
            raise MLLMError(f"{self.base_url} returned no choices", kind="unparseable")
        choice = choices[0]
        message = choice.message
        if getattr(message, "refusal", None) or choice.finish_reason == "content_filter":
            raise MLLMError(f"the model refused: {getattr(message, 'refusal', None) or 'content filter'}",
                            kind="refused")
        content = message.content
        if not content or not content.strip():
            raise MLLMError(f"{self.base_url} returned an empty answer", kind="unparseable")
        return content


def _first_line(text: str) -> str:
    return (str(text).strip().splitlines() or [""])[0][:300]
