"""MLLM backend for any LangChain chat model that accepts images.

Wraps a langchain-core ``BaseChatModel`` (``ChatOpenAI``, ``ChatOllama``, ``ChatAnthropic``, a
``ChatHuggingFace``, ...). The OpenAI-format messages built by :class:`tools.mllm.chat.ChatMLLM`
become ``SystemMessage``/``HumanMessage`` objects whose content blocks are ``{"type": "text"}`` and
``{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}}``, the block format
LangChain's chat integrations accept for images.

Retries and rate limits are the wrapped model's business (configure them on it, e.g.
``ChatOpenAI(max_retries=...)`` or ``model.with_retry()``); whatever it raises becomes an
:class:`MLLMError` here. Deadlines are this backend's: the model is called through its async
``ainvoke`` on a private event loop and cancelled when the call's ``timeout`` or the dialogue's
deadline passes (an integration without native async runs in a worker thread that LangChain
starts; the call still returns at the deadline, the thread finishes on its own). The circuit
breaker, image sizing and reply sanitising of :class:`tools.mllm.chat.ChatMLLM` apply.

Sampling (temperature) and log-probabilities are set on the model itself, not here: e.g.
``ChatOpenAI(temperature=0, logprobs=True, top_logprobs=5)``; when the reply carries
``response_metadata["logprobs"]`` (as ChatOpenAI's does), p(yes) is read from it.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from .base import MLLMError
from .chat import ChatMLLM, ChatOptions, ChatReply, logprob_tokens
from .transport import DeadlineExceeded, LoopThread

log = logging.getLogger(__name__)


class LangChainMLLM(ChatMLLM):
    """A LangChain chat model behind the MLLM interface.

    >>> from langchain_openai import ChatOpenAI  # doctest: +SKIP
    >>> mllm = LangChainMLLM(ChatOpenAI(model="gpt-4o-mini", temperature=0))  # doctest: +SKIP
    >>> mllm.ask(ImageRef("0001.jpg", Path("imgs/0001.jpg")), ["upper_color", "hat"])  # doctest: +SKIP
    [Answer(slot='upper_color', value='red', ...), Answer(slot='hat', value='none', ...)]

    Args:
        model: any ``BaseChatModel`` (or runnable taking a message list) that accepts image blocks.
        max_concurrency: parallel requests in ``verify_many``.
        timeout: seconds one call may take in all (None: no limit of its own).
        protocol: ``ours`` (default), ``icl``, a :class:`~tools.mllm.protocols.Protocol` or a JSON
            file (its temperature and log-probability settings are the model's business).
        image_limits: fields of :class:`~tools.mllm.images.ImageLimits` overriding the protocol's.
        breaker_cooldown: seconds before a backend stopped by its circuit breaker tries again.
        cache: cache verify/ask answers by (image id, question).
    """

    name = "langchain"

    def __init__(self, model: Any, max_concurrency: int = 1, cache: bool = True, timeout: float | None = 120.0,
                 protocol: Any = None, image_limits: Any = None, breaker_cooldown: float | None = None):
        super().__init__(protocol=protocol, image_limits=image_limits, timeout=timeout,
                         breaker_cooldown=breaker_cooldown, cache=cache)
        if not hasattr(model, "invoke"):
            raise TypeError(f"expected a LangChain chat model with .invoke, got {type(model).__name__}")
        self.model = model
        self.max_concurrency = max(1, int(max_concurrency))
        self._io = LoopThread(f"langchain-{type(model).__name__}")
        self._finalizer = weakref.finalize(self, self._io.close)

    def __repr__(self) -> str:
        return f"LangChainMLLM({type(self.model).__name__}, protocol={self.protocol.name!r})"

    def close(self) -> None:
        """Stop the backend's event loop (also done when the object is garbage-collected)."""
        self._finalizer()

    @staticmethod
    def to_langchain(messages: list[dict]) -> list:
        """OpenAI-format message dicts -> ``SystemMessage``/``HumanMessage``/``AIMessage``."""
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

        kinds = {"system": SystemMessage, "user": HumanMessage, "human": HumanMessage, "assistant": AIMessage}
        out = []
        for m in messages:
            cls = kinds.get(m.get("role", ""))
            if cls is None:
                raise ValueError(f"unsupported message role {m.get('role')!r}")
            content = m["content"]
            if isinstance(content, list):  # copy the blocks: the model must not alter our messages
                content = [dict(block) for block in content]
            out.append(cls(content=content))
        return out

    def _chat(self, messages: list[dict], options: ChatOptions) -> ChatReply:
        log.debug("invoking %s with %d messages", type(self.model).__name__, len(messages))
        lc_messages = self.to_langchain(messages)
        model = self.model
        if hasattr(model, "ainvoke"):
            def make():
                return model.ainvoke(lc_messages)
        else:  # a plain object with .invoke: run it in a worker thread
            def make():
                return asyncio.to_thread(model.invoke, lc_messages)
        try:
            reply = self._io.run(make, options.remaining())
        except DeadlineExceeded:
            raise MLLMError(f"{type(model).__name__}: no complete answer within {options.deadline_text}",
                            kind=options.deadline_kind) from None
        except MLLMError:
            raise
        except Exception as e:  # integrations raise their own types; sort them by what they mean
            raise MLLMError(f"{type(model).__name__} failed: {type(e).__name__}: "
                            f"{(str(e).strip().splitlines() or [''])[0][:300]}", kind=_kind_of(e)) from e
        return ChatReply(_text_of(reply), _logprobs_of(reply))


def _text_of(reply: Any) -> str:
    """The reply's text: a string content as is, a list of blocks joined (text blocks only)."""
    content = getattr(reply, "content", reply)
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
        return "".join(parts)
    raise MLLMError(f"unexpected reply content of type {type(content).__name__}", kind="unparseable")


def _logprobs_of(reply: Any) -> list[tuple[str, list[tuple[str, float]]]] | None:
    """Token log-probabilities from ``response_metadata["logprobs"]["content"]`` (the OpenAI shape
    ChatOpenAI passes through), or None."""
    meta = getattr(reply, "response_metadata", None)
    if not isinstance(meta, dict) or not isinstance(meta.get("logprobs"), dict):
        return None
    return logprob_tokens({"logprobs": meta["logprobs"]})


def _kind_of(e: BaseException) -> str:
    """``timeout`` / ``unreachable`` / ``error`` for an exception from any integration.

    Each integration has its own exception classes (openai, httpx, requests, anthropic, ...), so
    the builtin bases are checked first and the class names after.
    """
    names = " ".join(c.__name__.lower() for c in type(e).__mro__)
    if isinstance(e, TimeoutError) or "timeout" in names:
        return "timeout"
    if isinstance(e, ConnectionError) or "connecterror" in names or "connectionerror" in names:
        return "unreachable"
    return "error"
